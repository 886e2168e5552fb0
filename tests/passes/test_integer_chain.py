"""integer-chain: each QuantizeLinear's float input becomes integer ops (DyadicRequant, Add, Clip, ...)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from graphopt import integer_region, testing
from graphopt.ops.dyadic_requant import dyadic_multiplier, dyadic_reference

HEADER = '<ir_version: 10, opset_import: ["" : 21]>'

# Two int32 tensors dequantized at their own scales, added in float, requantized to int16.
RESIDUAL = HEADER + """
g (int32[2, 8] a, int32[2, 8] b) => (float[2, 8] y) <float sa = {0.013}, float sb = {0.0041}, float s = {0.02}, int16 z = {0}> {
    fa = DequantizeLinear (a, sa)
    fb = DequantizeLinear (b, sb)
    sum = Add (fa, fb)
    q = QuantizeLinear (sum, s, z)
    q32 = Cast <to = 6> (q)
    y = DequantizeLinear (q32, s)
}"""

# A per-channel accumulator, reshaped, transposed and scaled by a constant, plus an additive mask
# built from an integer input in float (the attention score path), into an int8 quantize.
CHAIN_OK = HEADER + """
g (int32[2, 6] acc, int64[2, 6] keep) => (float[2, 6] y) <float[6] sc = {0.01, 0.02, 0.03, 0.04, 0.05, 0.06}, float half = {0.5}, float one = {1.0}, float fill = {-3.0e38}, float s = {0.05}, int8 z = {0}, int64[3] shape = {2, 3, 2}, int64[2] back = {2, 6}> {
    f = DequantizeLinear <axis = -1> (acc, sc)
    r = Reshape (f, shape)
    t = Transpose <perm = [0, 2, 1]> (r)
    scaled = Mul (t, half)
    u = Transpose <perm = [0, 2, 1]> (scaled)
    flat = Reshape (u, back)
    kf = Cast <to = 1> (keep)
    inv = Sub (one, kf)
    mask = Mul (inv, fill)
    logits = Add (flat, mask)
    q = QuantizeLinear (logits, s, z)
    y = DequantizeLinear (q, s)
}"""


def _run(text: str):
    original = onnx.parser.parse_model(text)
    model = ir.serde.deserialize_model(original)
    from graphopt.pipeline import run_pipeline  # noqa: PLC0415

    records = run_pipeline(model, "integer-chain")
    return original, model, records[-1]


def test_residual_add_becomes_integer_and_matches_the_spec_bit_exactly():
    original, model, record = _run(RESIDUAL)
    assert record.rewrites == {"integer-chain": 1}
    assert testing.op_types(model) == ["DyadicRequant", "DyadicRequant", "Add", "Clip", "DequantizeLinear"]
    testing.assert_valid(model)
    rng = np.random.default_rng(testing.SEED)
    feeds = {"a": rng.integers(-3000, 3000, (2, 8)).astype(np.int32), "b": rng.integers(-9000, 9000, (2, 8)).astype(np.int32)}
    got = testing.run_ort(model, feeds)[0]
    # the spec: DyadicRequant of each operand to the target scale, integer add, saturate to int16
    ma, ka = dyadic_multiplier(np.float64(np.float32(0.013)) / np.float64(np.float32(0.02)))
    mb, kb = dyadic_multiplier(np.float64(np.float32(0.0041)) / np.float64(np.float32(0.02)))
    expected = np.clip(dyadic_reference(feeds["a"], ma, ka) + dyadic_reference(feeds["b"], mb, kb), -32768, 32767)
    np.testing.assert_array_equal(got, expected.astype(np.float32) * np.float32(0.02))
    # and within a unit or so of the float graph's single rounding
    np.testing.assert_allclose(got, testing.run_ort(original, feeds)[0], atol=1.01 * 0.02)
    assert integer_region.verify(model).ok


def test_layout_ops_constant_scales_and_a_float_mask_lower():
    original, model, record = _run(CHAIN_OK)
    assert record.rewrites == {"integer-chain": 1}, record.declines
    ops = testing.op_types(model)
    # the mask's float Cast/Sub/Mul stay as preprocessing before its entry quantize; the score's
    # Mul by 0.5 folds into the per-channel accumulator's one DyadicRequant
    assert ops[:3] == ["Cast", "Sub", "Mul"] and ops.count("QuantizeLinear") == 1, ops
    assert ops.count("Mul") == 1 and ops.count("DyadicRequant") == 1
    testing.assert_valid(model)
    rng = np.random.default_rng(testing.SEED)
    feeds = {"acc": rng.integers(-200, 200, (2, 6)).astype(np.int32), "keep": rng.integers(0, 2, (2, 6)).astype(np.int64)}
    np.testing.assert_allclose(testing.run_ort(model, feeds)[0], testing.run_ort(original, feeds)[0], atol=1.01 * 0.05)
    verdict = integer_region.verify(model)
    assert verdict.ok, verdict.lines()
    assert {op.op_type for op in verdict.outside_float_ops} == {"Cast", "Sub", "Mul"}  # the mask, before its entry


def test_constant_mask_lowers_to_an_integer_where():
    text = HEADER + """
