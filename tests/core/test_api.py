"""The Python API: compile, the result object, save/load, determinism, calibration data forms."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest

import graphopt
from graphopt import data
from graphopt.backends import ort
from graphopt.errors import DataError, UsageError


def test_compile_returns_model_artifacts_and_report(mlp_proto, tmp_path):
    result = graphopt.compile(mlp_proto, passes="cleanup", bench_runs=3)
    assert [n.op_type for n in result.model.graph] == ["MatMul", "Add"]
    assert list(result.artifacts) == ["onnx"]
    feeds = {"x": np.ones((2, 4), np.float32)}
    expected = np.ones((2, 4), np.float32) @ np.array([[0.1, -0.2, 0.3], [0.4, 0.5, -0.6], [0.7, 0.8, -0.9], [1.0, 1.1, 1.2]], np.float32) + np.array([0.5, -0.5, 0.25], np.float32)
    np.testing.assert_allclose(result.artifacts["onnx"].run(feeds)["y"], expected, rtol=1e-6)
    report = result.report
    assert report.pipeline == "cleanup"
    assert report.ops_before == {"Add": 1, "Constant": 1, "Identity": 1, "MatMul": 1, "Mul": 1}
    assert report.ops_after == {"Add": 1, "MatMul": 1}
    assert report.accuracy["y"]["cosine"] == pytest.approx(1.0)
    assert report.data["kind"] == "synthetic" and report.warnings  # says loudly that data is synthetic
    assert set(report.latency) == {"original", "onnx"} and report.latency["onnx"]["threads"] == 2
    written = result.save(tmp_path / "out")
    assert sorted(os.path.basename(p) for p in written) == ["model.onnx", "report.html", "report.json"]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["pipeline"] == "cleanup" and saved["ok"] is True
    loaded = ort.OnnxArtifact.load(str(tmp_path / "out"))
    np.testing.assert_allclose(loaded.run(feeds)["y"], expected, rtol=1e-6)


def test_same_input_and_pipeline_give_identical_files(mlp_proto, tmp_path):
    for name in ("a", "b"):
        graphopt.compile(mlp_proto, passes="cleanup,opset-upgrade", validate=False).save(tmp_path / name)
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()


def test_accepts_ir_model_and_does_not_modify_it(mlp_proto):
    model = graphopt.load(mlp_proto)
    before = [n.op_type for n in model.graph]
    graphopt.compile(model, passes="cleanup", validate=False)
    assert [n.op_type for n in model.graph] == before


def test_a_model_proto_is_not_modified():
    """onnx_ir wraps a proto's tensors without copying: folding that names a Constant's tensor must not reach the caller."""
    helper = onnx.helper
    scale = helper.make_node("Constant", [], ["c"], value=helper.make_tensor("", onnx.TensorProto.FLOAT, [], [2.0]))
    graph = helper.make_graph([scale, helper.make_node("Mul", ["x", "c"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before = proto.SerializeToString()
    graphopt.compile(proto, "canonicalize")
    assert proto.SerializeToString() == before


def test_accepts_torch_module():
    torch = pytest.importorskip("torch")
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    result = graphopt.compile(module, passes="cleanup", example_inputs=(torch.randn(2, 4),))
    assert result.ok and ({"Gemm", "MatMul"} & set(result.report.ops_after))


def test_unknown_target_is_a_usage_error(mlp_proto):
    with pytest.raises(UsageError, match="unknown target 'gpu9'"):
        graphopt.compile(mlp_proto, passes="cleanup", targets=["gpu9"])


def test_calibration_forms(mlp_proto, tmp_path):
    model = graphopt.load(mlp_proto)
    stack = np.random.default_rng(0).standard_normal((5, 2, 4)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=stack)
    assert len(data.load_samples(str(tmp_path / "c.npz"), model)) == 5
    np.save(tmp_path / "x.npy", stack[0])
    assert len(data.load_samples(str(tmp_path / "x.npy"), model)) == 1
    assert len(data.load_samples([f"x:{tmp_path / 'x.npy'}"], model)) == 1
    folder = tmp_path / "test_data_set_0"
    folder.mkdir()
    (folder / "input_0.pb").write_bytes(onnx.numpy_helper.from_array(stack[0], "x").SerializeToString())
    assert data.load_samples(str(tmp_path), model)[0]["x"].shape == (2, 4)
    assert len(data.load_samples(({"x": s} for s in stack), model)) == 5
    with pytest.raises(DataError, match="input 'x' is int64"):
        data.load_samples([{"x": np.zeros((2, 4), np.int64)}], model)


def test_input_shape_override_fixes_dynamic_dims(mlp_proto):
    result = graphopt.compile(mlp_proto, passes="cleanup", input_shapes=["x:3,4"], validate=True)
    assert result.samples[0]["x"].shape == (3, 4)
    with pytest.raises(UsageError, match="the model's inputs are"):
        graphopt.compile(mlp_proto, passes="cleanup", input_shapes=["pixels:3,4"])


def test_accepts_onnx_program():
    torch = pytest.importorskip("torch")
    program = torch.onnx.export(torch.nn.Linear(4, 3), (torch.randn(2, 4),), dynamo=True)
    result = graphopt.compile(program, passes="cleanup")
    assert result.ok and result.report.model == "ONNXProgram"


def test_ort_optimization_level_is_an_option(mlp_proto):
    result = graphopt.compile(mlp_proto, passes="cleanup", ort_optimization="disable", bench_runs=2)
    assert result.artifacts["onnx"].optimization == "disable"
    with pytest.raises(UsageError, match="unknown ORT optimization level 'max'"):
        graphopt.compile(mlp_proto, passes="cleanup", ort_optimization="max")
