"""The user's data is never lost and the right weights are validated (issue: never lose the user's data).

Every case runs the real CLI in a subprocess from a working directory chosen by the test.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys

import numpy as np
import onnx
import onnx.helper as oh
import pytest

import graphopt

REAL = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)


def run_cli(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphopt", *args], capture_output=True, text=True, cwd=cwd, timeout=300, env=env)


def assert_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _mlp(weights: np.ndarray = REAL) -> onnx.ModelProto:
    """x[1,2] @ w[2,3] -> Relu: a model whose output tells which weights were used."""
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "w"], ["h"]), oh.make_node("Relu", ["h"], ["y"])],
        "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])],
        [onnx.numpy_helper.from_array(weights, "w")],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def _external_model(folder, data_name: str = "w.bin", model_name: str = "model.onnx") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / model_name
    onnx.save(_mlp(), path, save_as_external_data=True, all_tensors_to_one_file=True, location=data_name, size_threshold=0)
    return str(path)


def _decoy(folder, name: str = "w.bin") -> None:
    """Another w.bin in the working directory: same size, weights of 1e6."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(np.full(REAL.shape, 1e6, np.float32).tobytes())


def _manifest_names(folder) -> list[str]:
    return sorted(f for f in os.listdir(folder) if not f.startswith("."))


# --- external data resolves against the model's folder ---------------------------------------


def test_external_data_is_read_from_the_models_folder_not_the_cwd(tmp_path, monkeypatch):
    model = _external_model(tmp_path / "ext" / "valid")
    _decoy(tmp_path / "cwd")
    monkeypatch.chdir(tmp_path / "cwd")
    x = np.array([[1.0, -1.0]], np.float32)
    result = graphopt.compile(model, passes="canonicalize", calib=[{"x": x}], bench_runs=2)
    expected = np.maximum(x @ REAL, 0)
    np.testing.assert_allclose(result.artifacts["onnx"].run({"x": x})["y"], expected, rtol=1e-6)
    assert result.report.accuracy["y"]["max_abs"] == 0.0


def test_cli_with_external_data_runs_from_another_folder_holding_a_decoy(tmp_path):
    model = _external_model(tmp_path / "ext" / "valid")
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "w.bin").write_bytes(b"\0" * 4)  # a decoy ORT would reject if it read it
    result = run_cli("compile", model, "-o", str(tmp_path / "out"), "--quiet", cwd=tmp_path / "cwd")
    assert result.returncode == 0, result.stderr
    again = graphopt.load(str(tmp_path / "out" / "model.onnx"))
    np.testing.assert_array_equal(again.graph.initializers["w"].const_value.numpy(), REAL)


@pytest.mark.slow
def test_tvm_reads_external_data_from_the_models_folder(tmp_path, monkeypatch):
    model = _external_model(tmp_path / "ext" / "valid")
    _decoy(tmp_path / "cwd")
    monkeypatch.chdir(tmp_path / "cwd")
    x = np.array([[1.0, -1.0]], np.float32)
    result = graphopt.compile(model, passes="canonicalize", calib=[{"x": x}], targets=["onnx", "tvm-llvm"])
    np.testing.assert_allclose(result.artifacts["tvm-llvm"].run({"x": x})["y"], np.maximum(x @ REAL, 0), rtol=1e-6)


# --- never write over an input or over files graphopt did not write --------------------------


