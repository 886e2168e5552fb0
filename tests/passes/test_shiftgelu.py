"""shiftgelu: float Gelu -> integer-only I-ViT ShiftGELU island; the ShiftGelu op's reference."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx.inliner
import onnx_ir as ir
import pytest

from graphopt import ops, testing
from graphopt.ops.shift_gelu import shift_gelu_reference
from graphopt.passes.shiftgelu import shiftgelu_constants

HEADER = '<ir_version: 10, opset_import: ["" : 20, "com.microsoft" : 1]>'
ISLAND = ["Constant", "Constant", "QuantizeLinear", "Cast", "ShiftGelu", "Constant", "DequantizeLinear"]


def model(body: str, x: str = "float[4, 32]", y: str | None = None) -> str:
    return f"{HEADER}\ng ({x} x) => ({y or x} y) {{\n{body}\n}}"


def _gelu(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _float_shiftgelu(x_float: np.ndarray, s: float, n: int = 23, row_max: int = 1) -> np.ndarray:
    x0, n_eff = shiftgelu_constants(s, n)
    q = np.clip(np.round(x_float / s), -127, 127).astype(np.int32)
    return shift_gelu_reference(q, x0=x0, n=n_eff, row_max=row_max).astype(np.float64) * s / 128


# --- reference properties ---------------------------------------------------------------------


@pytest.mark.parametrize("s", [0.02, 0.05, 0.1])
def test_reference_is_close_to_float_gelu(s):
    x = np.arange(-127, 128)[None] * s  # one row whose max is positive, as in a real activation
    err = np.abs(_float_shiftgelu(x, s, n=16, row_max=0) - _gelu(x))
    # x·σ(1.702x) vs erf GELU (≤ 0.02), the linear 2^f, the 8-bit σ and the input step
    assert err.max() < 0.02 * 127 * s
    assert err.mean() < 0.006 * 127 * s


def test_row_max_with_n23_is_ivit_accurate_for_small_ranges_only():
    s = 0.05  # row max 6.35: 2.455·m < 23, so no double clamp
    x = np.arange(-127, 128)[None] * s
    assert np.abs(_float_shiftgelu(x, s) - _gelu(x)).max() < 0.04 * 127 * s
    s = 0.1  # row max 12.7: x far below it has both exponents clamped at 2^-23, so σ = 1/2
    x = np.arange(-127, 128)[None] * s
    y = _float_shiftgelu(x, s)
    assert y[0, 0] == pytest.approx(x[0, 0] / 2, rel=0.02)
    assert np.abs(_float_shiftgelu(x, s, row_max=0) - _gelu(x)).max() < 0.02 * 127 * s


def test_reference_zero_at_zero_and_sign():
    rng = np.random.default_rng(testing.SEED)
    x = rng.integers(-127, 128, size=(8, 64)).astype(np.int32)
    x[:, 0] = 0
    y = shift_gelu_reference(x, x0=-8, n=23)
    assert (y[:, 0] == 0).all()
    assert (y[x > 0] >= 0).all() and (y[x < 0] <= 0).all()


@pytest.mark.parametrize("x0", [-1, -5, -8, -12, -60])
def test_reference_is_monotone_for_positive_x(x0):
    x = np.arange(0, 128, dtype=np.int32)[None]
    y = shift_gelu_reference(x, x0=x0, n=shiftgelu_constants(-1.0 / (1.702 * x0), 16)[1])
    assert (np.diff(y[0]) >= -0.05 * y[0, 1:]).all()  # "monotone-ish": dips of at most 5 %
    assert y[0, -1] >= y[0, 1]


def test_reference_row_with_negative_max_goes_to_zero():
    # I-ViT's m = row max would need e^{+1.702|m|}; the op clamps m at 0 and stays exact
    y = shift_gelu_reference(np.full((1, 4), -100, np.int32), x0=-8, n=23)
    assert (y == 0).all()


def test_n_is_lowered_for_small_scales():
    x0, n = shiftgelu_constants(1e-4, 23)
    assert x0 == math.floor(-1 / 1.702e-4) and n < 23 and 2 * (-x0) * 2**n < 2**31


# --- the pass -----------------------------------------------------------------------------------


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_becomes_an_integer_island(check, approximate):
    text = model(f'y = Gelu <approximate = "{approximate}"> (x)')
    result = check.fires(text, "shiftgelu(row_max=false, n=16)", ISLAND, rtol=0, atol=0.05)
    assert result.last.rewrites == {"shiftgelu": 1}
    nodes = list(result.model.graph)
    q, cast, sg, dq = nodes[2], nodes[3], nodes[4], nodes[6]
    assert sg.domain == ops.DOMAIN and cast.attributes.get_int("to") == ir.DataType.INT32
    s_in = float(q.inputs[1].const_value.numpy())
    assert q.inputs[2].const_value.numpy().dtype == np.int8
    assert float(dq.inputs[1].const_value.numpy()) == pytest.approx(s_in / 128, rel=1e-6)
    x0, n = shiftgelu_constants(s_in, 16)
    assert sg.attributes.get_int("x0") == x0 and sg.attributes.get_int("n") == n
    assert sg.attributes.get_int("row_max") == 0
    assert sg.attributes.get_int("out_bits") == 8


def test_island_matches_the_reference_bit_for_bit(check):
    text = model("y = Gelu (x)")
    result = check.run(text, "shiftgelu")
    feeds = check.feeds(result.original)
    got = testing.run_ort(result.model, feeds)[0]
    nodes = list(result.model.graph)
    s = float(nodes[2].inputs[1].const_value.numpy())
    q = np.clip(np.round(feeds["x"] / np.float32(s)), -128, 127).astype(np.int32)
    attrs = {k: nodes[4].attributes.get_int(k) for k in ("x0", "n", "out_bits")}
    expected = shift_gelu_reference(q, **attrs).astype(np.float32) * np.float32(s / 128)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)


def test_percentile_calibration_gives_a_smaller_scale(check):
    text = model("y = Gelu (x)", x="float[16, 256]")
    scale = {}
    for name, pipeline in (("minmax", "shiftgelu"), ("pct", "shiftgelu(calibration=percentile, percentile=99.0)")):
        result = check.run(text, pipeline)
        scale[name] = float(list(result.model.graph)[2].inputs[1].const_value.numpy())
    assert scale["pct"] < scale["minmax"]


def test_two_gelus_get_their_own_scales_and_fewer_input_bits_clip(check):
    text = model("a = Gelu (x)\n b = Mul (a, a)\n y = Gelu <approximate = \"tanh\"> (b)")
    result = check.fires(text, "shiftgelu(input_bits=6)", None, rtol=0, atol=1.0)
    assert result.last.rewrites == {"shiftgelu": 2}
    assert result.ops.count("ShiftGelu") == 2 and result.ops.count("Clip") == 2
    scales = [float(n.inputs[1].const_value.numpy()) for n in result.model.graph if n.op_type == "QuantizeLinear"]
    assert scales[0] != scales[1]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (model("y = Gelu (x)", x="double[4, 32]"), "ShiftGelu islands take float32 input; x is DOUBLE"),
        (model("y = Gelu (x)", x="float16[4, 32]"), "ShiftGelu islands take float32 input; x is FLOAT16"),
        (model("y = com.microsoft.Gelu (x)"), "Gelu is not in canonical form"),
        (model("z = Mul (x, x)\n y = Gelu (z)"), "calibrated range of z is 0.0"),
    ],
    ids=["double", "float16", "contrib", "zero-range"],
)
def test_declines_with_the_reason(check, text, reason):
    if "calibrated range" in reason:  # x·x with x = 0 everywhere: every captured value is 0
        text = text.replace("z = Mul (x, x)", "zero = Constant <value = float {0.0}> ()\n z = Mul (x, zero)")
    check.declines(text, "shiftgelu", reason)


def test_bad_options_are_rejected(check):
    with pytest.raises(Exception, match="option .calibration. of pass .shiftgelu. must be one of"):
        check.run(model("y = Gelu (x)"), "shiftgelu(calibration=mse)")
    with pytest.raises(Exception, match="input_bits"):
        check.run(model("y = Gelu (x)"), "shiftgelu(input_bits=17)")


def test_sixteen_bit_input_uses_an_int16_island(check):
    """The ivit preset's setting: int16 keeps the few large FFN activations and the small ones."""
    result = check.fires(model("y = Gelu (x)").replace('"" : 20', '"" : 21'), "shiftgelu(input_bits=16,row_max=false,n=8)", None, rtol=0, atol=0.05)
    quantize = next(n for n in result.model.graph if n.op_type == "QuantizeLinear")
    assert quantize.outputs[0].dtype == ir.DataType.INT16 and "Clip" not in result.ops


