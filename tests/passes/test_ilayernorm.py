"""ilayernorm: float LayerNormalization -> Quantize / Cast / IntLayerNorm / Dequantize island."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx.inliner
import onnx.parser
import onnx_ir as ir
import pytest

from graphopt import testing
from graphopt.pipeline import run_pipeline
from graphopt.ops import int_layer_norm as iln
from graphopt.passes.ilayernorm import affine_plan

ISLAND = ["QuantizeLinear", "Cast", "IntLayerNorm", "DequantizeLinear"]
D = 32
_RNG = np.random.default_rng(testing.SEED)
GAMMA = _RNG.uniform(-1.5, 2.0, D).round(3)
BETA = _RNG.uniform(-0.5, 0.7, D).round(3)


def _floats(values) -> str:
    return ", ".join(repr(float(v)) for v in values)


def _model(opset: int = 21, axis: int = -1, shape: str = f"2, 7, {D}", dtype: str = "float", bias: bool = True,
           gamma=GAMMA, extra: str = "") -> str:
    inputs = "(x, g, b)" if bias else "(x, g)"
    inits = f"{dtype}[{D}] g = {{{_floats(gamma)}}}" + (f", {dtype}[{D}] b = {{{_floats(BETA)}}}" if bias else "")
    return f"""<ir_version: 10, opset_import: ["" : {opset}]>