def test_output_folder_holding_the_input_model_is_refused(tmp_path):
    folder = tmp_path / "dir"
    folder.mkdir()
    onnx.save(_mlp(), folder / "model.onnx")
    before = (folder / "model.onnx").read_bytes()
    result = run_cli("compile", str(folder / "model.onnx"), "-o", str(folder), "--quiet")
    assert_error(result, 2, "overwrite", "--force")
    assert (folder / "model.onnx").read_bytes() == before
    assert run_cli("compile", str(folder / "model.onnx"), "-o", str(folder), "--quiet", "--force").returncode == 0


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_input_reached_through_a_link_is_refused(tmp_path, link):
    onnx.save(_mlp(), tmp_path / "real.onnx")
    out = tmp_path / "out"
    out.mkdir()
    (os.symlink if link == "symlink" else os.link)(tmp_path / "real.onnx", out / "model.onnx")
    before = (tmp_path / "real.onnx").read_bytes()
    assert_error(run_cli("compile", str(tmp_path / "real.onnx"), "-o", str(out), "--quiet"), 2, "overwrite")
    assert (tmp_path / "real.onnx").read_bytes() == before


def test_input_whose_weights_are_model_onnx_data_survives(tmp_path):
    model = _external_model(tmp_path / "d", data_name="model.onnx.data", model_name="in.onnx")
    result = run_cli("compile", "in.onnx", "-o", ".", "--quiet", cwd=tmp_path / "d")
    assert_error(result, 2, "model.onnx.data")
    loaded = graphopt.load(model)  # still loads, with its own weights
    np.testing.assert_array_equal(loaded.graph.initializers["w"].const_value.numpy(), REAL)


def test_files_graphopt_did_not_write_are_kept(tmp_path):
    onnx.save(_mlp(), tmp_path / "in.onnx")
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_text("the user's own file")
    assert_error(run_cli("compile", str(tmp_path / "in.onnx"), "-o", str(out), "--quiet"), 2, "not written by graphopt")
    assert (out / "model.onnx").read_text() == "the user's own file"
    (out / "model.onnx").unlink()
    (out / "notes.txt").write_text("keep me")
    assert run_cli("compile", str(tmp_path / "in.onnx"), "-o", str(out), "--quiet").returncode == 0
    assert run_cli("compile", str(tmp_path / "in.onnx"), "-o", str(out), "--quiet").returncode == 0  # its own files: replaced
    assert (out / "notes.txt").read_text() == "keep me"


def test_stale_outputs_of_an_earlier_run_are_removed(tmp_path):
    onnx.save(_mlp(), tmp_path / "in.onnx")
    out = tmp_path / "out"
    assert run_cli("compile", str(tmp_path / "in.onnx"), "-o", str(out), "--quiet").returncode == 0
    (out / "tvm-llvm").mkdir()  # as if the earlier run had built a TVM target
    (out / "tvm-llvm" / "model.so").write_bytes(b"old")
    manifest = json.loads((out / ".graphopt-manifest.json").read_text())
    (out / ".graphopt-manifest.json").write_text(json.dumps({"files": [*manifest["files"], "tvm-llvm"]}))
    assert run_cli("compile", str(tmp_path / "in.onnx"), "-o", str(out), "--quiet").returncode == 0
    assert _manifest_names(out) == ["model.onnx", "report.html", "report.json"]


def test_report_path_may_not_be_an_input_or_a_folder(tmp_path):
    onnx.save(_mlp(), tmp_path / "m.onnx")
    before = (tmp_path / "m.onnx").read_bytes()
    assert_error(run_cli("compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out"), "--report", str(tmp_path / "m.onnx")), 2, "input")
    assert (tmp_path / "m.onnx").read_bytes() == before
    (tmp_path / "folder").mkdir()
    assert_error(run_cli("compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out"), "--report", str(tmp_path / "folder")), 2, "is a folder")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_folder_named_like_an_output_is_refused_before_anything_moves(tmp_path):
    onnx.save(_mlp(), tmp_path / "in.onnx")
    out = tmp_path / "out"
    assert run_cli("compile", str(tmp_path / "in.onnx"), "-o", str(out), "--quiet").returncode == 0
    before = (out / "model.onnx").read_bytes()
    (out / "report.json").unlink()
    (out / "report.json").mkdir()
    onnx.save(_mlp(np.ones_like(REAL)), tmp_path / "other.onnx")
    assert_error(run_cli("compile", str(tmp_path / "other.onnx"), "-o", str(out), "--quiet"), 2, "report.json")
    assert (out / "model.onnx").read_bytes() == before


