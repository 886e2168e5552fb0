"""shiftmax: float Softmax(last axis) -> int8 island around the integer-only I-ViT Shiftmax op."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx.inliner
import onnx.parser
import onnx.shape_inference
import onnx_ir as ir
import pytest

from graphopt import ops, testing
from graphopt.ops.shiftmax import SHIFTMAX_OP, shiftmax_reference
from graphopt.calibrate import Calibration
from graphopt.errors import UsageError
from graphopt.passes.shiftmax import MASK_FILL, ShiftmaxOptions, input_scale
from graphopt.pipeline import run_pipeline

INTEGER_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
                 onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64,
                 onnx.TensorProto.BOOL}


def model(body: str, x: str = "float[2, 4, 16]", y: str | None = None, opset: int = 23) -> str:
    return f'<ir_version: 10, opset_import: ["" : {opset}]>\ng ({x} x) => ({y or x} y) {{\n{body}\n}}'


def samples(shape=(2, 4, 16), scale=3.0, count=8, dtype=np.float32):
    rng = np.random.default_rng(testing.SEED)
    return [{"x": (scale * rng.standard_normal(shape)).astype(dtype)} for _ in range(count)]


def rewrite(text: str, pipeline: str = "shiftmax", calib=None):
    original = onnx.parser.parse_model(text)
    work = ir.serde.deserialize_model(original)
    records = run_pipeline(work, pipeline, samples=samples() if calib is None else calib)
    return original, work, records[-1]


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def cosine(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# ---- the reference (the spec) ----------------------------------------------------------------

@pytest.mark.parametrize("out_bits", [8, 16])
def test_rows_sum_to_one_in_output_units(out_bits):
    rng = np.random.default_rng(testing.SEED)
    x = rng.integers(-128, 128, (64, 128)).astype(np.int32)
    y = shiftmax_reference(x, x0=-13, n=15, out_bits=out_bits)
    assert y.dtype == np.int32 and y.min() >= 0 and y.max() <= 2 ** (out_bits - 1) - 1
    one = 2 ** (out_bits - 1)
    # every element floors once: the deficit is at most one unit per element (plus f's flooring)
    assert np.all(y.sum(-1) <= one) and np.all(y.sum(-1) >= one - x.shape[-1] - 1)


def test_monotone_in_the_input():
    rng = np.random.default_rng(testing.SEED)
    x = np.sort(rng.integers(-128, 128, (32, 40)), axis=-1).astype(np.int32)
    y = shiftmax_reference(x, x0=-10, n=15, out_bits=16)
    assert np.all(np.diff(y, axis=-1) >= 0)
    bumped = x.copy()
    bumped[:, 5] += 3  # raising one logit never lowers its probability
    assert np.all(shiftmax_reference(bumped, x0=-10)[:, 5] >= y[:, 5])


@pytest.mark.parametrize("scale", [0.02, 0.05, 0.1, 0.2])
def test_matches_float_softmax_within_the_quantization_error(scale):
    rng = np.random.default_rng(testing.SEED)
    x = rng.integers(-128, 128, (64, 32)).astype(np.int32)
    y = shiftmax_reference(x, x0=math.floor(-1 / scale), n=15, out_bits=16) / 2**15
    exact = softmax(x * scale)
    # 2^(r) ~ r/2 + 1 is off by up to ~6% relative; log2(e) ~ 1.4375 adds ~0.3% per unit of range
    assert np.abs(y - exact).max() < 0.06
    assert cosine(y, exact) > 0.995


def test_equal_rows_and_single_elements():
    y = shiftmax_reference(np.full((3, 8), 7, np.int32), x0=-10, out_bits=16)
    assert np.all(y == y[0, 0]) and abs(int(y[0].sum()) - 2**15) <= 8
    assert np.all(shiftmax_reference(np.array([[-128], [127]], np.int32), x0=-10, out_bits=8) == 127)


def test_reference_rejects_bad_attributes():
    with pytest.raises(ValueError, match="x0 <= -1"):
        shiftmax_reference(np.zeros((1, 2), np.int32), x0=0)


def test_op_body_is_integer_only():
    """Shape-infer a one-node model with the function inlined: every value is an integer tensor."""
    x0 = -13
    node = onnx.helper.make_node("Shiftmax", ["x"], ["y"], domain=ops.DOMAIN, x0=x0, n=15, out_bits=16,
                                 mask_below=-127)
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.INT32, [2, 5])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.INT32, [2, 5])])
    function = SHIFTMAX_OP.function_proto
    for opset in function.opset_import:  # a function imports the model's version of a shared domain
        opset.version = 23 if opset.domain == "" else opset.version
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 23),
                                                         onnx.helper.make_opsetid(ops.DOMAIN, ops.OPSET_VERSION)],
                                   functions=[function])
    proto.ir_version = 10
    inlined = onnx.inliner.inline_local_functions(proto)
    assert all(n.domain in ("", "ai.onnx") for n in inlined.graph.node) and len(inlined.graph.node) > 20
    inferred = onnx.shape_inference.infer_shapes(inlined, strict_mode=True)
    values = list(inferred.graph.value_info) + list(inferred.graph.output)
    produced = {o for n in inlined.graph.node for o in n.output}
    assert produced <= {v.name for v in values}, "shape inference left values untyped"
    floats = [v.name for v in values if v.type.tensor_type.elem_type not in INTEGER_TYPES]
    assert floats == []


# ---- the pass ---------------------------------------------------------------------------------

def test_softmax_becomes_the_island(check):
    original, work, record = rewrite(model("y = Softmax<axis = -1>(x)"))
    assert record.modified and record.rewrites == {"shiftmax": 1}
    assert testing.op_types(work) == ["QuantizeLinear", "Cast", "Shiftmax", "DequantizeLinear"]
    node = work.graph.node(2)
    assert (node.domain, node.op_type) == (ops.DOMAIN, "Shiftmax")
    calib = np.concatenate([s["x"].ravel() for s in samples()])
    s_in = np.abs(calib).max() / 127
    assert node.attributes.get_int("x0") == math.floor(-1 / np.float32(s_in))
    assert node.attributes.get_int("n") == 15 and node.attributes.get_int("out_bits") == 16
    quant = work.graph.node(0)
    assert quant.inputs[1].const_value.numpy() == pytest.approx(s_in, rel=1e-6)
    assert quant.inputs[2].const_value.dtype == ir.DataType.INT8
    assert work.graph.node(3).inputs[1].const_value.numpy() == 2.0**-15
    testing.assert_valid(work)
    # numerics: seeded inputs through ORT (optimizations off) vs the float Softmax
    feeds = samples(count=1)[0]
    (expected,), (got,) = testing.run_ort(original, feeds), testing.run_ort(work, feeds)
    assert cosine(got, expected) > 0.995 and np.abs(got - expected).max() < 0.05
    # the island's integer part is exactly the reference
    q = np.clip(np.round(feeds["x"] / np.float32(s_in)), -128, 127).astype(np.int32)
    np.testing.assert_array_equal(got, (shiftmax_reference(q, x0=node.attributes.get_int("x0")) * 2.0**-15).astype(np.float32))


def test_options_reach_the_op_and_the_output_scale():
    _, work, record = rewrite(model("y = Softmax(x)"), "shiftmax(n=16,out_bits=8,calibration=percentile,percentile=99.0)")
    node = work.graph.node(2)
    assert node.attributes.get_int("n") == 16 and node.attributes.get_int("out_bits") == 8
    assert work.graph.node(3).inputs[1].const_value.numpy() == 2.0**-7
    calib = np.abs(np.concatenate([s["x"].ravel() for s in samples()]))
    assert work.graph.node(0).inputs[1].const_value.numpy() == pytest.approx(np.percentile(calib, 99.0) / 127, rel=1e-6)


def test_explicit_last_axis_and_graph_with_other_readers():
    body = "p = Softmax<axis = 2>(x)\n y = Add(p, x)"
    original, work, record = rewrite(model(body))
    assert testing.op_types(work) == ["QuantizeLinear", "Cast", "Shiftmax", "DequantizeLinear", "Add"]
    testing.assert_valid(work)
    feeds = samples(count=1)[0]
    np.testing.assert_allclose(testing.run_ort(work, feeds)[0], testing.run_ort(original, feeds)[0], atol=0.05)


def test_mask_fills_are_left_out_of_calibration():
    rng = np.random.default_rng(testing.SEED)
    x = (6 * rng.standard_normal((4, 16))).astype(np.float32)  # attention-score-like range
    x[:, 8:] = np.finfo(np.float32).min  # half of every row masked, as in padded attention
    options = ShiftmaxOptions()
    calibration = Calibration({"x": [x], "inf": [np.full((2, 2), -np.inf, np.float32)]}, ignore_below=MASK_FILL)
    assert input_scale(calibration, "x", options) == pytest.approx(np.abs(x[:, :8]).max() / 127)
    assert input_scale(calibration, "inf", options) is None
    text = model("y = Softmax(x)", x="float[4, 16]")
    original, work, _ = rewrite(text, calib=[{"x": x}])
    (expected,), (got,) = testing.run_ort(original, {"x": x}), testing.run_ort(work, {"x": x})
    # masked logits saturate to -128: with this range they fall n halvings below the row max -> 0.
    # (With a narrow range, -128 is not far enough below the max: see the pass docstring.)
    assert np.all(got[:, 8:] == 0) and cosine(got, expected) > 0.995


def _causal_small_scores():
    rng = np.random.default_rng(testing.SEED)
    scores = (0.03 * rng.standard_normal((4, 16, 16))).astype(np.float32)  # a random-init LLaMA's scores
    return np.where(np.tril(np.ones((16, 16), bool)), scores, np.finfo(np.float32).min).astype(np.float32)


def test_mask_option_gives_mask_fills_probability_zero_with_small_scores():
    x = _causal_small_scores()
    text = model("y = Softmax(x)", x="float[4, 16, 16]")
    original, plain, _ = rewrite(text, calib=[{"x": x}])
    _, masked, record = rewrite(text, "shiftmax(mask=true)", calib=[{"x": x}])
    assert record.modified and masked.graph.node(2).attributes.get_int("mask_below") == -127
    assert plain.graph.node(2).attributes.get_int("mask_below") == -(2**31)  # default: I-ViT's op, nothing masked
    testing.assert_valid(masked)
    expected = testing.run_ort(original, {"x": x})[0]
    got_plain, got = testing.run_ort(plain, {"x": x})[0], testing.run_ort(masked, {"x": x})[0]
    upper = ~np.broadcast_to(np.tril(np.ones((16, 16), bool)), x.shape)
    assert got_plain[upper].max() > 0.01  # -128·s is only ~0.1 below the row max: the mask leaks
    assert np.all(got[upper] == 0) and cosine(got, expected) > cosine(got_plain, expected)


def test_mask_leaves_one_element_rows_alone():
    """MobileViT's last stage attends over one patch: a score below the calibrated minimum saturates
    to -128 there, which is no mask fill: that row's probability stays 1."""
    rng = np.random.default_rng(testing.SEED)
    calib = [{"x": rng.standard_normal((2, 4, 1)).astype(np.float32)} for _ in range(4)]
    text = model("y = Softmax(x)", x="float[2, 4, 1]")
    original, work, record = rewrite(text, "shiftmax(mask=true)", calib=calib)
    assert record.modified and work.graph.node(2).attributes.get_int("mask_below") == -(2**31)
    below = {"x": np.full((2, 4, 1), -100.0, np.float32)}  # far below anything calibrated
    np.testing.assert_array_equal(testing.run_ort(original, below)[0], 1.0)
    np.testing.assert_allclose(testing.run_ort(work, below)[0], 1.0, atol=1e-3)  # the op's output rounding


