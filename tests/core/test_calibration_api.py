"""One calibration API: shared options checked at parse time, ranges vs numpy, one "needs samples" error."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest

import graphopt
from graphopt import calibrate, testing
from graphopt.calibrate import HISTOGRAM_BINS, CalibrationOptions
from graphopt.errors import UsageError
from graphopt.pipeline import parse_pipeline
from graphopt.registry import get_pass
from graphopt.shapes import infer_shapes

CALIBRATED = ["imul", "int8-linear", "ilayernorm", "irmsnorm", "shiftgelu", "shiftmax", "shiftsilu"]
BAD = [
    ("input_bits=99", "option 'input_bits' of pass '{}' must be"),
    ("percentile=101", "option 'percentile' of pass '{}' must be between 50.0 and 100.0, got 101.0"),
    ("calibration=mse", "option 'calibration' of pass '{}' must be one of 'minmax', 'percentile', 'histogram', got 'mse'"),
]

# one candidate for every calibrated pass, all reading x
EVERY_CANDIDATE = """
<ir_version: 10, opset_import: ["" : 23, "pkg.graphopt" : 1]>
g (float[2, 8] x) => (float[2, 8] m, float[2, 8] ge, float[2, 8] sm, float[2, 8] ln, float[2, 8] rms,
                      float[2, 8] mm, float[2, 8] si)
  <float s = {0.05}, int16 z = {0}, float[8] gamma = {1, 1, 1, 1, 1, 1, 1, 1}, float[8] beta = {0, 0, 0, 0, 0, 0, 0, 0},
   float[8, 8] w = {1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0,
                    0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1}> {
    xq = QuantizeLinear (x, s, z)
    xd = DequantizeLinear (xq, s, z)
    m = Mul (xd, x)
    ge = Gelu (x)
    sm = Softmax (x)
    ln = LayerNormalization (x, gamma, beta)
    rms = RMSNormalization (x, gamma)
    mm = MatMul (x, w)
    si = pkg.graphopt.SigmoidLinearUnit (x)
}"""

RELU = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[4, 16] x) => (float[4, 16] y) {
    h = Mul (x, x)
    y = Sub (h, x)
}"""


def _model(text: str) -> ir.Model:
    return ir.serde.deserialize_model(onnx.parser.parse_model(text))


def _samples(count: int = 6) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(testing.SEED)
    return [{"x": (3 * rng.standard_normal((4, 16))).astype(np.float32)} for _ in range(count)]


# ---- options: one type, one check, exit 2 at parse time ---------------------------------------

@pytest.mark.parametrize("name", CALIBRATED)
def test_every_calibrated_pass_inherits_the_shared_options(name):
    spec = get_pass(name)
    assert issubclass(spec.options, CalibrationOptions)
    assert [f.name for f in dataclasses.fields(spec.options)][:3] == ["calibration", "percentile", "input_bits"]
    assert spec.options().calibration == "minmax" and spec.options().percentile == 99.99


