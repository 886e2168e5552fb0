"""graphopt.finetune / `graphopt finetune`: distillation, determinism, write-back, frozen parameters, CLI errors.

The teacher is the hand-written MLP (tests/core/conftest.py); the student is the same graph with
disturbed weights, so distillation has something to recover and real ORT sessions and a real
to_torch module do the work.
"""

from __future__ import annotations

import json
import os
import pathlib

import jsonschema
import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest

import graphopt
from graphopt import cli
from graphopt.errors import UsageError
from graphopt.finetuning.write_back import write_back
from graphopt.pipeline import run_pipeline

SCHEMA = json.loads((pathlib.Path(__file__).parents[2] / "docs" / "report.schema.json").read_text())


@pytest.fixture
def student_proto(mlp_proto) -> onnx.ModelProto:
    student = onnx.ModelProto()
    student.CopyFrom(mlp_proto)
    for tensor in student.graph.initializer:
        array = onnx.numpy_helper.to_array(tensor)
        noise = np.random.default_rng(1).standard_normal(array.shape).astype(np.float32)
        tensor.CopyFrom(onnx.numpy_helper.from_array(array + 0.3 * noise, tensor.name))
    return student


@pytest.fixture
def train_data() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)}


def _weights(model: ir.Model) -> dict[str, np.ndarray]:
    return {name: v.const_value.numpy().copy() for name, v in model.graph.initializers.items()}


def test_loss_decreases_and_the_held_out_error_falls(student_proto, mlp_proto, train_data):
    result = graphopt.finetune(student_proto, mlp_proto, train_data, steps=60, lr=3e-2, batch_size=8)
    losses = result.losses
    assert len(losses) == 60 and np.mean(losses[-5:]) < 0.1 * np.mean(losses[:5])
    section = result.report.data["finetune"]
    assert section["examples"] == {"train": 52, "held_out": 12}  # 64 rows cut from one stacked sample, 20% held out
    before, after = section["metrics_before"]["y"], section["metrics_after"]["y"]
    assert after["mean_abs"] < 0.2 * before["mean_abs"]
    assert result.report.accuracy["y"]["mean_abs"] == after["mean_abs"]  # the report's accuracy is the tuned model's
    jsonschema.validate(json.loads(result.report.to_json()), SCHEMA)


def test_kl_loss_trains_logits(student_proto, mlp_proto, train_data):
    result = graphopt.finetune(student_proto, mlp_proto, train_data, steps=40, lr=3e-2, loss="kl", temperature=2.0)
    assert np.mean(result.losses[-5:]) < 0.5 * np.mean(result.losses[:5])


def test_same_seed_gives_identical_weights(student_proto, mlp_proto, train_data):
    runs = [graphopt.finetune(student_proto, mlp_proto, train_data, steps=15, lr=1e-2, seed=3) for _ in range(2)]
    assert runs[0].losses == runs[1].losses
    for name, array in _weights(runs[0].model).items():
        assert array.tobytes() == _weights(runs[1].model)[name].tobytes()
    other = graphopt.finetune(student_proto, mlp_proto, train_data, steps=15, lr=1e-2, seed=4)
    assert other.losses != runs[0].losses  # the seed drives the split and the batch order


def test_trainable_patterns_freeze_the_rest(student_proto, mlp_proto, train_data):
    result = graphopt.finetune(student_proto, mlp_proto, train_data, steps=10, lr=1e-2, trainable=["b"])
    given, tuned = _weights(result.student), _weights(result.model)
    assert tuned["w"].tobytes() == given["w"].tobytes()
    assert not np.array_equal(tuned["b"], given["b"])
    assert result.report.data["finetune"]["trainable"] == ["b"]
    with pytest.raises(graphopt.errors.UsageError, match="matches no parameter"):
        graphopt.finetune(student_proto, mlp_proto, train_data, steps=1, trainable=["nothing*"])


