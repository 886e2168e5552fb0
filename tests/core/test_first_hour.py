"""A new user's first hour (issue 20): one latency default for the API and the CLI, `explain --calib`,
`graphopt bench`, integer-only failures that name the op that stopped the region, `TvmArtifact.run`
with a tuple, and TVM's C++ log kept off the terminal. Each runs the real CLI or API."""

from __future__ import annotations

import inspect
import json

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