@pytest.mark.parametrize("name", CALIBRATED)
@pytest.mark.parametrize(("option", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_calibration_options_are_usage_errors_through_the_api(name, option, message):
    with pytest.raises(UsageError) as parsed:
        parse_pipeline(f"{name}({option})").expand()
    assert message.format(name) in str(parsed.value)
    with pytest.raises(UsageError, match="option '(input_bits|percentile|calibration)' of pass"):
        graphopt.compile(onnx.parser.parse_model(RELU), passes=f"{name}({option})", validate=False)
    key, value = option.split("=")
    with pytest.raises(UsageError, match=f"option '{key}' of {get_pass(name).options.__name__} must be"):
        get_pass(name).options(**{key: float(value) if key == "percentile" else int(value) if key == "input_bits" else value})


def test_each_pass_keeps_its_input_bits_default_and_widths():
    defaults = {name: get_pass(name).options().input_bits for name in CALIBRATED}
    assert defaults == {"imul": 16, "int8-linear": 8, "ilayernorm": 16, "irmsnorm": 16, "shiftgelu": 8, "shiftmax": 8,
                        "shiftsilu": 8}
    with pytest.raises(UsageError, match="option 'input_bits' of pass 'shiftmax' must be 8, got 16"):
        parse_pipeline("shiftmax(input_bits=16)").expand()
    with pytest.raises(UsageError, match="option 'input_bits' of pass 'imul' must be one of 8, 16, got 12"):
        parse_pipeline("imul(input_bits=12)").expand()
    assert parse_pipeline("shiftgelu(input_bits=12,calibration=histogram,percentile=50)").expand()[0][1].input_bits == 12


@pytest.mark.parametrize("name", CALIBRATED)
def test_the_cli_exits_2_on_a_bad_calibration_option(tmp_path, name):
    onnx.save(onnx.parser.parse_model(RELU), tmp_path / "in.onnx")
    cli = os.path.join(os.path.dirname(sys.executable), "graphopt")
    result = subprocess.run([cli, "compile", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out"),
                             "--passes", f"{name}(input_bits=99)"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"option 'input_bits' of pass '{name}' must be" in result.stderr


# ---- ranges vs numpy ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def captured():
    samples = _samples()
    h = np.concatenate([(s["x"] * s["x"] - s["x"]).ravel() for s in samples]).astype(np.float64)  # Sub(Mul(x, x), x)
    return calibrate.calibrate(_model(RELU), samples, ["y"], pass_name="test"), h


def test_minmax_percentile_and_histogram_ranges_match_numpy(captured):
    calibration, h = captured
    a = np.abs(h)
    for p in (99.0, 99.9, 100.0):
        assert calibration.symmetric_range("y", CalibrationOptions(percentile=p)) == pytest.approx(a.max(), rel=1e-6)
        exact = calibration.symmetric_range("y", CalibrationOptions(calibration="percentile", percentile=p))
        assert exact == pytest.approx(np.percentile(a, p), rel=1e-6)
        read = calibration.symmetric_range("y", CalibrationOptions(calibration="histogram", percentile=p))
        counts, edges = np.histogram(a, bins=HISTOGRAM_BINS, range=(0.0, a.max()))
        expected = edges[min(int(np.argmax(np.cumsum(counts) >= p / 100 * a.size)) + 1, HISTOGRAM_BINS)]
        assert read == pytest.approx(expected, rel=1e-6)
        assert read <= a.max() * (1 + 1e-9)


def test_quantiles_histograms_and_scales_match_numpy(captured):
    calibration, h = captured
    for q in (0.0, 0.1, 0.5, 0.99, 1.0):
        assert calibration.quantile("y", q) == pytest.approx(np.quantile(h, q), rel=1e-6, abs=1e-9)
        assert calibration.quantile("y", q, absolute=True) == pytest.approx(np.quantile(np.abs(h), q), rel=1e-6, abs=1e-9)
    counts, edges = calibration.histogram("y", 64)
    expected_counts, expected_edges = np.histogram(h, bins=64, range=(h.min(), h.max()))
    np.testing.assert_array_equal(counts, expected_counts)
    np.testing.assert_allclose(edges, expected_edges, rtol=1e-6)
    scales = calibration.symmetric_scales(["y", "absent"], CalibrationOptions(input_bits=8))
    assert scales.get("y") == float(np.float32(np.abs(h).max() / 127))
    assert scales.get("absent") is None and scales.reason("absent") == "no calibration statistics for absent"
    with pytest.raises(TypeError):
        scales.found["y"] = 1.0  # read-only: rules get it as built


def test_ignore_below_leaves_mask_fills_out():
    x = np.array([[1.0, -2.0, np.finfo(np.float32).min, -np.inf, np.nan]], np.float32)
    calibration = calibrate.Calibration({"x": [x]}, ignore_below=-1e30)
    np.testing.assert_array_equal(calibration.values("x"), [1.0, -2.0])
    assert calibration.symmetric_range("x", CalibrationOptions()) == 2.0
    assert calibrate.Calibration({"x": [x[:, 2:]]}, ignore_below=-1e30).symmetric_range("x", CalibrationOptions()) is None


# ---- one "needs samples" check -----------------------------------------------------------------

@pytest.mark.parametrize("name", CALIBRATED)
def test_every_pass_asks_for_samples_with_the_same_message(name):
    spec = get_pass(name)
    the_pass = spec.cls(spec.make_options({}))
    model = _model(EVERY_CANDIDATE)
    infer_shapes(model)  # as the pipeline does before every pass
    assert the_pass.needs_calibration and the_pass.samples is None
    with pytest.raises(UsageError) as raised:
        the_pass.call(model)
    assert str(raised.value) == calibrate.needs_samples_message(name)
    assert str(raised.value).startswith(f"pass '{name}' needs calibration samples and got none: ")