def test_write_back_rounds_and_clips_integers_and_casts_floats():
    model = ir.serde.deserialize_model(onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[4] x) => (float[4] y) <int8[4] q = {1, 2, 3, 4}, float16[4] h = {0, 0, 0, 0}, float[1] s = {0.5}> {
            d = DequantizeLinear(q, s)
            hf = Cast <to = 1> (h)
            a = Add(d, hf)
            y = Add(a, x)
        }"""))
    out = write_back(model, {"q": np.array([1.5, 2.5, -200.7, 300.2]), "h": np.array([0.1, 1.0, -2.5, 7.0]),
                             "s": np.array([0.25], np.float64)})
    weights = _weights(out)
    assert weights["q"].dtype == np.int8 and weights["q"].tolist() == [2, 2, -128, 127]  # half to even, clipped
    assert weights["h"].dtype == np.float16 and weights["h"].tolist()[:3] == [np.float16(0.1), 1.0, -2.5]
    assert weights["s"].dtype == np.float32 and weights["s"].tolist() == [0.25]
    assert _weights(model)["q"].tolist() == [1, 2, 3, 4]  # the input model is not modified
    assert [n.op_type for n in out.graph] == [n.op_type for n in model.graph]


def _save(proto, path) -> str:
    onnx.save(proto, path)
    return str(path)


def test_cli_writes_model_report_and_loss_curve(tmp_path, student_proto, mlp_proto, train_data, capsys):
    np.savez(tmp_path / "train.npz", **train_data)
    out = tmp_path / "out"
    code = cli.main(["finetune", _save(student_proto, tmp_path / "student.onnx"), "--teacher", _save(mlp_proto, tmp_path / "teacher.onnx"),
                     "--data", str(tmp_path / "train.npz"), "-o", str(out), "--steps", "20", "--lr", "3e-2"])
    assert code == 0, capsys.readouterr().err
    assert sorted(os.listdir(out)) == [".graphopt-manifest.json", "loss.png", "model.onnx", "report.html", "report.json"]
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, SCHEMA)
    assert len(report["data"]["finetune"]["loss_curve"]) == 20
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "report.html").read_text()
    assert "fine-tuning (distillation from the original)" in html and html.count("<svg") == 1  # the loss curve, inline
    tuned = graphopt.load(str(out / "model.onnx"))
    assert _weights(tuned)["w"].dtype == np.float32


@pytest.mark.parametrize(("case", "code", "message"), [
    ("missing teacher", 3, "no such model file"),
    ("data of another input", 2, "missing input"),
    ("teacher of another model", 2, "not the teacher's"),
    ("op to_torch cannot convert", 4, "Hardmax"),
    ("output is a file", 2, "not a folder"),
])
def test_cli_errors_are_one_line_with_their_exit_code_and_write_nothing(tmp_path, student_proto, mlp_proto, train_data, capsys,
                                                                         case, code, message):
    student, teacher = _save(student_proto, tmp_path / "student.onnx"), _save(mlp_proto, tmp_path / "teacher.onnx")
    np.savez(tmp_path / "train.npz", **train_data)
    data, out = str(tmp_path / "train.npz"), tmp_path / "out"
    if case == "missing teacher":
        teacher = str(tmp_path / "absent.onnx")
    elif case == "data of another input":
        np.savez(tmp_path / "other.npz", pixels=train_data["x"])
        data = str(tmp_path / "other.npz")
    elif case == "teacher of another model":
        other = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]> g (float[N, 4] x) => (float[N, 4] z) { z = Relu(x) }""")
        teacher = _save(other, tmp_path / "other.onnx")
    elif case == "op to_torch cannot convert":
        text = onnx.printer.to_text(student_proto).replace("y = Mul (y0, one)", "y1 = Mul (y0, one)\n   y = Hardmax (y1)")
        assert "Hardmax" in text
        student = _save(onnx.parser.parse_model(text), tmp_path / "student.onnx")
    elif case == "output is a file":
        out.write_text("not a folder")
    got = cli.main(["finetune", student, "--teacher", teacher, "--data", data, "-o", str(out), "--steps", "2"])
    err = capsys.readouterr().err
    assert got == code, err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert out.is_file() if case == "output is a file" else not out.exists()


def test_padding_positions_are_out_of_the_loss():
    import torch  # noqa: PLC0415

    from graphopt.finetuning.loss import Distillation  # noqa: PLC0415

    targets = [{"h": np.zeros((1, 3, 2), np.float32) + np.arange(3, dtype=np.float32)[None, :, None]}]
    loss = Distillation("distill", ["h"], targets, mask_input="attention_mask")
    student = torch.tensor(targets[0]["h"])
    student[0, 2] += 100.0  # wrong only where the mask says padding
    feeds = {"attention_mask": torch.tensor([[1, 1, 0]])}
    assert float(loss([student], {"h": torch.tensor(targets[0]["h"])}, feeds)) == 0.0
    assert float(loss([student], {"h": torch.tensor(targets[0]["h"])}, {"attention_mask": torch.tensor([[1, 1, 1]])})) > 0


def test_lora_trains_adapters_and_writes_the_merged_weight_back(student_proto, mlp_proto, train_data):
    result = graphopt.finetune(student_proto, mlp_proto, train_data, steps=30, lr=3e-2, lora={"rank": 1, "layers": ["w"]})
    given, tuned = _weights(result.student), _weights(result.model)
    assert not np.array_equal(tuned["w"], given["w"]) and tuned["b"].tobytes() == given["b"].tobytes()  # only the adapter trained
    assert np.linalg.matrix_rank(tuned["w"] - given["w"], tol=1e-6) == 1  # W + A·B: a rank-1 change
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5])
    assert result.report.data["finetune"]["lora"]["adapted"] == ["w"]


def test_the_callers_torch_generator_is_left_as_it_was(student_proto, mlp_proto, train_data):
    """finetune seeds its own run; the global generator a user's pipeline draws from is restored."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    graphopt.finetune(student_proto, mlp_proto, train_data, steps=2, batch_size=8)
    assert torch.equal(torch.rand(3), expected)


def test_a_replaced_attention_is_distilled_from_the_softmax_it_replaced():
    """linear-attention stamps each block with the value it replaced: finetune adds that pair as a
    per-layer target (layer_loss), reports it, and writes back the student's own interface."""
    from graphopt.models import digits_vit  # noqa: PLC0415

    teacher = graphopt.load(digits_vit.build())
    student = teacher.clone()
    run_pipeline(student, "canonicalize,linear-attention(feature_map=relu)")
    data = {k: np.concatenate([digits_vit.example_inputs(seed=s)[k] for s in range(6)]) for k in digits_vit.example_inputs(seed=0)}
    result = graphopt.finetune(student, teacher, data, steps=3, batch_size=8)
    section = result.report.data["finetune"]
    blocks = sum(n.op_type == "LinearizedAttention" for n in student.graph)
    assert blocks and len(section["layer_targets"]["sites"]) == blocks
    assert section["distilled_outputs"] == ["logits"]
    assert [v.name for v in result.model.graph.outputs] == [v.name for v in student.graph.outputs]
    plain = graphopt.finetune(student, teacher, data, steps=3, batch_size=8, layer_loss=0)
    assert "layer_targets" not in plain.report.data["finetune"] and plain.losses != result.losses
    with pytest.raises(UsageError, match="per-layer loss weight"):
        graphopt.finetune(student, teacher, data, steps=3, layer_loss=-1)
    jsonschema.validate(json.loads(result.report.to_json()), SCHEMA)
