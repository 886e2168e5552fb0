"""Bad input: one clear line, the documented exit code, no traceback, no partial output.

Each case runs the real CLI in a subprocess (as a user would), so "no traceback" is checked on
the real stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from graphopt import validity
from graphopt.errors import ModelError


def graphopt(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphopt", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("graphopt: error: "), lines[0]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def assert_no_output(folder) -> None:
    if os.path.exists(folder):
        assert [f for f in os.listdir(folder) if not f.startswith(".graphopt-probe")] == []


def _undefined_value_model() -> onnx.ModelProto:
    graph = oh.make_graph(
        [oh.make_node("Add", ["x", "ghost"], ["y"], name="add")],
        "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def _cycle_model() -> onnx.ModelProto:
    graph = oh.make_graph(
        [oh.make_node("Add", ["x", "b"], ["a"], name="first"), oh.make_node("Relu", ["a"], ["b"], name="second")],
        "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [oh.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [2])],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def _outside_data_model(folder) -> str:
    weights = oh.make_tensor("w", onnx.TensorProto.FLOAT, [2], [1.0, 2.0])
    graph = oh.make_graph(
        [oh.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
        [weights],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    tensor = model.graph.initializer[0]
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "8")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    (folder.parent / "secret.bin").write_bytes(np.array([1, 2], np.float32).tobytes())
    path = folder / "evil.onnx"
    path.write_bytes(model.SerializeToString())
    return str(path)


@pytest.fixture
def out(tmp_path):
    return str(tmp_path / "out")


def test_missing_file(out):
    assert_one_line_error(graphopt("compile", "/no/such/model.onnx", "-o", out), 3, "no such model file")
    assert_no_output(out)


def test_empty_file(tmp_path, out):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    assert_one_line_error(graphopt("compile", str(path), "-o", out), 3, "is empty")
    assert_no_output(out)


def test_random_bytes(tmp_path, out):
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    assert_one_line_error(graphopt("compile", str(path), "-o", out), 3, "noise.onnx")
    assert_no_output(out)


def test_truncated_protobuf(tmp_path, mlp_proto, out):
    path = tmp_path / "cut.onnx"
    data = mlp_proto.SerializeToString()
    path.write_bytes(data[: len(data) // 2])
    assert_one_line_error(graphopt("compile", str(path), "-o", out), 3, "cut.onnx")
    assert_no_output(out)


def test_undefined_value(tmp_path, out):
    path = tmp_path / "ghost.onnx"
    onnx.save(_undefined_value_model(), path)
    assert_one_line_error(graphopt("compile", str(path), "-o", out), 3, "node 'add' (Add) reads 'ghost'")
    assert_no_output(out)


def test_cycle(tmp_path, out):
    path = tmp_path / "cycle.onnx"
    onnx.save(_cycle_model(), path)
    assert_one_line_error(graphopt("compile", str(path), "-o", out), 3, "cycle", "first -> second -> first")
    assert_no_output(out)


def test_external_data_outside_model_folder(tmp_path, out):
    folder = tmp_path / "models"
    folder.mkdir()
    path = _outside_data_model(folder)
    assert_one_line_error(graphopt("compile", path, "-o", out), 3, "outside the model's folder", "../secret.bin")
    assert_no_output(out)


def test_unknown_pass(mlp_path, out):
    assert_one_line_error(graphopt("compile", mlp_path, "--passes", "cleanup,nope", "-o", out), 2, "unknown pass 'nope'", "cleanup")
    assert_no_output(out)


def test_unknown_option_key(mlp_path, out):
    assert_one_line_error(graphopt("compile", mlp_path, "--passes", "cleanup(speed=9)", "-o", out), 2, "no option 'speed'", "fold_limit")
    assert_no_output(out)


def test_bad_option_value(mlp_path, out):
    assert_one_line_error(graphopt("compile", mlp_path, "--passes", "opset-upgrade(opset=new)", "-o", out), 2, "must be int, got 'new'")
    assert_no_output(out)


def test_tuning_without_a_tvm_target(mlp_path, out):
    assert_one_line_error(graphopt("compile", mlp_path, "--tune-budget", "4", "-o", out), 2, "add a TVM target")
    assert_no_output(out)


def test_tuning_database_that_is_not_a_folder(mlp_path, out):
    result = graphopt("compile", mlp_path, "--targets", "tvm-llvm", "--tune-database", mlp_path, "-o", out)
    assert_one_line_error(result, 2, "is not a folder")
    assert_no_output(out)


def test_calibration_data_with_wrong_names(tmp_path, mlp_path, out):
    calib = tmp_path / "calib.npz"
    np.savez(calib, pixels=np.zeros((1, 4), np.float32))
    assert_one_line_error(graphopt("compile", mlp_path, "--passes", "cleanup", "--calib", str(calib), "-o", out), 2, "unknown input(s) ['pixels']", "missing input(s) ['x']")
    assert_no_output(out)


def test_calibration_data_with_wrong_shape(tmp_path, mlp_path, out):
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.zeros((1, 5), np.float32))
    assert_one_line_error(graphopt("compile", mlp_path, "--passes", "cleanup", "--calib", str(calib), "-o", out), 2, "input 'x' has shape (1, 5)", "[?,4]")
    assert_no_output(out)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere; test_output_folder_root_cannot_write covers root")
def test_output_folder_not_writable(tmp_path, mlp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    assert_one_line_error(graphopt("compile", mlp_path, "--passes", "cleanup", "-o", str(folder)), 2, "not writable")


def test_output_path_is_a_file(tmp_path, mlp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(graphopt("compile", mlp_path, "--passes", "cleanup", "-o", str(blocker / "out")), 2, "cannot create output folder")


def test_unknown_flag(mlp_path):
    assert_one_line_error(graphopt("compile", mlp_path, "--fast"), 2, "unrecognized arguments: --fast")


def test_output_folder_root_cannot_write(mlp_path):
    # /proc/self is a folder nobody, root included, can create files in.
    assert_one_line_error(graphopt("compile", mlp_path, "--passes", "cleanup", "-o", "/proc/self"), 2, "not writable")


def test_crashing_pass_is_exit_5_one_line_and_debug_shows_traceback(mlp_path, out, capsys, monkeypatch):
    from graphopt import cli, pipeline

    def crash(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(pipeline, "_run_one", crash)
    assert cli.main(["compile", mlp_path, "--passes", "cleanup", "-o", out, "--quiet"]) == 5
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["graphopt: error: pass 'cleanup' failed after []: RuntimeError: simulated bug"]
    assert_no_output(out)
    with pytest.raises(Exception, match="simulated bug"):
        cli.main(["compile", mlp_path, "--passes", "cleanup", "-o", out, "--quiet", "--debug"])


def test_validity_messages_are_single_lines():
    with pytest.raises(ModelError) as info:
        validity.check_model_proto(_cycle_model())
    assert "\n" not in str(info.value)


def test_ok_run_writes_model_and_report(mlp_path, out):
    result = graphopt("compile", mlp_path, "--passes", "cleanup", "-o", out, "--bench-runs", "2")
    assert result.returncode == 0, result.stderr
    assert sorted(f for f in os.listdir(out) if not f.startswith(".")) == ["model.onnx", "report.html", "report.json"]
    assert "Traceback" not in result.stderr


def test_numeric_check_failure_exits_1(mlp_path, out):
    # A cosine above 1 cannot be met: the check fails, the run still writes complete files.
    result = graphopt("compile", mlp_path, "--passes", "cleanup", "-o", out, "--min-cosine", "1.5", "--bench-runs", "0")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("graphopt: numeric check failed: y: cosine 1.000000 < 1.5")
    assert sorted(f for f in os.listdir(out) if not f.startswith(".")) == ["model.onnx", "report.html", "report.json"]
