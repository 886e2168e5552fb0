"""Per-layer error in the report: every quantized value vs the float value it stands for."""

from __future__ import annotations

import numpy as np
import onnx.parser

import graphopt

SOFTMAX = onnx.parser.parse_model('''<ir_version: 10, opset_import: ["" : 21]>
g (float[2, 16] x) => (float[2, 16] y) { y = Softmax(x) }''')


def _calib():
    rng = np.random.default_rng(0)
    return [{"x": (2 * rng.standard_normal((2, 16))).astype(np.float32)} for _ in range(4)]


def test_island_input_and_output_are_probed():
    result = graphopt.compile(SOFTMAX, passes="shiftmax", calib=_calib(), bench_runs=0)
    layers = {(e["value"], e["where"]): e for e in result.report.layers}
    assert set(layers) == {("x", "input of Shiftmax"), ("y", "output of Shiftmax")}
    assert layers[("x", "input of Shiftmax")]["cosine"] > 0.9999  # int8 rounding only
    assert 0.999 < layers[("y", "output of Shiftmax")]["cosine"] < 1.0
    assert all(e["made_by"] == "shiftmax" for e in result.report.layers)
    assert "per-layer error" in _rendered(result)


def test_chained_values_are_probed_at_their_integer_scale():
    result = graphopt.compile(SOFTMAX, passes="shiftmax,integer-chain", calib=_calib(), bench_runs=0)
    # the island's entry is a float graph input, so integer-chain keeps it; the probes stay
    assert {e["where"] for e in result.report.layers} == {"input of Shiftmax", "output of Shiftmax"}


def test_no_probes_without_quantization():
    result = graphopt.compile(SOFTMAX, passes="cleanup", calib=_calib(), bench_runs=0)
    assert result.report.layers == []


def _rendered(result) -> str:
    from rich.console import Console

    console = Console(record=True, width=200)
    result.print_report(console)
    return console.export_text()
