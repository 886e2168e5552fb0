"""Compile runs as named stages over one context, each timed by one instrument and announced."""

from __future__ import annotations

import contextlib

import numpy as np
import onnx
import pytest

import graphopt
from graphopt import cli, stages


def test_compile_runs_its_stages_in_order_and_times_each(mlp_proto):
    seen = []

    @contextlib.contextmanager
    def phases(name):
        seen.append(name)
        yield

    result = graphopt.compile(mlp_proto, passes="cleanup", bench_runs=2, phases=phases)
    assert seen == ["load", "samples", "preflight", "reference", "rewrite", "build", "parity", "validate", "layer-error", "latency"]
    assert set(result.report.seconds) == {*seen, "total"}
    assert result.report.seconds["total"] >= result.report.seconds["rewrite"]


def test_stages_that_do_not_apply_are_skipped(mlp_proto):
    seen = []

    @contextlib.contextmanager
    def phases(name):
        seen.append(name)
        yield

    graphopt.compile(mlp_proto, passes="ivit", validate=False, integer_only=True, phases=phases)
    assert seen == ["load", "samples", "rewrite", "integer-only", "build"]


def _samples(count: int, seed: int) -> list[dict]:
    return [{"x": np.random.default_rng(seed + i).standard_normal((2, 4)).astype(np.float32)} for i in range(count)]


def test_eval_data_is_what_the_checks_run(mlp_proto):
    result = graphopt.compile(mlp_proto, passes="ivit", calib=_samples(4, 0), eval=_samples(6, 100), bench_runs=1)
    assert result.report.data["samples"] == 4 and result.report.data["eval_samples"] == 6
    assert result.report.data["validated_on"] == "onnx" and result.report.data["shapes"] == {"x": [2, 4]}


@pytest.mark.slow
def test_validation_moves_to_a_target_that_matched_ort_bit_for_bit(mlp_proto):
    result = graphopt.compile(mlp_proto, passes="ivit", calib=_samples(4, 0), eval=_samples(6, 100), targets=["onnx", "tvm-llvm"])
    assert result.report.parity["tvm-llvm"]["bit_exact_vs_onnx"]
    assert result.report.data["validated_on"].startswith("tvm-llvm (bit-exact")
    ort_only = graphopt.compile(mlp_proto, passes="ivit", calib=_samples(4, 0), eval=_samples(6, 100))
    assert result.report.accuracy["y"] == ort_only.report.accuracy["y"]  # the same numbers, computed faster


def test_a_stage_list_can_be_run_by_other_commands(mlp_proto):
    settings = graphopt.api.checked_settings("cleanup", targets=None, input_shapes=None, integer_only=False, tolerances=None,
                                      ort_optimization="all", tune_budget=0, tune_database=None)
    ctx = stages.Context(mlp_proto, settings, graphopt.api.Report(model="m", pipeline="cleanup"), {})
    load, samples = stages.COMPILE_STAGES[:2]
    stages.run_stages(ctx, [load, samples])
    assert ctx.original is not None and len(ctx.samples) == 4 and ctx.work is None


def test_cli_prints_each_phase_with_its_time(tmp_path, mlp_proto, capsys):
    onnx.save(mlp_proto, tmp_path / "m.onnx")
    assert cli.main(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out"), "--bench-runs", "1"]) == 0
    out = capsys.readouterr().out
    phase_lines = [line for line in out.splitlines() if line.startswith("phase ")]
    assert [line.split()[1] for line in phase_lines][:2] == ["load", "samples"] and phase_lines[-1].split()[1] == "latency"
    assert all(line.endswith(" s") for line in phase_lines)
    assert cli.main(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    assert capsys.readouterr().out == ""


def test_report_shows_the_worst_layers_and_what_latency_measured(mlp_proto):
    from rich.console import Console

    from graphopt.report import WORST_LAYERS, render

    result = graphopt.compile(mlp_proto, passes="cleanup", bench_runs=2)
    report = result.report
    report.layers = [{"value": f"v{i}", "where": "w", "made_by": "p", "cosine": 1 - i / 100, "sqnr_db": 40.0, "max_abs": 0.1}
                     for i in range(30)]
    for verbose, rows in ((False, WORST_LAYERS), (True, 30)):
        console = Console(record=True, width=200)
        render(report, console, verbose=verbose)
        text = console.export_text()
        assert sum(f" v{i} " in text for i in range(30)) == rows
        assert " v29 " in text  # the worst is always shown
    assert "inputs x[1,4]" in text and report.host["cpu"] in text