g ({dtype}[{shape}] x{extra}) => ({dtype}[{shape}] y) <{inits}> {{
  y = LayerNormalization <axis = {axis}, epsilon = 1e-5> {inputs}
}}"""


def _samples(shape=(2, 7, D), count: int = 4, scale: float = 3.0):
    rng = np.random.default_rng(testing.SEED)
    return [{"x": (rng.standard_normal(shape) * scale).astype(np.float32)} for _ in range(count)]


def _run(text: str, pipeline: str = "ilayernorm", samples=None):
    proto = onnx.parser.parse_model(text)
    model = ir.serde.deserialize_model(proto)
    (record,) = run_pipeline(model, pipeline, samples=samples if samples is not None else _samples())
    return proto, model, record


def _float_layer_norm(x, gamma, beta, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


# ---- the reference -------------------------------------------------------------------------


def test_int_sqrt_is_exact_on_perfect_squares_in_its_range():
    roots = np.arange(187, 1 << 20, dtype=np.int64)  # 187² ≈ 2^15.1 ... 2^40
    np.testing.assert_array_equal(iln.int_sqrt(roots * roots), roots)


def test_int_sqrt_is_floor_sqrt_or_one_above_in_its_range():
    values = np.random.default_rng(testing.SEED).integers(34596, 1 << 45, 20000, dtype=np.int64)
    got = iln.int_sqrt(values)
    exact = np.array([math.isqrt(int(v)) for v in values])
    assert ((got == exact) | (got == exact + 1)).all()


def test_var_zero_rows_are_safe_and_give_the_bias():
    x = np.array([[7] * 8, [-32768] * 8, [0] * 8], dtype=np.int32)
    assert iln.int_sqrt(np.zeros(3, np.int64)).min() == 64  # k never reaches 0: no division by zero
    mult, bias = np.arange(1, 9, dtype=np.int32) * 1000, np.arange(8, dtype=np.int32) - 4
    with np.errstate(all="raise"):
        out = iln.int_layer_norm(x, mult, bias, shift=16)
    np.testing.assert_array_equal(out, np.broadcast_to(bias, x.shape))


def test_d_equal_one_gives_the_bias():
    out = iln.int_layer_norm(np.array([[5], [-127]], np.int32), np.array([1 << 15], np.int32), np.array([9], np.int32))
    np.testing.assert_array_equal(out, [[9], [9]])


@pytest.mark.parametrize(("bits", "atol"), [(16, 2e-3), (8, 0.1)])
def test_reference_is_close_to_float_layer_norm(bits, atol):
    rng = np.random.default_rng(testing.SEED)
    d = 384
    x = rng.standard_normal((16, d)) * 2 + 0.3
    gamma, beta = rng.uniform(-2, 2, d), rng.uniform(-1, 1, d)
    s_in = np.abs(x).max() / (2 ** (bits - 1) - 1)
    xq = np.round(x / s_in).astype(np.int32)
    mult, bias, shift, s_out = affine_plan(gamma.astype(np.float32), beta.astype(np.float32))
    got = iln.int_layer_norm(xq, mult, bias, shift).astype(np.float64) * s_out
    np.testing.assert_allclose(got, _float_layer_norm(x, gamma, beta), atol=atol)


def test_affine_plan_handles_tiny_zero_and_negative_gamma():
    gamma = np.array([4.8e-33, 0.0, -1.5e-9, 0.5, -0.7], np.float32)  # all-MiniLM-L6-v2's last LN has such γ
    beta = np.array([0.3, -0.2, 0.1, 0.0, 0.05], np.float32)
    mult, bias, shift, s_out = affine_plan(gamma, beta)
    assert np.abs(mult).max() <= 1 << 15 and np.abs(bias).max() < 1 << 30 and 0 <= shift <= 46
    n = np.array([-(1 << 30) + 1, 0, 1 << 29, (1 << 30) - 1, 12345], dtype=np.int64)[:, None] * np.ones(5, np.int64)
    out = (n * mult) // (1 << shift) + bias
    assert np.abs(out).max() < 2**31
    s_n = math.sqrt(5) / 2**30
    np.testing.assert_allclose(out * s_out, n * s_n * gamma + beta, atol=1e-3)


# ---- the pass ------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_rewrites_layer_norm_into_an_integer_island(bias):
    proto, model, record = _run(_model(bias=bias))
    assert record.modified and record.rewrites == {"ilayernorm": 1}
    assert testing.op_types(proto) == ["LayerNormalization"]
    assert testing.op_types(model) == ISLAND
    testing.assert_valid(model)
    q, cast, int_ln, dq = list(model.graph)
    assert q.inputs[2].const_value.dtype == ir.DataType.INT16 and cast.attributes.get_int("to") == ir.DataType.INT32
    assert [v.const_value.dtype for v in int_ln.inputs[1:]] == [ir.DataType.INT32, ir.DataType.INT32]
    assert int_ln.domain == "pkg.graphopt" and dq.inputs[1].const_value.numpy().shape == ()
    feeds = _samples(count=1)[0]
    expected = testing.run_ort(proto, feeds)[0]
    got = testing.run_ort(model, feeds)[0]
    np.testing.assert_allclose(got, expected, atol=2e-3)  # 16-bit input quantization error


def test_input_bits_8_and_percentile():
    proto, model, record = _run(_model(opset=17), "ilayernorm(input_bits=8, calibration=percentile, percentile=99.9)")
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
    expected = iln.int_layer_norm(xq, mult, bias, int_ln.attributes.get_int("shift")).astype(np.float32)
    expected *= dq.inputs[1].const_value.numpy()
    np.testing.assert_array_equal(testing.run_ort(model, {"x": x})[0], expected)


def test_island_body_is_integer_only():
    _, model, _ = _run(_model())
    proto = testing._proto(model)
    inlined = onnx.inliner.inline_local_functions(proto)
    inferred = onnx.shape_inference.infer_shapes(inlined, check_type=True, strict_mode=True)
    body = {o for n in inferred.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear") for o in n.output}
    body -= {n.output[0] for n in inferred.graph.node if n.op_type == "QuantizeLinear"}
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    assert body <= set(types), body - set(types)
    integer = {onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64}
    assert {types[name] for name in body} <= integer
    function = testing._proto(model).functions[0]
    assert "float" not in onnx.printer.to_text(function).lower()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (_model(axis=1), "is not the last axis"),
        (_model(dtype="double"), "not float32"),
        (_model(opset=17), "int16 QuantizeLinear needs opset >= 21"),
        (_model(bias=True, extra=", float[32] g"), "scale (γ) is not a constant"),
    ],
    ids=["axis", "double", "opset", "non-constant-scale"],
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
    samples = [{"x": np.zeros((2, 7, D), np.float32)}]
    proto, model, record = _run(_model(), samples=samples)
    assert not record.modified and any("calibrated range of x is 0.0; cannot pick a scale" in d for d in record.declines), record.declines


def test_gamma_with_zeros_is_fine():
    gamma = GAMMA.copy()
    gamma[:5] = 0.0
    proto, model, record = _run(_model(gamma=gamma))
    assert record.modified
    feeds = _samples(count=1)[0]
    np.testing.assert_allclose(testing.run_ort(model, feeds)[0], testing.run_ort(proto, feeds)[0], atol=2e-3)


# ---- real model ----------------------------------------------------------------------------


@pytest.mark.slow
def test_minilm_embeddings_keep_cosine():
    import graphopt
    minilm = pytest.importorskip("graphopt.models.minilm")
    proto = minilm.build()
    batch = minilm.tokenize(minilm.sentences()[:32], seq_len=128)
    samples = [{k: v[i : i + 1] for k, v in batch.items()} for i in range(32)]
    result = graphopt.compile(proto, passes="cleanup,opset-upgrade,layer-norm,ilayernorm", calib=samples, validate=False)
    assert testing.op_types(result.model).count("IntLayerNorm") == 13
    assert "LayerNormalization" not in testing.op_types(result.model)
    feeds = minilm.tokenize(minilm.sentences()[100:200], seq_len=128)
    before = minilm.mean_pool(testing.run_ort(proto, feeds)[0], feeds["attention_mask"])
    after = minilm.mean_pool(testing.run_ort(result.model, feeds)[0], feeds["attention_mask"])
    cosine = (before * after).sum(-1) / np.linalg.norm(before, axis=-1) / np.linalg.norm(after, axis=-1)
    assert cosine.mean() >= 0.995, cosine.mean()
