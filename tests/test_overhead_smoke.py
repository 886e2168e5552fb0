"""The tool-overhead benchmark end to end on a tiny BERT (2 layers, hidden 64).

Timings are printed by the benchmark, never asserted here. What is checked: the benchmark runs
in its fresh process, its JSON is complete, and the model it saved after the pipeline loads
again, passes onnx.checker and computes what the input model computes (ONNX Runtime with graph
optimizations off).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort

from graphopt import capture
from graphopt.models import synthetic_bert
from graphopt.pipeline import parse_pipeline

REPO = Path(__file__).resolve().parent.parent
TINY = {"layers": 2, "hidden": 64, "heads": 4, "intermediate": 128, "vocab": 1000, "seq_len": 16}


def _run(path: str | os.PathLike, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def test_tiny_bert_runs_in_onnxruntime():
    model = synthetic_bert.build(**TINY, opset=14)
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = synthetic_bert.example_inputs(0, seq_len=TINY["seq_len"], vocab=TINY["vocab"], padding=4)
    (hidden,) = session.run(None, feeds)
    assert hidden.shape == (1, TINY["seq_len"], TINY["hidden"])
    assert np.isfinite(hidden).all()
    ops = {n.op_type for n in model.graph.node}
    assert {"Erf", "ReduceMean", "Softmax", "Transpose", "Reshape", "Gather"} <= ops
    assert "LayerNormalization" not in ops and "Gelu" not in ops


def test_build_with_path_streams_weights_to_external_data(tmp_path):
    path = tmp_path / "bert.onnx"
    synthetic_bert.build(**TINY, opset=18, path=path)
    assert (tmp_path / "bert.onnx.data").exists()
    proto = onnx.load(path, load_external_data=False)
    external = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and all(e.value == "bert.onnx.data" for t in external for e in t.external_data if e.key == "location")
    # Same graph and weights as the in-memory build, and opset 18 takes ReduceMean's axes as an input.
    loaded = onnx.load(path)
    inline = synthetic_bert.build(**TINY, opset=18)
    assert loaded.graph.node == inline.graph.node
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in inline.graph.initializer}
    assert {t.name for t in loaded.graph.initializer} == set(weights)
    for tensor in loaded.graph.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(tensor), weights[tensor.name])
    assert all(len(n.input) == 2 for n in proto.graph.node if n.op_type == "ReduceMean")


def test_overhead_benchmark_end_to_end(tmp_path):
    pipeline = "canonicalize"
    out, report = tmp_path / "out", tmp_path / "result.json"
    env = dict(os.environ, GRAPHOPT_CACHE=str(tmp_path / "cache"))
    args = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.overhead", *args, "--pipeline", pipeline, "--out", str(out), "--json", str(report)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # Exit 1 is a missed target: the tiny model's RSS is all interpreter, so the ratio misses.
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == json.loads(report.read_text())
    assert result["pipeline"] == pipeline
    expected_passes = [spec.name for spec, _ in parse_pipeline(pipeline).expand()]
    assert [p["name"] for p in result["passes"]] == expected_passes
    assert result["parameters"] >= synthetic_bert.parameter_count(2, 64, 128, 1000)
    for key in ("load_s", "pipeline_s", "save_s", "total_s", "peak_rss_bytes", "rss_ratio", "model_bytes"):
        assert result[key] > 0, key
    assert result["time_verdict"] in ("PASS", "FAIL") and result["memory_verdict"] in ("PASS", "FAIL")
    assert "total" in proc.stdout and "peak RSS" in proc.stdout

    rewritten = out / "model.onnx"
    onnx.checker.check_model(str(rewritten), full_check=True)
    capture.load(rewritten)  # loads again through graphopt's own checks
    # The legacy exporter's spellings are all canonicalized.
    ops = {n.op_type for n in onnx.load(rewritten, load_external_data=False).graph.node}
    assert not ops & {"Erf", "ReduceMean", "Softmax"}, ops
    original = Path(result["model"])
    for seed, padding in ((0, 0), (1, 5)):
        feeds = synthetic_bert.example_inputs(seed, seq_len=TINY["seq_len"], vocab=TINY["vocab"], padding=padding)
        (expected,) = _run(original, feeds)
        (actual,) = _run(rewritten, feeds)
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_overhead_help():
    proc = subprocess.run([sys.executable, "-m", "bench.overhead", "--help"], cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    assert "--layers" in proc.stdout and "--pipeline" in proc.stdout and "--keep" in proc.stdout