g (int32[2, 4] acc, bool[2, 4] keep) => (float[2, 4] y) <float sa = {0.1}, float zero = {0.0}, float fill = {-3.0e38}, float s = {0.05}, int8 z = {0}> {
    f = DequantizeLinear (acc, sa)
    mask = Where (keep, zero, fill)
    logits = Add (f, mask)
    q = QuantizeLinear (logits, s, z)
    y = DequantizeLinear (q, s)
}"""
    original, model, record = _run(text)
    assert testing.op_types(model) == ["DyadicRequant", "Where", "Add", "Clip", "Cast", "DequantizeLinear"]
    feeds = {"acc": np.arange(-4, 4, dtype=np.int32).reshape(2, 4) * 3, "keep": np.array([[1, 0, 1, 1], [0, 0, 1, 1]], bool)}
    np.testing.assert_array_equal(testing.run_ort(model, feeds)[0], testing.run_ort(original, feeds)[0])
    assert integer_region.verify(model).ok


@pytest.mark.parametrize(("body", "reason"), [
    ("    r = Relu (fa)\n    q = QuantizeLinear (r, s, z)", "comes from Relu, which has no integer lowering"),
    ("    q = QuantizeLinear (x, s, z)", "reads the float graph input 'x'"),
    ("    q = QuantizeLinear <axis = -1> (fa, sc, nzc)", "a nonzero zero point is supported per tensor only"),
    ("    p = Mul (fa, x)\n    q = QuantizeLinear (p, s, z)", "Mul by a non-constant or non-scalar factor"),
])
def test_declines_with_the_reason(check, body, reason):
    text = HEADER + f"""
