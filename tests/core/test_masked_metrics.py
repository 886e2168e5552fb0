"""Checks that fit NLP models: padding positions left out (attention mask), outputs chosen, a hint on failure."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest

import graphopt
from graphopt import cli, registry
from graphopt.metrics import apply_mask, detect_mask_input
from graphopt.pass_base import GraphoptPass


def _encoder() -> onnx.ModelProto:
    """hidden = Relu(x) [1, 6, 4] and pooled = ReduceMean(hidden) [1, 4]; attention_mask is an input like BERT's."""
    graph = oh.make_graph(
        [oh.make_node("Relu", ["x"], ["hidden"]), oh.make_node("ReduceMean", ["hidden"], ["pooled"], axes=[1], keepdims=0),
         oh.make_node("Cast", ["attention_mask"], ["m"], to=onnx.TensorProto.FLOAT), oh.make_node("Identity", ["m"], ["unused"])],
        "enc",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 6, 4]),
         oh.make_tensor_value_info("attention_mask", onnx.TensorProto.INT64, [1, 6])],
        [oh.make_tensor_value_info("hidden", onnx.TensorProto.FLOAT, [1, 6, 4]),
         oh.make_tensor_value_info("pooled", onnx.TensorProto.FLOAT, [1, 4])],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.graph.node.pop()  # the Identity only made Cast legal to write; drop both helpers
    model.graph.node.pop()
    return model


class _TestDisturbPaddingPass(GraphoptPass):
    """Test only: adds 100 to hidden rows 4 and 5 (padding in the test data) or, with rows=0, to row 0."""

    rows = (4, 5)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        relu = next(n for n in model.graph if n.op_type == "Relu")
        bump = np.zeros((1, 6, 4), np.float32)
        bump[:, list(self.rows)] = 100.0
        add = ir.node("Add", [relu.outputs[0], ir.Value(name="bump", const_value=ir.tensor(bump))])
        model.graph.register_initializer(add.inputs[1])
        model.graph.insert_after(relu, add)
        for use in list(relu.outputs[0].uses()):
            if use.node is not add:
                use.node.replace_input_with(use.idx, add.outputs[0])
        old = relu.outputs[0]
        graph_out = model.graph.outputs.index(old)
        model.graph.outputs[graph_out] = add.outputs[0]
        add.outputs[0].name, old.name = "hidden", "hidden_relu"
        return ir.passes.PassResult(model, True)


class _TestDisturbRealPass(_TestDisturbPaddingPass):
    """Test only: adds 100 to hidden row 0, a real token."""

    rows = (0,)


@pytest.fixture
def disturbing_passes():
    registry.register_pass("test-disturb-padding")(_TestDisturbPaddingPass)
    registry.register_pass("test-disturb-real")(_TestDisturbRealPass)
    yield
    registry._PASSES.pop("test-disturb-padding")
    registry._PASSES.pop("test-disturb-real")


def _data(tmp_path) -> str:
    rng = np.random.default_rng(0)
    mask = np.array([[1, 1, 1, 1, 0, 0]], np.int64)
    np.savez(tmp_path / "data.npz", x=rng.standard_normal((1, 6, 4)).astype(np.float32), attention_mask=mask)
    return str(tmp_path / "data.npz")


def test_mask_input_is_detected_and_applied():
    assert detect_mask_input({"input_ids": (np.int64, 2), "attention_mask": (np.int64, 2)}) == "attention_mask"
    assert detect_mask_input({"pixels": (np.float32, 4)}) is None
    out = apply_mask([{"h": np.arange(12.0).reshape(1, 3, 4), "p": np.ones((1, 4))}], [{"attention_mask": np.array([[1, 0, 1]])}], "attention_mask")
    assert out[0]["h"].shape == (2, 4) and out[0]["p"].shape == (1, 4)


def test_padding_differences_pass_with_the_mask_and_fail_without(tmp_path, capsys, disturbing_passes):
    onnx.save(_encoder(), tmp_path / "enc.onnx")
    args = ["compile", str(tmp_path / "enc.onnx"), "--calib", _data(tmp_path), "--passes", "test-disturb-padding",
            "--bench-runs", "0", "--ignore-output", "pooled"]
    assert cli.main([*args, "-o", str(tmp_path / "a")]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "a" / "report.json").read_text())["data"]["mask"] == "attention_mask"
    capsys.readouterr()
    assert cli.main([*args, "-o", str(tmp_path / "b"), "--mask", "none"]) == 1
    err = capsys.readouterr().err
    assert "hidden: cosine" in err and "--mask" in err  # the hint names the likely cause


