"""irmsnorm: float RMSNormalization -> Quantize / Cast / IntLayerNorm(center=0) / Dequantize island."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.inliner
import onnx.parser
import onnx_ir as ir
import pytest

from graphopt import testing
from graphopt.ops import int_layer_norm as iln
from graphopt.passes.ilayernorm import affine_plan
from graphopt.pipeline import run_pipeline

ISLAND = ["QuantizeLinear", "Cast", "IntLayerNorm", "DequantizeLinear"]
D = 32
GAMMA = np.random.default_rng(testing.SEED).uniform(-1.5, 2.0, D).round(3)


def _floats(values) -> str:
    return ", ".join(repr(float(v)) for v in values)


def _model(opset: int = 23, axis: int = -1, shape: str = f"2, 7, {D}", dtype: str = "float", extra: str = "") -> str:
    return f"""<ir_version: 10, opset_import: ["" : {opset}]>
g ({dtype}[{shape}] x{extra}) => ({dtype}[{shape}] y) <{dtype}[{D}] g = {{{_floats(GAMMA)}}}> {{
  y = RMSNormalization <axis = {axis}, epsilon = 1e-6> (x, g)
}}"""


def _samples(shape=(2, 7, D), count: int = 4, scale: float = 3.0, offset: float = 0.5):
    rng = np.random.default_rng(testing.SEED)
    return [{"x": (rng.standard_normal(shape) * scale + offset).astype(np.float32)} for _ in range(count)]


def _run(text: str, pipeline: str = "irmsnorm", samples=None):
    proto = onnx.parser.parse_model(text)
    model = ir.serde.deserialize_model(proto)
    (record,) = run_pipeline(model, pipeline, samples=samples if samples is not None else _samples())
    return proto, model, record


# ---- the reference (center=0) ----------------------------------------------------------------


def test_reference_is_close_to_float_rms_norm():
    rng = np.random.default_rng(testing.SEED)
    x = rng.standard_normal((16, 384)) * 2 + 0.7  # a mean far from 0: RMSNorm must not subtract it
    gamma = rng.uniform(-2, 2, 384)
    s_in = np.abs(x).max() / 32767
    mult, bias, shift, s_out = affine_plan(gamma.astype(np.float32), np.zeros(384, np.float32))
    got = iln.int_layer_norm(np.round(x / s_in).astype(np.int32), mult, bias, shift, center=0) * s_out
    expected = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * gamma
    np.testing.assert_allclose(got, expected, atol=2e-3)


def test_center_0_zero_rows_give_zero_and_center_1_is_unchanged():
    x = np.array([[0] * 8, [7] * 8, [-32768] * 8], dtype=np.int32)
    mult, bias = np.arange(1, 9, dtype=np.int32) * 1000, np.zeros(8, np.int32)
    with np.errstate(all="raise"):
        rms = iln.int_layer_norm(x, mult, bias, shift=16, center=0)
    np.testing.assert_array_equal(rms[0], 0)  # var = 0: no division by zero, y = 0
    assert (rms[1] > 0).all() and (rms[2] < 0).all()  # constant non-zero rows keep their sign (no mean)
    np.testing.assert_array_equal(iln.int_layer_norm(x, mult, bias, 16), iln.int_layer_norm(x, mult, bias, 16, center=1))


# ---- the pass ------------------------------------------------------------------------------


def test_rewrites_rms_norm_into_an_integer_island():
    proto, model, record = _run(_model())
    assert record.modified and record.rewrites == {"irmsnorm": 1}
    assert testing.op_types(proto) == ["RMSNormalization"]
    assert testing.op_types(model) == ISLAND
    testing.assert_valid(model)
    q, cast, int_ln, dq = list(model.graph)
    assert q.inputs[2].const_value.dtype == ir.DataType.INT16 and cast.attributes.get_int("to") == ir.DataType.INT32
    assert int_ln.domain == "pkg.graphopt" and int_ln.attributes.get_int("center") == 0
    np.testing.assert_array_equal(int_ln.inputs[2].const_value.numpy(), 0)
    feeds = _samples(count=1)[0]
    np.testing.assert_allclose(testing.run_ort(model, feeds)[0], testing.run_ort(proto, feeds)[0], atol=2e-3)


def test_input_bits_8_and_percentile():
    proto, model, record = _run(_model(), "irmsnorm(input_bits=8, calibration=percentile, percentile=99.9)")
    assert record.modified and testing.op_types(model) == ISLAND
    assert next(iter(model.graph)).inputs[2].const_value.dtype == ir.DataType.INT8
    testing.assert_valid(model)
    feeds = _samples(count=1)[0]
    np.testing.assert_allclose(testing.run_ort(model, feeds)[0], testing.run_ort(proto, feeds)[0], atol=0.15)


def test_reference_matches_island_bit_for_bit_through_ort():
    proto, model, _ = _run(_model())
    q, _, int_ln, dq = list(model.graph)
    x = _samples(count=1)[0]["x"]
    s_in = float(q.inputs[1].const_value.numpy())
    xq = np.clip(np.round(x / np.float32(s_in)), -32768, 32767).astype(np.int32)  # QuantizeLinear: half to even
    mult, bias = (v.const_value.numpy() for v in int_ln.inputs[1:])
    expected = iln.int_layer_norm(xq, mult, bias, int_ln.attributes.get_int("shift"), center=0).astype(np.float32)
    expected *= dq.inputs[1].const_value.numpy()
    np.testing.assert_array_equal(testing.run_ort(model, {"x": x})[0], expected)


def test_island_body_is_integer_only():
    _, model, _ = _run(_model())
    inlined = onnx.inliner.inline_local_functions(testing._proto(model))
    inferred = onnx.shape_inference.infer_shapes(inlined, check_type=True, strict_mode=True)
    body = {o for n in inferred.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear") for o in n.output}
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    assert body <= set(types), body - set(types)
    assert {types[name] for name in body} <= {onnx.TensorProto.INT32, onnx.TensorProto.INT64}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (_model(axis=1), "is not the last axis"),
        (_model(dtype="double"), "not float32"),
        (_model(extra=", float[32] g"), "scale (γ) is not a constant"),
    ],
    ids=["axis", "double", "non-constant-scale"],
)
def test_does_not_fire(text, reason):
    samples = _samples()
    if "double" in text:
        samples = [{"x": s["x"].astype(np.float64)} for s in samples]
    if "float[32] g)" in text:
        samples = [dict(s, g=GAMMA.astype(np.float32)) for s in samples]
    proto, model, record = _run(text, samples=samples)
    assert not record.modified and testing.op_types(model) == testing.op_types(proto)
    assert any(reason in d for d in record.declines), record.declines


def test_does_not_fire_without_a_calibrated_range():
    proto, model, record = _run(_model(), samples=[{"x": np.zeros((2, 7, D), np.float32)}])
    assert not record.modified and any("calibrated range of x is 0.0; cannot pick a scale" in d for d in record.declines), record.declines


def test_after_rms_norm_canonicalization_on_a_decomposed_norm():
    text = f"""<ir_version: 10, opset_import: ["" : 23]>
g (float[2, 7, {D}] x) => (float[2, 7, {D}] y) <float[{D}] g = {{{_floats(GAMMA)}}}, float two = {{2.0}}, float eps = {{1e-6}},
                                              int64[1] axes = {{-1}}> {{
  sq = Pow(x, two)
  ms = ReduceMean <keepdims = 1> (sq, axes)
  ad = Add(ms, eps)
  r = Sqrt(ad)
  inv = Reciprocal(r)
  n = Mul(x, inv)
  y = Mul(n, g)
}}"""
    proto = onnx.parser.parse_model(text)
    model = ir.serde.deserialize_model(proto)
    records = run_pipeline(model, "rms-norm,irmsnorm", samples=_samples())
    assert records[-1].rewrites == {"irmsnorm": 1} and testing.op_types(model) == ISLAND
    testing.assert_valid(model)
    feeds = _samples(count=1)[0]
    np.testing.assert_allclose(testing.run_ort(model, feeds)[0], testing.run_ort(proto, feeds)[0], atol=2e-3)