g (int32[4] a, float[4] x) => (float[4] y) <float sa = {{0.1}}, float s = {{0.05}}, int8 z = {{0}}, float[4] sc = {{0.05, 0.05, 0.1, 0.1}}, int8[4] nzc = {{3, 0, 0, 1}}> {{
    fa = DequantizeLinear (a, sa)
{body}
    y = DequantizeLinear (q, s)
}}"""
    check.declines(text, "integer-chain", reason)


def test_per_tensor_zero_point_is_added_before_the_clip():
    """uint8 at zero point 128 (int8-linear's shifted operand of a uint8 x int8 MatMul): x/s + 128, saturated to 0..255."""
    text = HEADER + """
g (int32[6] a) => (float[6] y) <float sa = {0.1}, float s = {0.05}, uint8 z = {128}> {
    fa = DequantizeLinear (a, sa)
    q = QuantizeLinear (fa, s, z)
    y = DequantizeLinear (q, s, z)
}"""
    original, model, record = _run(text)
    assert testing.op_types(model) == ["DyadicRequant", "Add", "Clip", "Cast", "DequantizeLinear"]
    clip = next(n for n in model.graph if n.op_type == "Clip")
    assert clip.metadata_props["pkg.graphopt.zero_point"] == "128"
    feeds = {"a": np.array([-1000, -64, -1, 0, 63, 1000], np.int32)}  # saturates at both ends
    np.testing.assert_array_equal(testing.run_ort(model, feeds)[0], testing.run_ort(original, feeds)[0])
    testing.assert_valid(model)


def test_float_graph_input_read_through_a_concat_becomes_an_entry():
    """A decoder's KV cache: float past keys concatenated with the new (dequantized) keys."""
    text = HEADER + """
g (int32[2, 3] a, float[2, 5] past) => (float[2, 8] y, float[2, 8] present) <float sa = {0.1}, float s = {0.05}, int8 z = {0}> {
    fa = DequantizeLinear (a, sa)
    present = Concat <axis = 1> (past, fa)
    q = QuantizeLinear (present, s, z)
    y = DequantizeLinear (q, s)
}"""
    original, model, record = _run(text)
    assert record.rewrites == {"integer-chain": 1}, record.declines
    ops = testing.op_types(model)
    assert ops.count("QuantizeLinear") == 1 and "DyadicRequant" in ops  # the entry: past, at the target scale
    entry = next(n for n in model.graph if n.op_type == "QuantizeLinear")
    assert entry.inputs[0].name == "past" and entry.outputs[0].dtype == ir.DataType.INT16
    testing.assert_valid(model)
    verdict = integer_region.verify(model)
    assert verdict.ok, verdict.lines()
    rng = np.random.default_rng(testing.SEED)
    feeds = {"a": rng.integers(-60, 60, (2, 3)).astype(np.int32), "past": rng.standard_normal((2, 5)).astype(np.float32)}
    for got, expected in zip(testing.run_ort(model, feeds), testing.run_ort(original, feeds)):
        np.testing.assert_allclose(got, expected, atol=0.0501)


def test_per_channel_target_rescales_after_lowering():
    text = HEADER + """
g (int32[3, 4] a) => (float[3, 4] y) <float sa = {0.1}, float[4] s = {0.01, 0.02, 0.04, 0.08}, int8[4] z = {0, 0, 0, 0}> {
    fa = DequantizeLinear (a, sa)
    q = QuantizeLinear <axis = -1> (fa, s, z)
    y = DequantizeLinear <axis = -1> (q, s)
}"""
    original, model, record = _run(text)
    assert record.rewrites == {"integer-chain": 1}
    # the per-tensor requant to the finest scale and the per-channel rescale are one DyadicRequant
    assert testing.op_types(model) == ["DyadicRequant", "Clip", "Cast", "DequantizeLinear"]
    requant = next(iter(model.graph))
    m, k = (v.const_value.numpy() for v in requant.inputs[1:3])
    np.testing.assert_allclose(m * 2.0 ** -k.astype(float), float(np.float32(0.1)) / np.array([0.01, 0.02, 0.04, 0.08], np.float32).astype(float), rtol=2**-29)
    feeds = {"a": np.random.default_rng(testing.SEED).integers(-30, 30, (3, 4)).astype(np.int32)}
    np.testing.assert_allclose(testing.run_ort(model, feeds)[0], testing.run_ort(original, feeds)[0], atol=0.0801)
    testing.assert_valid(model)


def test_per_channel_rescale_of_a_shared_value_keeps_its_own_requant():
    """Does not fold: the finest-scale value is also quantized per tensor, so its requant stays
    and the per-channel target rescales it (two DyadicRequants)."""
    text = HEADER + """
g (int32[3, 4] a) => (float[3, 4] y, float[3, 4] y1) <float sa = {0.1}, float s0 = {0.01}, int8 z0 = {0}, float[4] s = {0.01, 0.02, 0.04, 0.08}, int8[4] z = {0, 0, 0, 0}> {
    fa = DequantizeLinear (a, sa)
    q1 = QuantizeLinear (fa, s0, z0)
    q = QuantizeLinear <axis = -1> (fa, s, z)
    y1 = DequantizeLinear (q1, s0)
    y = DequantizeLinear <axis = -1> (q, s)
}"""
    original, model, record = _run(text)
    assert record.rewrites == {"integer-chain": 2}
    assert testing.op_types(model).count("DyadicRequant") == 2
    feeds = {"a": np.random.default_rng(testing.SEED).integers(-30, 30, (3, 4)).astype(np.int32)}
    for got, expected in zip(testing.run_ort(model, feeds), testing.run_ort(original, feeds)):
        np.testing.assert_allclose(got, expected, atol=0.0801)
    testing.assert_valid(model)


# GPT-2's fused QKV: one dequantized projection split three ways, two outputs quantized; and a Pad
# whose fill value is a float constant.
SPLIT_PAD = HEADER + """
g (int32[2, 6] acc) => (float[2, 2] y0, float[2, 4] y2) <float s_acc = {0.01}, float s = {0.05}, int8 z = {0}, int64[3] parts = {2, 2, 2}, int64[4] pads = {0, 1, 0, 1}, float fill = {0.25}> {
    f = DequantizeLinear (acc, s_acc)
    q_part, k_part, v_part = Split <axis = 1> (f, parts)
    q0 = QuantizeLinear (q_part, s, z)
    y0 = DequantizeLinear (q0, s)
    padded = Pad (v_part, pads, fill)
    q2 = QuantizeLinear (padded, s, z)
    y2 = DequantizeLinear (q2, s)
}"""


def test_split_and_pad_are_carried_on_integer_tensors():
    original, model, record = _run(SPLIT_PAD)
    assert record.rewrites == {"integer-chain": 2}, record.declines
    ops = testing.op_types(model)
    assert ops.count("Split") == 1 and "Pad" in ops and "QuantizeLinear" not in ops
    testing.assert_valid(model)
    assert integer_region.verify(model).ok
    feeds = {"acc": np.random.default_rng(testing.SEED).integers(-500, 500, (2, 6)).astype(np.int32)}
    for got, want in zip(testing.run_ort(model, feeds), testing.run_ort(original, feeds)):
        np.testing.assert_allclose(got, want, atol=1.01 * 0.05)


def test_pad_with_a_nonzero_value_attribute_declines():
    text = '<ir_version: 8, opset_import: ["" : 10]>' + """
g (int32[2, 4] acc) => (float[2, 6] y) <float s_acc = {0.01}, float s = {0.05}, int8 z = {0}> {
    f = DequantizeLinear (acc, s_acc)
    padded = Pad <pads = [0, 1, 0, 1], value = 0.5> (f)
    q = QuantizeLinear (padded, s, z)
    y = DequantizeLinear (q, s)
}"""
    _, model, record = _run(text)
    assert record.rewrites == {} and any("nonzero 'value'" in d for d in record.declines), record.declines


# The region's last DequantizeLinear, then only layout ops to the graph output (SegFormer's
# Reshape -> Transpose back to [N, C, H, W]); a per-channel one and one a float op also reads stay.
OUTPUT_TAIL = HEADER + """
g (int32[1, 6, 4] acc, int32[1, 6, 4] other) => (float[1, 4, 3, 2] y, float[1, 4, 6] z, float[1, 24] w) <float s = {0.02}, float[6] sc = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6}, int64[4] shape = {1, 3, 2, 4}> {
    f = DequantizeLinear (acc, s)
    r = Reshape (f, shape)
    y = Transpose <perm = [0, 3, 1, 2]> (r)
    g = DequantizeLinear <axis = 1> (other, sc)
    z = Transpose <perm = [0, 2, 1]> (g)
    h = DequantizeLinear (other, s)
    w = Flatten (h)
    n = Neg (h)
}"""


def test_output_dequantize_sinks_below_layout_ops():
    """ORT's optimizer (levels basic and up) would turn DequantizeLinear(int32) -> Reshape into a QuantizeLinear
    to int32, which it cannot run: the layout ops carry the integers and the output is the DequantizeLinear's."""
    original, model, record = _run(OUTPUT_TAIL.replace("    n = Neg (h)\n", ""))
    assert record.rewrites == {"sink-dequantize": 2}, record.rewrites
    by_output = {v.name: v.producer() for v in model.graph.outputs}
    assert by_output["y"].op_type == "DequantizeLinear" and by_output["y"].inputs[0].producer().op_type == "Transpose"
    assert by_output["w"].op_type == "DequantizeLinear" and by_output["w"].inputs[0].producer().op_type == "Flatten"
    assert by_output["z"].op_type == "Transpose"  # per-channel on axis 1: the Transpose would move its axis
    testing.assert_valid(model)
    rng = np.random.default_rng(testing.SEED)
    feeds = {"acc": rng.integers(-2**20, 2**20, (1, 6, 4)).astype(np.int32),
             "other": rng.integers(-2**20, 2**20, (1, 6, 4)).astype(np.int32)}
    for got, expected in zip(testing.run_ort(model, feeds), testing.run_ort(original, feeds), strict=True):
        np.testing.assert_array_equal(got, expected)
    from graphopt.backends import ort  # noqa: PLC0415

    for level in ("basic", "all"):
        ort.run(ort.make_session(model.clone(), optimization=level), feeds)


def test_output_dequantize_also_read_by_a_float_op_stays():
    original, model, record = _run(OUTPUT_TAIL.replace("float[1, 24] w) <", "float[1, 24] w, float[1, 6, 4] n) <"))
    assert record.rewrites == {"sink-dequantize": 1}, record.rewrites  # y's tail only; h also feeds Neg
    assert next(v for v in model.graph.outputs if v.name == "w").producer().op_type == "Flatten"


def _resize_model(attrs: str, out_shape: str, sizes: str) -> str:
    return HEADER + f"""
g (int32[1, 2, 3, 4] acc) => (float{out_shape} y) <float s = {{0.02}}, float t = {{0.03}}, int8 z = {{0}}, int64[4] sizes = {sizes}> {{
    f = DequantizeLinear (acc, s)
    r = Resize <{attrs}> (f, , , sizes)
    q = QuantizeLinear (r, t, z)
    y = DequantizeLinear (q, t)
}}"""


@pytest.mark.parametrize(
    ("attrs", "out_shape", "sizes", "gathers"),
    [
        ('mode = "linear"', "[1, 2, 6, 8]", "{1, 2, 6, 8}", 4),  # 2x bilinear (half_pixel): weights 1/4, 3/4
        ('mode = "linear"', "[1, 2, 1, 2]", "{1, 2, 1, 2}", 3),  # MobileViT's fold back: a 2x2 -> 1x1 average
        ('mode = "linear", coordinate_transformation_mode = "align_corners"', "[1, 2, 5, 7]", "{1, 2, 5, 7}", 4),
        ('mode = "nearest", coordinate_transformation_mode = "asymmetric", nearest_mode = "floor"', "[1, 2, 6, 2]",
         "{1, 2, 6, 2}", 2),
    ],
    ids=["bilinear-up", "bilinear-down", "align-corners", "nearest"],
)
def test_resize_lowers_to_gathers_and_one_requant(attrs, out_shape, sizes, gathers):
    """Resize is linear: Gather the taps per axis, Σ w·2^k·x in int32, one DyadicRequant by 2^-Σk (exact
    dyadic weights): two roundings where the float graph has one, so within 1.5 units of t."""
    original, model, record = _run(_resize_model(attrs, out_shape, sizes))
    assert record.rewrites == {"integer-chain": 1}, record.declines
    ops = testing.op_types(model)
    assert "Resize" not in ops and ops.count("Gather") == gathers, ops
    # the dequantize's rescale to t (read by the Gathers), and for linear the weights' 2^-Σk
    assert ops.count("DyadicRequant") == (2 if "linear" in attrs else 1)
    testing.assert_valid(model)
    rng = np.random.default_rng(testing.SEED)
    feeds = {"acc": rng.integers(-200, 200, (1, 2, 3, 4)).astype(np.int32)}
    np.testing.assert_allclose(testing.run_ort(model, feeds)[0], testing.run_ort(original, feeds)[0], atol=1.51 * 0.03)
    assert integer_region.verify(model).ok


def test_resize_with_non_dyadic_weights_declines():
    """3 -> 5 rows (half_pixel): weights in fifths are not multiples of a power of two."""
    original, model, record = _run(_resize_model('mode = "linear"', "[1, 2, 5, 4]", "{1, 2, 5, 4}"))
    assert not record.rewrites
    assert any("Resize weights are not multiples of 2^-12" in d for d in record.declines), record.declines


def _pre_norm_residual_stream(layers: int) -> str:
    """x_l = x_(l-1) + f_l, quantized at a coarser scale before each "layer" (a pre-LN transformer's
    residual stream: every layer's norm reads the running sum)."""
    inputs = ", ".join(f"int32[2, 8] a{i}" for i in range(layers + 1))
    outputs = ", ".join(f"float[2, 8] y{i}" for i in range(1, layers + 1))
    consts = ", ".join([f"float sa{i} = {{{0.004 + 0.001 * i}}}" for i in range(layers + 1)]
                       + [f"float s{i} = {{{0.02 * 1.3 ** i:.6f}}}" for i in range(1, layers + 1)] + ["int16 z = {0}"])
    body = [f"f{i} = DequantizeLinear (a{i}, sa{i})" for i in range(layers + 1)] + ["x0 = Identity (f0)"]
    for i in range(1, layers + 1):
        body += [f"x{i} = Add (x{i - 1}, f{i})", f"q{i} = QuantizeLinear (x{i}, s{i}, z)", f"y{i} = DequantizeLinear (q{i}, s{i})"]
    return HEADER + f"\ng ({inputs}) => ({outputs}) <{consts}> {{\n    " + "\n    ".join(body) + "\n}"


def test_a_residual_stream_reuses_its_finer_lowering_instead_of_rebuilding_the_sum():
    # ViT-S/16's ivit graph had 481 DyadicRequants (every layer re-lowered the whole stream at its
    # own scale: O(layers²)); each sum now takes one requant from its previous, finer lowering
    layers = 6
    original, model, record = _run(_pre_norm_residual_stream(layers))
    assert record.rewrites == {"integer-chain": layers}, record.declines
    ops = testing.op_types(model)
    # per layer: the new term's requant and, from the second on, the running sum's: 2·layers, not layers·(layers+3)/2
    assert ops.count("DyadicRequant") == 2 * layers and ops.count("Add") == layers, ops
    testing.assert_valid(model)
    rng = np.random.default_rng(testing.SEED)
    feeds = {f"a{i}": rng.integers(-3000, 3000, (2, 8)).astype(np.int32) for i in range(layers + 1)}
    got, expected = testing.run_ort(model, feeds), testing.run_ort(original, feeds)
    for i, (g, e) in enumerate(zip(got, expected, strict=True), start=1):  # a unit per rounding on the way
        np.testing.assert_allclose(g, e, atol=(i + 1) * 0.02 * 1.3 ** i)
    assert integer_region.verify(model).ok


def test_a_sum_read_at_a_finer_scale_than_before_is_lowered_afresh():
    # reusing a coarser lowering would lose precision: the stream is rebuilt at the finer scale
    text = _pre_norm_residual_stream(2).replace("float s2 = {0.033800}", "float s2 = {0.0045}")
    original, model, record = _run(text)
    assert record.rewrites == {"integer-chain": 2}, record.declines
    assert testing.op_types(model).count("DyadicRequant") == 5  # 2 for x1; 3 for x2 at its own scale
    feeds = {f"a{i}": np.full((2, 8), 1000 * (i + 1), np.int32) for i in range(3)}
    np.testing.assert_allclose(testing.run_ort(model, feeds)[1], testing.run_ort(original, feeds)[1], atol=2 * 0.0045)
