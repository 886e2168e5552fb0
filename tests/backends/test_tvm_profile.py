"""``--profile``: per-kernel times of TVM code, with the schedule rule each kernel got."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnx.helper as oh
import pytest

import graphopt
from graphopt.backends import tvm as tvm_backend
from graphopt.backends.tvm.profile import FALLBACK_RULES, kernel_profile


def _conv_and_scan() -> onnx.ModelProto:
    """A conv (WindowReduction), a ReLU, and a CumSum (a scan: no fast rule takes it)."""
    w = onnx.numpy_helper.from_array(np.random.default_rng(7).standard_normal((8, 4, 3, 3)).astype(np.float32), "w")
    axis = onnx.numpy_helper.from_array(np.array(3, np.int64), "axis")
    nodes = [oh.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), oh.make_node("Relu", ["c"], ["r"]),
             oh.make_node("CumSum", ["r", "axis"], ["y"])]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 12, 12])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 12, 12])], [w, axis])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


def _feeds():
    return {"x": np.random.default_rng(8).standard_normal((1, 4, 12, 12)).astype(np.float32)}


def test_profile_names_every_kernel_with_its_rule_and_the_fallback_share():
    import onnx_ir as ir

    import onnxruntime as ort

    feeds = _feeds()
    artifact = tvm_backend.compile(ir.serde.deserialize_model(_conv_and_scan()), target="tvm-llvm", example_inputs=feeds)
    profile = kernel_profile(artifact, feeds, runs=3)
    rules = {row.kernel: row.rule for row in profile.rows}
    assert any("conv2d" in k and r == "WindowReduction" for k, r in rules.items()), rules
    assert any("cumsum" in k and r in FALLBACK_RULES for k, r in rules.items()), rules
    assert all(row.calls >= 1 and row.ms >= 0 for row in profile.rows)
    assert sum(row.share for row in profile.rows) == pytest.approx(1.0, abs=1e-6)
    cumsum = sum(row.share for row in profile.rows if "cumsum" in row.kernel)
    assert profile.fallback_share == pytest.approx(cumsum, abs=1e-9)
    data = profile.as_dict()
    assert [k["kernel"] for k in data["fallback_kernels"]] == [r.kernel for r in profile.rows if r.rule in FALLBACK_RULES]
    # profiling does not disturb the artifact's own VM
    expected = ort.InferenceSession(_conv_and_scan().SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(artifact.run(feeds)["y"], expected, rtol=1e-4, atol=1e-4)


def test_compile_with_profile_puts_it_in_the_report():
    result = graphopt.compile(_conv_and_scan(), "canonicalize", targets=["onnx", "tvm-llvm"], profile=True, bench_runs=4)
    profile = result.report.data["profile"]["tvm-llvm"]
    assert profile["kernels"] and 0 < profile["fallback_share"] < 1
    assert "kernel profile of tvm-llvm" in _rendered(result.report)


def _rendered(report) -> str:
    import io

    from rich.console import Console

    from graphopt.report import render

    buffer = io.StringIO()
    render(report, Console(file=buffer, width=200))
    return buffer.getvalue()


def test_profile_without_a_tvm_target_is_a_usage_error(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_conv_and_scan(), path)
    done = subprocess.run([sys.executable, "-m", "graphopt", "compile", str(path), "--passes", "canonicalize", "--profile",
                           "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 2
    assert "--profile" in done.stderr and "tvm-llvm" in done.stderr
    assert not (tmp_path / "out").exists()


def test_report_with_a_profile_matches_the_schema():
    jsonschema = pytest.importorskip("jsonschema")
    result = graphopt.compile(_conv_and_scan(), "canonicalize", targets=["tvm-llvm"], profile=True)
    schema = json.load(open("docs/report.schema.json", encoding="utf-8"))
    jsonschema.validate(json.loads(result.report.to_json()), schema)