def test_failed_run_leaves_no_output_folder(tmp_path):
    onnx.save(_mlp(), tmp_path / "in.onnx")
    assert_error(run_cli("compile", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out"), "--passes", "nope"), 2, "unknown pass")
    assert not (tmp_path / "out").exists()


# --- modes, signals, concurrency ---------------------------------------------------------------


def test_outputs_follow_the_umask(tmp_path):
    onnx.save(_mlp(), tmp_path / "in.onnx")
    old = os.umask(0o022)
    try:
        assert run_cli("compile", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out"), "--quiet",
                       "--report", str(tmp_path / "extra.json")).returncode == 0
    finally:
        os.umask(old)
    for name in ("out/model.onnx", "out/report.json", "extra.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name


SIGTERM_DURING_SAVE = """
import os, signal, sys
from graphopt import storage, cli
real_save = storage.save_model
def save_then_die(*args, **kwargs):
    written = real_save(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    return written
storage.save_model = save_then_die
sys.exit(cli.main(sys.argv[1:]))
"""


def test_sigterm_during_save_leaves_nothing(tmp_path):
    onnx.save(_mlp(), tmp_path / "in.onnx")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-c", SIGTERM_DURING_SAVE, "compile", str(tmp_path / "in.onnx"), "-o", str(out), "--quiet"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 143, result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_staging_left_by_a_killed_run_is_cleaned(tmp_path):
    onnx.save(_mlp(), tmp_path / "in.onnx")
    out = tmp_path / "out"
    assert run_cli("compile", str(tmp_path / "in.onnx"), "-o", str(out), "--quiet").returncode == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    abandoned = out / f".graphopt-staging-{dead.pid}-abc123"
    (abandoned / "sub").mkdir(parents=True)
    (abandoned / "sub" / "model.onnx").write_bytes(b"partial")
    assert run_cli("compile", str(tmp_path / "in.onnx"), "-o", str(out), "--quiet").returncode == 0
    assert not abandoned.exists()


def test_two_runs_into_one_folder_never_mix_their_files(tmp_path):
    onnx.save(_mlp(), tmp_path / "a.onnx")
    onnx.save(_mlp(np.ones_like(REAL)), tmp_path / "b.onnx")
    out = tmp_path / "out"
    for _ in range(3):
        runs = [subprocess.Popen([sys.executable, "-m", "graphopt", "compile", str(tmp_path / name), "-o", str(out), "--quiet"],
                                 stderr=subprocess.PIPE) for name in ("a.onnx", "b.onnx")]
        assert [r.wait(timeout=300) for r in runs] == [0, 0]
        report = json.loads((out / "report.json").read_text())
        weights = graphopt.load(str(out / "model.onnx")).graph.initializers["w"].const_value.numpy()
        expected = REAL if report["model"].endswith("a.onnx") else np.ones_like(REAL)
        np.testing.assert_array_equal(weights, expected)


# --- the model's interface and the check that could not fail --------------------------------


def _interface_model(nodes, outputs) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
                          [oh.make_tensor_value_info(o, onnx.TensorProto.FLOAT, [2, 3]) for o in outputs])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


@pytest.mark.parametrize("case", ["returns_its_input", "identity_copy_output"])
@pytest.mark.parametrize("validate", [True, False])
def test_input_and_output_names_are_kept(tmp_path, case, validate):
    if case == "returns_its_input":
        model = _interface_model([oh.make_node("Relu", ["x"], ["y"])], ["x", "y"])
    else:
        model = _interface_model([oh.make_node("Relu", ["x"], ["y"]), oh.make_node("Identity", ["y"], ["y_copy"])], ["y", "y_copy"])
    onnx.save(model, tmp_path / "in.onnx")
    args = ["compile", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out"), "--quiet"] + ([] if validate else ["--no-validate"])
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    written = onnx.load(tmp_path / "out" / "model.onnx")
    onnx.checker.check_model(written, full_check=True)
    assert [i.name for i in written.graph.input] == [i.name for i in model.graph.input]
    assert [o.name for o in written.graph.output] == [o.name for o in model.graph.output]
    assert [o.type for o in written.graph.output] == [o.type for o in model.graph.output]


def test_all_nan_data_fails_the_check_unless_allowed(tmp_path):
    onnx.save(_mlp(), tmp_path / "in.onnx")
    np.savez(tmp_path / "nan.npz", x=np.full((1, 2), np.nan, np.float32))
    result = run_cli("compile", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out"), "--calib", str(tmp_path / "nan.npz"), "--quiet")
    assert result.returncode == 1 and "NaN/Inf" in result.stderr, result.stderr
    allowed = run_cli("compile", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out2"), "--calib", str(tmp_path / "nan.npz"),
                      "--quiet", "--allow-nonfinite")
    assert allowed.returncode == 0, allowed.stderr


# --- data and flags that are the user's to fix: exit 2, one line -----------------------------


def test_bad_data_files_are_usage_errors(tmp_path):
    onnx.save(_mlp(), tmp_path / "in.onnx")
    np.savez(tmp_path / "obj.npz", x=np.array([object(), 1], dtype=object))
    (tmp_path / "notzip.npz").write_bytes(b"hello")
    with open(tmp_path / "huge.npy", "wb") as f:  # a header claiming 58 TiB, and no data
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (8_000_000_000_000, 2)})
    for name, fragment in [("obj.npz", "objects"), ("notzip.npz", "not an .npz"), ("huge.npy", "truncated or corrupt")]:
        result = run_cli("compile", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out"), "--calib", str(tmp_path / name))
        assert_error(result, 2, fragment)


@pytest.mark.parametrize("shape", ["x:-1,2", "x:99999999999,16", "x:0,2"])
def test_bad_input_shapes_are_usage_errors(tmp_path, shape):
    onnx.save(_mlp(), tmp_path / "in.onnx")
    assert_error(run_cli("compile", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out"), "--input-shape", shape), 2, "--input-shape")


@pytest.mark.parametrize("pipeline, fragment", [
    ("gelu(rtol=nan)", "finite"), ("cleanup(iterations=-1)", "at least 0"), ("shiftmax(input_bits=16)", "input_bits"),
])
def test_bad_option_values_are_usage_errors(tmp_path, pipeline, fragment):
    onnx.save(_mlp(), tmp_path / "in.onnx")
    assert_error(run_cli("compile", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out"), "--passes", pipeline), 2, fragment)


def test_empty_targets_and_huge_pipelines_are_short_usage_errors(tmp_path):
    onnx.save(_mlp(), tmp_path / "in.onnx")
    assert_error(run_cli("compile", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out"), "--targets", ""), 2, "names no target")
    result = run_cli("compile", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out"), "--passes", "x" * 100_000)
    assert_error(result, 2)
    assert len(result.stderr) < 600


def test_global_quiet_flag_silences_compile(tmp_path):
    onnx.save(_mlp(), tmp_path / "in.onnx")
    result = run_cli("--quiet", "compile", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out"))
    assert result.returncode == 0 and result.stdout == "", result.stdout


def test_markup_and_newlines_in_names_and_paths_print_as_is(tmp_path):
    model = _interface_model([oh.make_node("Relu", ["x"], ["out[/oops]"])], ["out[/oops]"])
    folder = tmp_path / "a[" / "b]c"  # the path reads a[/b]c
    folder.mkdir(parents=True)
    onnx.save(model, folder / "m[red].onnx")
    result = run_cli("compile", str(folder / "m[red].onnx"), "-o", str(tmp_path / "o[/x]"))
    assert result.returncode == 0, result.stderr
    assert "out[/oops]" in result.stdout and "m[red].onnx" in result.stdout
