"""A new user's first hour (issue 20): one latency default for the API and the CLI, `explain --calib`,
`graphopt bench`, integer-only failures that name the op that stopped the region, `TvmArtifact.run`
with a tuple, and TVM's C++ log kept off the terminal. Each runs the real CLI or API."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import numpy as np
import onnx
import onnx.parser
import pytest

import graphopt
from graphopt import api, cli


def test_api_and_cli_share_one_bench_runs_default(mlp_path, tmp_path, capsys):
    assert inspect.signature(graphopt.compile).parameters["bench_runs"].default == api.BENCH_RUNS
    assert cli.main(["compile", mlp_path, "--passes", "cleanup", "-o", str(tmp_path / "cli")]) == 0
    shown = capsys.readouterr().out
    from_cli = json.loads((tmp_path / "cli" / "report.json").read_text())
    from_api = graphopt.compile(mlp_path, passes="cleanup").report
    assert bool(from_cli["latency"]) == bool(from_api.latency) == (api.BENCH_RUNS > 0)
    assert "--bench-runs 10" in shown  # says how to ask for the timing it skipped
    assert cli.main(["compile", mlp_path, "--passes", "cleanup", "-o", str(tmp_path / "timed"), "--bench-runs", "2"]) == 0
    assert set(json.loads((tmp_path / "timed" / "report.json").read_text())["latency"]) == {"original", "onnx"}


# --- TVM: a two-input embedding model (the Gather makes TVM's C++ log "Fast mode segfaults ...") ----
EMBED_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
embed (int64[1, 4] ids, int64[1, 4] mask) => (float[1, 4, 3] y) <float[5, 3] table = {0.1, -0.2, 0.3, 0.4, 0.5, -0.6, 0.7, 0.8, -0.9, 1.0, 1.1, 1.2, 0.0, 0.5, 1.0}, int64[1] last = {-1}> {
    e = Gather <axis = 0> (table, ids)
    m = Cast <to = 1> (mask)
    m3 = Unsqueeze (m, last)
    y = Mul (e, m3)
}
"""


@pytest.fixture(scope="module")
def tvm_run(tmp_path_factory):
    """`graphopt compile` of the embedding model for tvm-llvm, in a subprocess: (result, output folder)."""
    pytest.importorskip("tvm")
    folder = tmp_path_factory.mktemp("tvm")
    onnx.save(onnx.parser.parse_model(EMBED_TEXT), folder / "embed.onnx")
    np.savez(folder / "calib.npz", ids=np.array([[[0, 1, 2, 4]], [[3, 3, 0, 1]]]), mask=np.array([[[1, 1, 1, 0]], [[1, 1, 0, 0]]]))
    args = [str(folder / "embed.onnx"), "--calib", str(folder / "calib.npz"), "--passes", "cleanup", "--targets", "tvm-llvm"]
    quiet = _graphopt("compile", *args, "-o", str(folder / "out"))
    debug = _graphopt("compile", *args, "-o", str(folder / "debug"), "--debug")
    return quiet, debug, folder / "out"


def _graphopt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphopt", *args], capture_output=True, text=True, timeout=600)


def test_tvm_cpp_log_goes_to_the_debug_log_not_the_terminal(tvm_run):
    from graphopt.backends.tvm._log import is_tvm_log_line

    quiet, debug, _ = tvm_run
    assert quiet.returncode == 0, quiet.stderr
    assert not [line for line in quiet.stderr.splitlines() if is_tvm_log_line(line)], quiet.stderr
    assert "Fast mode segfaults" not in quiet.stderr + quiet.stdout
    assert debug.returncode == 0, debug.stderr[-2000:]
    logged = [line for line in debug.stderr.splitlines() if "Fast mode segfaults" in line]
    assert logged and all(line.startswith("DEBUG graphopt.backends.tvm._log: tvm: [") for line in logged)


def test_tvm_artifact_run_asks_for_a_dict_given_a_tuple(tvm_run):
    from graphopt.backends.tvm import TvmArtifact
    from graphopt.errors import DataError

    artifact = TvmArtifact.load(str(tvm_run[2] / "tvm-llvm"))
    ids, mask = np.array([[0, 1, 2, 4]]), np.array([[1, 1, 1, 0]])
    for wrong in ((ids, mask), [ids, mask], ids):
        with pytest.raises(DataError, match=r"pass a dict of input name -> array: \{'ids': \.\.\., 'mask': \.\.\.\}"):
            artifact.run(wrong)
    y = artifact.run({"ids": ids, "mask": mask})["y"]
    np.testing.assert_allclose(y[0, 3], 0.0)
    np.testing.assert_allclose(y[0, 0], [0.1, -0.2, 0.3], rtol=1e-6)


def test_tvm_artifact_run_takes_a_bare_array_for_a_one_input_model(mlp_proto):
    pytest.importorskip("tvm")
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    result = graphopt.compile(mlp_proto, passes="cleanup", calib=x, targets=["tvm-llvm"], validate=False)
    artifact = result.artifacts["tvm-llvm"]
    np.testing.assert_allclose(artifact.run(x)["y"], artifact.run({"x": x})["y"])


# --- explain --calib ---------------------------------------------------------------------------
def test_explain_calibrates_on_the_given_data(mlp_path, tmp_path, capsys, monkeypatch):
    from graphopt import pipeline

    stacked = np.random.default_rng(0).standard_normal((3, 2, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", stacked)
    seen = []
    run_pipeline = pipeline.run_pipeline
    monkeypatch.setattr(pipeline, "run_pipeline", lambda *a, samples=None, **k: seen.append(samples) or run_pipeline(*a, samples=samples, **k))
    assert cli.main(["explain", mlp_path, "--passes", "ivit", "--calib", str(tmp_path / "x.npy")]) == 0
    out = capsys.readouterr().out
    assert "int8-linear: rewrote int8-matmul x1" in out and "synthetic" not in out
    assert seen and all(len(s) == 3 and np.array_equal(s[2]["x"], stacked[2]) for s in seen)  # every pass saw the user's samples


def test_explain_without_data_warns_once_and_refuses_data_that_does_not_fit(mlp_path, tmp_path, capsys):
    assert cli.main(["explain", mlp_path, "--passes", "ivit"]) == 0
    out = capsys.readouterr().out
    assert out.count("synthetic") == 1 and out.startswith("note: no calibration data: int8-linear, ")
    assert cli.main(["explain", mlp_path, "--passes", "canonicalize"]) == 0
    assert "synthetic" not in capsys.readouterr().out  # nothing calibrates: nothing to warn about
    np.save(tmp_path / "bad.npy", np.zeros((2, 5), np.float32))
    assert cli.main(["explain", mlp_path, "--passes", "ivit", "--calib", str(tmp_path / "bad.npy")]) == 2
    assert "graphopt: error:" in capsys.readouterr().err