def test_sixteen_bit_input_needs_opset_21(check):
    check.declines(model("y = Gelu (x)"), "shiftgelu(input_bits=16)", "needs an int16 QuantizeLinear (opset >= 21)")


def test_the_op_body_is_integer_only(check):
    result = check.run(model("y = Gelu (x)"), "shiftgelu")
    testing.assert_valid(result.model)
    proto = ir.to_proto(result.model)  # attach_functions ran in assert_valid
    inlined = onnx.shape_inference.infer_shapes(onnx.inliner.inline_local_functions(proto), strict_mode=True)
    assert not any(n.domain == ops.DOMAIN for n in inlined.graph.node)
    types = {v.name: v.type.tensor_type.elem_type for v in inlined.graph.value_info}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    # every value between the Cast to int32 and the DequantizeLinear comes from the inlined body
    body_nodes = [n for n in inlined.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
    body_nodes = [n for n in body_nodes if not (n.op_type == "Constant" and types.get(n.output[0]) in floats)]
    outputs = [o for n in body_nodes for o in n.output]
    assert len(outputs) > 30
    missing = [o for o in outputs if o not in types]
    assert not missing, f"no inferred type for {missing}"
    assert not [o for o in outputs if types[o] in floats], "float value inside ShiftGelu"
    # and the function itself declares no float constant
    function = ops.get_op("ShiftGelu").function_proto
    assert all(a.t.data_type not in floats for n in function.node for a in n.attribute if a.HasField("t"))


# --- the real model -------------------------------------------------------------------------


def _minilm_cosine(options: str) -> float:
    import graphopt
    from graphopt.models import minilm

    proto = minilm.build()
    batch = minilm.tokenize(minilm.sentences()[:32], seq_len=128)
    samples = [{k: v[i : i + 1] for k, v in batch.items()} for i in range(32)]
    passes = "cleanup,opset-upgrade,gelu,shiftgelu" + options
    compiled = graphopt.compile(proto, passes=passes, calib=samples)
    assert compiled.report.passes[-1].rewrites == {"shiftgelu": 6}
    evaluation = minilm.tokenize(minilm.sentences()[100:200], seq_len=128)
    original = testing.run_ort(proto, evaluation)[0]
    rewritten = testing.run_ort(compiled.model, evaluation)[0]
    a = minilm.mean_pool(original, evaluation["attention_mask"])
    b = minilm.mean_pool(rewritten, evaluation["attention_mask"])
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return float(cos.mean())


# Measured (sentences()[100:200], 32 calibration rows): I-ViT defaults minmax 0.7495, percentile 0.9926;
# row_max=false: minmax 0.9777; percentile + row_max=false + n=16: 0.9952. (Percentile of |x| since
# the shared CalibrationOptions; the earlier max(|p(100-q)|, |p(q)|) gave 0.9929 and 0.9956.)
_IVIT_MISSES = "I-ViT defaults (row max, n=23) miss 0.995 on MiniLM: outliers blow up s, rows clamp (see op doc)"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("options", "floor"),
    [
        ("(calibration=percentile,row_max=false,n=16)", 0.995),
        ("(calibration=percentile)", 0.99),
        pytest.param("", 0.995, marks=pytest.mark.xfail(reason=_IVIT_MISSES, strict=True)),
    ],
    ids=["percentile-elementwise-n16", "ivit-percentile", "ivit-minmax"],
)
def test_minilm_embeddings_stay_close(options, floor):
    cosine = _minilm_cosine(options)
    print(f"shiftgelu{options} MiniLM mean cosine: {cosine:.5f}")
    assert cosine >= floor


def test_a_near_zero_range_declines_instead_of_overflowing_x0():
    """A MobileViT SiLU input calibrated to ~1e-20: x0 = floor(-1/(1.702 s)) would not fit int32."""
    import onnx.parser
    import onnx_ir as ir

    from graphopt.pipeline import run_pipeline

    text = """<ir_version: 10, opset_import: ["" : 21]>
g (float[2, 8] x) => (float[2, 8] y) {
    y = Gelu (x)
}"""
    work = ir.serde.deserialize_model(onnx.parser.parse_model(text))
    tiny = [{"x": np.full((2, 8), 1e-20, np.float32)}]
    record = run_pipeline(work, "shiftgelu", samples=tiny)[0]
    assert record.rewrites == {} and any("too small" in d for d in record.declines), record.declines