def test_fit_n_lowers_n_to_the_span_of_an_int8_row():
    x = _causal_small_scores()
    text = model("y = Softmax(x)", x="float[4, 16, 16]")
    original, work, record = rewrite(text, "shiftmax(mask=true,fit_n=true)", calib=[{"x": x}])
    node = work.graph.node(2)
    x0, n = node.attributes.get_int("x0"), node.attributes.get_int("n")
    assert n == min(15, -367 // x0 + 1) < 15
    expected = testing.run_ort(original, {"x": x})[0]
    got = testing.run_ort(work, {"x": x})[0]
    _, unfit, _ = rewrite(text, "shiftmax(mask=true)", calib=[{"x": x}])
    # n = 15 with |x0| ~ 1000: f = floor((2^31-1)/sum) keeps 2-3 bits and rows sum to ~0.75
    assert np.abs(got - expected).max() < 0.005 < np.abs(testing.run_ort(unfit, {"x": x})[0] - expected).max()
    # a wide score range keeps n = 15 (the clamp at n halvings matters there)
    _, wide, _ = rewrite(model("y = Softmax(x)"), "shiftmax(fit_n=true)")
    assert wide.graph.node(2).attributes.get_int("n") == 15


def test_float16_island_keeps_the_dtype():
    text = model("y = Softmax(x)", x="float16[2, 4, 16]")
    original, work, record = rewrite(text, calib=samples(dtype=np.float16))
    assert record.modified and work.graph.outputs[0].dtype == ir.DataType.FLOAT16
    testing.assert_valid(work)
    feeds = samples(count=1, dtype=np.float16)[0]
    assert cosine(testing.run_ort(work, feeds)[0], testing.run_ort(original, feeds)[0]) > 0.995


@pytest.mark.parametrize(
    ("text", "calib", "reason"),
    [
        (model("y = Softmax<axis = 1>(x)"), None, "Softmax is over axis 1, not the last axis"),
        (model("y = Softmax<axis = 1>(x)", opset=11), None, "Softmax is over axis 1, not the last axis"),
        (model("y = Softmax(x)", x="double[2, 4, 16]"), samples(dtype=np.float64), "Softmax input is DOUBLE"),
        (model("y = Softmax(x)", x="float16[2, 4, 16]", opset=17), samples(dtype=np.float16),
         "QuantizeLinear of FLOAT16 needs opset >= 19"),
        (model("y = Softmax(x)", x="float[2, 4, 16]"), [{"x": np.full((2, 4, 16), -np.inf, np.float32)}],
         "no calibration statistics for x"),
        (model("y = Softmax(x)", x="float[2, 4000]"), [{"x": 0.001 * np.ones((2, 4000), np.float32)}],
         "exp sum may reach 2^31"),
    ],
    ids=["axis-1", "opset11-default-style-axis", "double", "float16-old-opset", "no-stats", "overflow"],
)
def test_declined_with_the_reason(text, calib, reason):
    original, work, record = rewrite(text, calib=calib)
    assert not record.modified
    assert testing.op_types(work) == [n.op_type for n in original.graph.node]
    assert any(reason in d for d in record.declines), record.declines


def test_a_second_run_is_a_no_op():
    _, work, record = rewrite(model("y = Softmax(x)"), "shiftmax,shiftmax")
    assert not record.modified and record.declines == []
    assert testing.op_types(work).count("Shiftmax") == 1


def test_bad_options_are_rejected():
    from graphopt.passes.shiftmax import ShiftmaxPass

    with pytest.raises(UsageError, match="option 'input_bits' of ShiftmaxOptions must be 8, got 4"):
        ShiftmaxPass(ShiftmaxOptions(input_bits=4))
    with pytest.raises(UsageError, match="option 'n' of ShiftmaxOptions must be between 0 and 30, got 40"):
        ShiftmaxPass(ShiftmaxOptions(n=40))


# ---- the real model ---------------------------------------------------------------------------

@pytest.mark.slow
def test_minilm_sentence_embeddings():
    """The softmax island alone keeps all-MiniLM-L6-v2's sentence embeddings (issue: cosine >= 0.995)."""
    import graphopt
    from graphopt.backends import ort as ort_backend
    from graphopt.models import minilm

    proto = minilm.build()
    batch = minilm.tokenize(minilm.sentences()[:32], seq_len=128)
    train = [{k: v[i:i + 1] for k, v in batch.items()} for i in range(32)]
    held_out = minilm.tokenize(minilm.sentences()[100:200], seq_len=128)

    def embed(m: ir.Model) -> np.ndarray:
        session = ort_backend.make_session(m, optimization="disable", threads=4)
        rows = [ort_backend.run(session, {k: v[i:i + 1] for k, v in held_out.items()})
                for i in range(len(held_out["input_ids"]))]
        key = "last_hidden_state" if "last_hidden_state" in rows[0] else next(iter(rows[0]))
        return minilm.mean_pool(np.concatenate([r[key] for r in rows]), held_out["attention_mask"])

    base = embed(ir.serde.deserialize_model(proto))
    result = graphopt.compile(proto, passes="cleanup,opset-upgrade,shiftmax", calib=train, validate=False)
    record = next(p for p in result.report.passes if p.name == "shiftmax")
    assert record.rewrites == {"shiftmax": 6}, record  # one softmax per layer
    assert "Softmax" not in testing.op_types(result.model)
    got = embed(result.model)
    cos = (got * base).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(base, axis=1)
    assert cos.mean() >= 0.995, (cos.mean(), cos.min())


def test_the_sdpa_nan_guard_goes_into_the_island():
    """Hugging Face's sdpa export: Where(IsNaN(p), 0, p) after the Softmax. Shiftmax never yields NaN,
    so the guard goes (it would leave a float IsNaN in the integer region)."""
    text = model("p = Softmax <axis = -1> (x)\n nan = IsNaN (p)\n zero = Constant <value = float {0.0}> ()\n y = Where (nan, zero, p)")
    original, work, record = rewrite(text)
    assert record.rewrites == {"shiftmax-nan-guard": 1}, record.declines
    assert "IsNaN" not in testing.op_types(work) and "Where" not in testing.op_types(work)
    testing.assert_valid(work)
    feeds = samples(count=1)[0]
    assert cosine(testing.run_ort(work, feeds)[0], testing.run_ort(original, feeds)[0]) > 0.99


def test_a_guard_that_fills_another_value_stays():
    text = model("p = Softmax <axis = -1> (x)\n nan = IsNaN (p)\n one = Constant <value = float {1.0}> ()\n y = Where (nan, one, p)")
    _, work, record = rewrite(text)
    assert record.rewrites == {"shiftmax": 1} and "IsNaN" in testing.op_types(work)  # the plain island; the guard stays
