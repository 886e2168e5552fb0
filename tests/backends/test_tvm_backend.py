"""The TVM backend's core: targets, preflight, import preparation, compile/run/save/load, CLI errors."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest
from rich.console import Console

import graphopt
from graphopt import report as report_module
from graphopt import testing
from graphopt.backends import get_backend, split_targets
from graphopt.backends import tvm as tvm_backend
from graphopt.backends.tvm import importer, targets
from graphopt.errors import UnsupportedError, UsageError

MLP = """
<ir_version: 8, opset_import: ["" : 17]>
mlp (float[2, 4] x) => (float[2, 3] y) <float[4, 3] w = {0.1, -0.2, 0.3, 0.4, 0.5, -0.6, 0.7, 0.8, -0.9, 1.0, 1.1, 1.2}, float[3] b = {0.5, -0.5, 0.25}> {
    h = MatMul(x, w)
    y = Add(h, b)
}
"""

# the legacy exporter's shape arithmetic: ConstantOfShape of a constant, Expand with -1 = "keep this dim"
LEGACY_SHAPES = """
<ir_version: 8, opset_import: ["" : 17]>
legacy (float[N, 3] x) => (float[N, 3] y) {
    two = Constant <value = int64[1] {2}> ()
    ones = ConstantOfShape <value = int64[1] {1}> (two)
    minus = Constant <value = int64[2] {-1, 3}> ()
    dims = Mul(ones, minus)
    row = Constant <value = float[1, 3] {1.0, 2.0, 3.0}> ()
    wide = Expand(row, dims)
    y = Add(x, wide)
}
"""

CUSTOM_OP = """
<ir_version: 8, opset_import: ["" : 17, "example.custom" : 1]>
custom (float[2, 4] x) => (float[2, 4] y) {
    y = example.custom.Frobnicate(x)
}
"""


def _model(text: str) -> ir.Model:
    return ir.serde.deserialize_model(onnx.parser.parse_model(text))


def test_split_targets_keeps_json_dicts_whole():
    assert split_targets('onnx, tvm-llvm,{"kind": "llvm", "mattr": ["+avx2", "+fma"]}') == [
        "onnx", "tvm-llvm", '{"kind": "llvm", "mattr": ["+avx2", "+fma"]}']


def test_short_names_and_json_dicts_resolve():
    assert targets.resolve("tvm-llvm").runs_on_host
    arm = targets.resolve("tvm-aarch64")
    assert arm.is_aarch64 and not arm.runs_on_host and arm.tvm_target().attrs["mtriple"] == "aarch64-linux-gnu"
    cuda = targets.resolve("tvm-cuda")
    assert cuda.is_cuda and cuda.tvm_target().host is not None
    custom = targets.resolve('{"kind": "llvm", "mtriple": "aarch64-linux-gnu"}')
    assert custom.is_aarch64 and custom.name.startswith("tvm-")
    assert get_backend('{"kind": "llvm"}') is tvm_backend


@pytest.mark.parametrize(("text", "error"), [
    ("tvm-riscv", UsageError), ('{"kind": ', UsageError), ('{"mcpu": "znver3"}', UsageError), ('{"kind": "vulkan"}', UnsupportedError),
])
def test_bad_targets_say_what_is_wrong(text, error):
    with pytest.raises(error):
        (get_backend(text), targets.resolve(text)) if text != "tvm-riscv" else get_backend(text)


def test_preflight_lists_ops_without_converter():
    problems = tvm_backend.preflight(_model(CUSTOM_OP), "tvm-llvm")
    assert problems == ["tvm-llvm: example.custom::Frobnicate (1 node) has no TVM converter or graphopt kernel"]
    assert tvm_backend.preflight(_model(MLP), "tvm-llvm") == []


def test_dynamic_input_without_shape_is_a_usage_error():
    with pytest.raises(UsageError, match="--input-shape x"):
        importer.static_shapes(_model(LEGACY_SHAPES))


def test_prepare_folds_legacy_shape_arithmetic():
    prepared, records = importer.prepare(_model(LEGACY_SHAPES), {"x": [2, 3]})
    assert [n.op_type for n in prepared.graph] == ["Add"]  # Shape/ConstantOfShape/Expand all became constants
    ran = [r.name for r in records]  # registered passes, each with its record
    assert ran[0] == "static-shapes" and ran[-1] == "tvm-import-forms" and "fold-static-values" in ran
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    artifact = tvm_backend.compile(_model(LEGACY_SHAPES), target="tvm-llvm", example_inputs=feeds)
    np.testing.assert_array_equal(artifact.run(feeds)["y"], feeds["x"] + np.array([1, 2, 3], np.float32))


@pytest.mark.parametrize("target", ["tvm-llvm", '{"kind": "llvm"}'])
def test_compile_run_save_load(tmp_path, target):
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)}
    expected = testing.run_ort(onnx.parser.parse_model(MLP), feeds)[0]
    artifact = tvm_backend.compile(_model(MLP), target=target, example_inputs=feeds)
    np.testing.assert_allclose(artifact.run(feeds)["y"], expected, rtol=0, atol=1e-6)
    written = artifact.save(str(tmp_path))
    assert sorted(os.path.basename(p) for p in written) == ["metadata.json", "model.so"]
    loaded = tvm_backend.load(str(tmp_path))
    np.testing.assert_array_equal(loaded.run(feeds)["y"], artifact.run(feeds)["y"])
    assert loaded.time(feeds, runs=2).runs == 2


def test_loaded_artifact_checks_its_inputs(tmp_path):
    feeds = {"x": np.zeros((2, 4), np.float32)}
    tvm_backend.compile(_model(MLP), target="tvm-llvm", example_inputs=feeds).save(str(tmp_path))
    loaded = tvm_backend.load(str(tmp_path))
    with pytest.raises(graphopt.errors.ModelError, match="compiled for"):
        loaded.run({"x": np.zeros((3, 4), np.float32)})


def test_api_reports_parity_and_latency(tmp_path):
    feeds = [{"x": np.random.default_rng(i).standard_normal((2, 4)).astype(np.float32)} for i in range(3)]
    result = graphopt.compile(onnx.parser.parse_model(MLP), "canonicalize", calib=feeds, targets=["onnx", "tvm-llvm"], bench_runs=2)
    parity = result.report.parity["tvm-llvm"]
    assert parity["ran"] and parity["samples"] == 2 and parity["vs_onnx"]["y"]["max_abs"] < 1e-5
    assert {"original", "onnx", "tvm-llvm"} <= set(result.report.latency)
    assert result.report.targets["tvm-llvm"]["compile_seconds"] > 0
    result.save(tmp_path)
    assert sorted(os.listdir(tmp_path / "tvm-llvm")) == ["metadata.json", "model.so"]


def test_report_compares_the_compiled_targets_with_each_other():
    """Two TVM targets that both run here (host CPU and generic x86-64 LLVM) are compared pairwise."""
    feeds = [{"x": np.random.default_rng(i).standard_normal((2, 4)).astype(np.float32)} for i in range(3)]
    generic = '{"kind": "llvm"}'
    result = graphopt.compile(onnx.parser.parse_model(MLP), "canonicalize", calib=feeds, targets=["tvm-llvm", generic], bench_runs=0)
    names = sorted(result.report.parity)
    assert len(names) == 2 and "tvm-llvm" in names
    a, b = names
    assert result.report.parity[a]["vs_targets"].keys() == {b} and result.report.parity[b]["vs_targets"].keys() == {a}
    pair = result.report.parity[a]["vs_targets"][b]
    assert pair == result.report.parity[b]["vs_targets"][a] and pair["max_abs"] < 1e-5
    console = Console(record=True, width=200)
    report_module.render(result.report, console)
    assert "compiled targets vs each other" in console.export_text()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphopt", *args], capture_output=True, text=True, timeout=300)


def test_cli_unsupported_op_exits_4_and_writes_nothing(tmp_path):
    model = tmp_path / "custom.onnx"
    onnx.save(onnx.parser.parse_model(CUSTOM_OP), model)
    out = tmp_path / "out"
    result = _cli("compile", str(model), "--passes", "cleanup", "--targets", "tvm-llvm", "--no-validate", "-o", str(out))
    assert result.returncode == 4, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "example.custom::Frobnicate" in lines[0] and "Traceback" not in result.stderr
    assert not out.exists() or not [f for f in os.listdir(out) if not f.startswith(".")]


def test_cli_bad_target_is_a_usage_error(tmp_path):
    model = tmp_path / "mlp.onnx"
    onnx.save(onnx.parser.parse_model(MLP), model)
    result = _cli("compile", str(model), "--targets", "tvm-riscv", "-o", str(tmp_path / "out"))
    assert result.returncode == 2 and "unknown target 'tvm-riscv'" in result.stderr


def test_cli_compiles_for_tvm_llvm_with_a_json_target(tmp_path):
    model = tmp_path / "mlp.onnx"
    onnx.save(onnx.parser.parse_model(MLP), model)
    result = _cli("compile", str(model), "--passes", "cleanup", "--targets", 'onnx,{"kind": "llvm"}', "--bench-runs", "0", "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    folders = [f for f in os.listdir(tmp_path / "out") if f.startswith("tvm-")]
    assert len(folders) == 1 and sorted(os.listdir(tmp_path / "out" / folders[0])) == ["metadata.json", "model.so"]
    assert "Scope Loaded" not in result.stderr + result.stdout


@pytest.mark.slow
def test_legacy_minilm_imports_and_matches_onnxruntime():
    """The legacy export fails in TVM's importer alone (broadcast_to); prepared, it compiles and matches."""
    from graphopt.models import minilm

    proto = minilm.build(exporter="legacy", opset=17)
    feeds = minilm.tokenize(minilm.sentences()[:1], seq_len=128)
    expected = testing.run_ort(proto, feeds)
    artifact = tvm_backend.compile(ir.serde.deserialize_model(proto), target="tvm-llvm", example_inputs=feeds)
    got = artifact.run(feeds)
    for info, e in zip(artifact.outputs, expected):
        np.testing.assert_allclose(got[info.name], e, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_ivit_minilm_on_tvm_llvm_is_bit_exact_with_onnx_runtime():
    """The user-level path: compile with the ivit preset for tvm-llvm; the report's parity check
    runs TVM and ORT (the same integer graph) and finds them identical."""
    from graphopt.models import minilm

    batch = minilm.tokenize(minilm.sentences()[:10], seq_len=128)
    samples = [{k: v[i:i + 1] for k, v in batch.items()} for i in range(10)]
    result = graphopt.compile(minilm.build(), "ivit", calib=samples[:8], targets=["tvm-llvm"])
    parity = result.report.parity["tvm-llvm"]
    assert parity["ran"] and parity["bit_exact_vs_onnx"], parity
    artifact = result.artifacts["tvm-llvm"]
    for feeds in samples[8:]:  # sentences the calibration did not see
        expected = testing.run_ort(ir.to_proto(result.model), feeds)[0]
        np.testing.assert_array_equal(artifact.run(feeds)["last_hidden_state"], expected)


def _parse_add_one():
    from tvm.script import tirx as T

    @T.prim_func
    def add_one(a: T.Buffer((8,), "int32"), b: T.Buffer((8,), "int32")):
        for i in range(8):
            b[i] = a[i] + T.int32(1)

    return add_one


def test_fast_tvmscript_parsing_parses_the_same_functions():
    import inspect

    import tvm

    from graphopt.backends.tvm._fast_script import fast_tvmscript_parsing

    original = inspect.stack
    with fast_tvmscript_parsing():
        fast = _parse_add_one()
    assert inspect.stack is original
    tvm.ir.assert_structural_equal(fast, _parse_add_one())


def test_running_tvm_code_leaves_the_process_cpu_affinity_alone():
    """TVM's pool used to pin the calling thread to core 0, and every ONNX Runtime session made after
    it inherited that pin (two ORT threads on one core). A fresh process: nothing ran TVM before."""
    script = f"""
import os, numpy as np, onnx.parser, onnx_ir as ir
from graphopt.backends import tvm as tvm_backend
model = ir.serde.deserialize_model(onnx.parser.parse_model({MLP!r}))
feeds = {{"x": np.ones((2, 4), np.float32)}}
before = os.sched_getaffinity(0)
tvm_backend.compile(model, target="tvm-llvm", example_inputs=feeds).run(feeds)
print(before == os.sched_getaffinity(0))
"""
    env = {k: v for k, v in os.environ.items() if k != "TVM_BIND_THREADS"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert result.stdout.strip().splitlines()[-1:] == ["True"], result.stderr[-2000:]
