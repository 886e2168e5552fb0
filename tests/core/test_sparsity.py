"""graphopt.sparsity: each ActivationThreshold's achieved zeros on samples, its target, the parameters
its zeros let a kernel skip, and the parameter-weighted model-wide figure."""

from __future__ import annotations

import json

import numpy as np
import onnx.parser
import onnx_ir as ir
import pytest

from graphopt import testing
from graphopt.errors import UsageError
from graphopt.ops.threshold import SITE_KEY, TARGET_KEY
from graphopt.sparsity import SparsityReport, ThresholdedTensor, measure_sparsity


def _floats(count: int, seed: int) -> str:
    return "{" + ", ".join(f"{v:.4f}" for v in np.random.default_rng(seed).standard_normal(count)) + "}"


# q reads x thresholded at 0.5 (16x8 weight); a gated product thresholded at 0.2: W_up (8x16) makes
# the other factor, W_down (16x8) reads the product
MODEL = f"""
<ir_version: 10, opset_import: ["" : 20, "pkg.graphopt" : 1]>
m (float[N, 16] x, float[N, 8] v) => (float[N, 8] y, float[N, 8] z)
  <float t1 = {{0.5}}, float t2 = {{0.2}}, float[16, 8] wq = {_floats(128, 1)}, float[8, 16] wu = {_floats(128, 2)},
   float[16, 8] wd = {_floats(128, 3)}> {{
    xs = pkg.graphopt.ActivationThreshold(x, t1)
    y = MatMul(xs, wq)
    g = Tanh(x)
    gs = pkg.graphopt.ActivationThreshold(g, t2)
    u = MatMul(v, wu)
    h = Mul(gs, u)
    z = MatMul(h, wd)
}}
"""


def _model(targets: dict[str, float] | None = None) -> ir.Model:
    model = ir.serde.deserialize_model(onnx.parser.parse_model(MODEL))
    for node in model.graph:
        if node.op_type == "ActivationThreshold":
            site = node.inputs[0].name
            node.metadata_props[SITE_KEY] = site
            if targets is not None:
                node.metadata_props[TARGET_KEY] = repr(targets[site])
    return model


def _samples(count: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(testing.SEED)
    return [{"x": rng.standard_normal((5, 16)).astype(np.float32), "v": rng.standard_normal((5, 8)).astype(np.float32)}
            for _ in range(count)]


def test_achieved_sparsity_and_weights():
    samples = _samples()
    report = measure_sparsity(_model({"x": 0.4, "g": 0.2}), samples)
    x = np.concatenate([s["x"] for s in samples])
    expected_x = float(np.mean(np.abs(x) <= 0.5))
    expected_g = float(np.mean(np.abs(np.tanh(x)) <= np.float32(0.2)))
    assert [t.site for t in report.tensors] == ["x", "g"]
    first, second = report.tensors
    assert first.target == 0.4 and first.achieved == pytest.approx(expected_x) and first.weight == 16 * 8
    assert second.target == 0.2 and second.achieved == pytest.approx(expected_g) and second.weight == 8 * 16 + 16 * 8
    assert report.model_wide == pytest.approx((128 * expected_x + 256 * expected_g) / 384)
    assert report.target_model_wide == pytest.approx((128 * 0.4 + 256 * 0.2) / 384)


def test_as_dict_is_json_ready():
    report = measure_sparsity(_model({"x": 0.5, "g": 0.5}), _samples(1))
    data = json.loads(json.dumps(report.as_dict()))
    assert set(data) == {"tensors", "model_wide", "target_model_wide", "weight"}
    assert data["weight"] == 384 and data["target_model_wide"] == 0.5
    assert set(data["tensors"][0]) == {"site", "node", "target", "achieved", "weight"}


def test_the_model_is_left_as_it_was():
    model = _model({"x": 0.5, "g": 0.5})
    measure_sparsity(model, _samples(1))
    assert not model.functions and len(model.graph.outputs) == 2


def test_threshold_without_a_target():
    report = measure_sparsity(_model(), _samples(1))
    assert all(t.target is None for t in report.tensors)
    assert report.target_model_wide is None and report.model_wide is not None


def test_model_without_thresholds_gives_an_empty_report():
    proto = onnx.parser.parse_model('<ir_version: 10, opset_import: ["" : 20]>\nm (float[2] x) => (float[2] y) {\n y = Relu(x)\n}')
    report = measure_sparsity(proto, [{"x": np.ones(2, np.float32)}])
    assert report == SparsityReport(()) and report.model_wide is None and report.target_model_wide is None
    assert report.as_dict() == {"tensors": [], "model_wide": None, "target_model_wide": None, "weight": 0}


def test_no_samples_is_a_usage_error():
    with pytest.raises(UsageError, match="needs samples"):
        measure_sparsity(_model(), [])


def test_weighted_figure_ignores_weightless_and_unmeasured_tensors():
    report = SparsityReport((ThresholdedTensor("a", "n0", 0.5, 0.4, 100), ThresholdedTensor("b", "n1", 0.5, None, 50),
                             ThresholdedTensor("c", "n2", 0.5, 0.9, 0)))
    assert report.model_wide == pytest.approx(0.4)
    assert report.as_dict()["tensors"][1]["achieved"] is None