def test_a_real_error_still_fails_with_the_mask(tmp_path, capsys, disturbing_passes):
    onnx.save(_encoder(), tmp_path / "enc.onnx")
    code = cli.main(["compile", str(tmp_path / "enc.onnx"), "--calib", _data(tmp_path), "--passes", "test-disturb-real",
                     "--bench-runs", "0", "-o", str(tmp_path / "c")])
    assert code == 1 and "hidden: cosine" in capsys.readouterr().err


def test_ignored_outputs_are_reported_but_not_checked(tmp_path, disturbing_passes):
    result = graphopt.compile(_encoder(), passes="test-disturb-padding", calib=_data(tmp_path), ignore_outputs=["pooled"])
    assert result.ok  # pooled averages the padding rows too, so it moved: measured, reported, not checked
    pooled = result.report.accuracy["pooled"]
    assert pooled["checked"] is False and pooled["cosine"] < 0.999
    assert result.report.accuracy["hidden"]["checked"] is True


def test_unknown_output_or_mask_names_are_usage_errors(tmp_path, capsys):
    onnx.save(_encoder(), tmp_path / "enc.onnx")
    base = ["compile", str(tmp_path / "enc.onnx"), "-o", str(tmp_path / "o"), "--bench-runs", "0"]
    assert cli.main([*base, "--outputs", "nope"]) == 2
    assert cli.main([*base, "--mask", "nope"]) == 2
    assert "model's inputs" in capsys.readouterr().err


def test_layer_error_leaves_padding_positions_out():
    from graphopt.layer_error import _real_positions  # noqa: PLC0415

    keep = np.array([[True, True, False]])
    rows = np.arange(3 * 4.0).reshape(1, 3, 4)  # [batch, seq, hidden]
    assert _real_positions(rows, keep).tolist() == list(range(8))
    scores = np.arange(2 * 3 * 3.0).reshape(1, 2, 3, 3)  # [batch, heads, query, key]: query rows
    assert _real_positions(scores, keep).size == 2 * 2 * 3
    keys = np.arange(2 * 5 * 3.0).reshape(1, 2, 5, 3)  # [batch, heads, dim, key]: a transposed K
    assert _real_positions(keys, keep).size == 2 * 5 * 2
    pooled = np.ones((1, 4))
    assert _real_positions(pooled, keep).size == 4 and _real_positions(rows, None).size == 12


@pytest.mark.slow
def test_parity_with_the_original_leaves_padding_out_too(tmp_path, disturbing_passes):
    result = graphopt.compile(_encoder(), passes="test-disturb-padding", calib=_data(tmp_path), ignore_outputs=["pooled"],
                              targets=["onnx", "tvm-llvm"])
    assert result.ok
    vs_original = result.report.parity["tvm-llvm"]["vs_original"]["hidden"]
    assert vs_original["cosine"] == pytest.approx(result.report.accuracy["hidden"]["cosine"])


def test_approximating_pipelines_get_the_looser_default_cosine_floor():
    from graphopt.api import checked_settings  # noqa: PLC0415
    from graphopt.metrics import MIN_COSINE_APPROXIMATE, MIN_COSINE_EXACT, Tolerances  # noqa: PLC0415

    def floor(passes, tolerances=None):
        return checked_settings(passes, targets=["onnx"], input_shapes={}, integer_only=None, tolerances=tolerances,
                         ort_optimization="all", tune_budget=0, tune_database=None).tolerances.min_cosine

    assert floor("canonicalize") == MIN_COSINE_EXACT == 0.999
    assert floor("ivit") == floor("cleanup,int8-linear") == MIN_COSINE_APPROXIMATE == 0.99
    assert floor("ivit", Tolerances(min_cosine=0.9999)) == 0.9999  # a floor the user gave is kept
    assert floor("ivit", Tolerances(min_cosine=None)) is None
