"""imul: the float product of two activations -> int16 x int16 -> int32 Mul island."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.inliner
import onnx.parser
import onnx_ir as ir
import pytest

from graphopt import testing
from graphopt.pipeline import run_pipeline

SHAPE = "2, 8, 16"
ENTRY = ["QuantizeLinear", "DequantizeLinear"]  # x comes from an integer island
ISLAND = ["QuantizeLinear", "Cast", "QuantizeLinear", "Cast", "Mul", "DequantizeLinear"]


def _model(body: str = "z = Mul (xd, y)", opset: int = 21, dtype: str = "float", y: str = "y") -> str:
    return f"""<ir_version: 10, opset_import: ["" : {opset}]>
g ({dtype}[{SHAPE}] x, {dtype}[{SHAPE}] {y}) => ({dtype}[{SHAPE}] z) <{dtype} sx = {{0.03}}, int8 zp = {{0}}, {dtype} c = {{0.5}}> {{
  xq = QuantizeLinear (x, sx, zp)
  xd = DequantizeLinear (xq, sx, zp)
  {body}
}}"""


def _samples(count: int = 4, dtype=np.float32):
    rng = np.random.default_rng(testing.SEED)
    return [{"x": rng.standard_normal((2, 8, 16)).astype(dtype), "y": (rng.standard_normal((2, 8, 16)) * 3).astype(dtype)}
            for _ in range(count)]


def _run(text: str, pipeline: str = "imul", samples=None):
    proto = onnx.parser.parse_model(text)
    model = ir.serde.deserialize_model(proto)
    (record,) = run_pipeline(model, pipeline, samples=samples if samples is not None else _samples())
    return proto, model, record


def test_product_becomes_an_integer_island():
    proto, model, record = _run(_model())
    assert record.modified and record.rewrites == {"imul": 1}
    assert testing.op_types(proto) == [*ENTRY, "Mul"]
    assert testing.op_types(model) == ENTRY + ISLAND
    testing.assert_valid(model)
    quantizes = [n for n in model.graph if n.op_type == "QuantizeLinear"][1:]
    assert all(q.outputs[0].dtype == ir.DataType.INT16 for q in quantizes)
    mul, dq = list(model.graph)[-2:]
    s_x, s_y = (float(q.inputs[1].const_value.numpy()) for q in quantizes)
    assert float(dq.inputs[1].const_value.numpy()) == pytest.approx(s_x * s_y, rel=1e-6)
    feeds = _samples(count=1)[0]
    testing.assert_numerically_equal(proto, model, feeds, rtol=0, atol=2e-3)


def test_island_is_exact_integer_arithmetic():
    proto, model, _ = _run(_model())
    feeds = _samples(count=1)[0]
    quantizes = [n for n in model.graph if n.op_type == "QuantizeLinear"][1:]
    s_x, s_y = (np.float32(q.inputs[1].const_value.numpy()) for q in quantizes)
    xd = np.clip(np.round(feeds["x"] / np.float32(0.03)), -128, 127).astype(np.float32) * np.float32(0.03)
    xi = np.clip(np.round(xd / s_x), -32768, 32767).astype(np.int64)
    yi = np.clip(np.round(feeds["y"] / s_y), -32768, 32767).astype(np.int64)
    s_out = list(model.graph)[-1].inputs[1].const_value.numpy()
    expected = (xi * yi).astype(np.int32).astype(np.float32) * s_out
    np.testing.assert_array_equal(testing.run_ort(model, feeds)[0], expected)


def test_square_quantizes_once():
    proto, model, record = _run(_model("z = Mul (xd, xd)"))
    assert record.modified and testing.op_types(model) == [*ENTRY, "QuantizeLinear", "Cast", "Mul", "DequantizeLinear"]
    testing.assert_valid(model)
    testing.assert_numerically_equal(proto, model, _samples(count=1)[0], rtol=0, atol=1e-3)


def test_int8_operands_and_percentile():
    proto, model, record = _run(_model(), "imul(input_bits=8, calibration=percentile, percentile=99.9)")
    assert record.modified
    assert all(q.outputs[0].dtype == ir.DataType.INT8 for q in list(model.graph)[2:] if q.op_type == "QuantizeLinear")
    testing.assert_valid(model)
    testing.assert_numerically_equal(proto, model, _samples(count=1)[0], rtol=0, atol=0.5)


def test_chained_by_integer_chain_into_an_integer_only_product():
    text = _model("p = Mul (xd, y)\n  pq = QuantizeLinear (p, sx, zp)\n  z = DequantizeLinear (pq, sx, zp)")
    proto = onnx.parser.parse_model(text)
    model = ir.serde.deserialize_model(proto)
    run_pipeline(model, "imul,integer-chain", samples=_samples())
    from graphopt import integer_region

    # y is float input: its QuantizeLinear is an entry, like RoPE's cos / sin
    assert integer_region.verify(model).ok, integer_region.verify(model).lines()
    assert "DyadicRequant" in testing.op_types(model)
    testing.assert_numerically_equal(proto, model, _samples(count=1)[0], rtol=0, atol=0.031)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (_model("z = Mul (xd, c)"), "is a constant"),
        (_model("z = Mul (x, y)"), "neither operand comes from a DequantizeLinear"),
        (_model(opset=20), "int16 QuantizeLinear needs opset >= 21"),
    ],
    ids=["constant", "preprocessing", "opset"],
)
def test_does_not_fire(text, reason):
    proto, model, record = _run(text)
    assert not record.modified and testing.op_types(model) == testing.op_types(proto)
    assert any(reason in d for d in record.declines), record.declines


def test_does_not_fire_on_double():
    text = _model(dtype="double").replace("double sx = {0.03}", "double sx = {0.03}")
    proto, model, record = _run(text, samples=_samples(dtype=np.float64))
    assert not record.modified and any("not float32" in d for d in record.declines), record.declines


def test_does_not_fire_without_a_calibrated_range():
    samples = [dict(s, y=np.zeros_like(s["y"])) for s in _samples()]
    proto, model, record = _run(_model(), samples=samples)
    assert not record.modified and any("cannot pick a scale" in d for d in record.declines), record.declines


def test_the_product_is_integer_only():
    _, model, _ = _run(_model())
    inferred = onnx.shape_inference.infer_shapes(testing._proto(model), check_type=True, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    mul = next(n for n in inferred.graph.node if n.op_type == "Mul")
    assert {types[name] for name in [*mul.input, *mul.output]} == {onnx.TensorProto.INT32}


def test_a_constant_tensor_operand_gets_its_own_scale():
    """RoPE's cos/sin become constant tensors once fold-static-values knows the sequence length: the
    product is still an integer Mul, the constant quantized at max|c| / 32767 (no calibration)."""
    text = """<ir_version: 10, opset_import: ["" : 21]>
g (int32[2, 4] a) => (float[2, 4] y) <float s = {0.01}, float[1, 4] cos = {0.5, -0.25, 1.0, 0.75}> {
    x = DequantizeLinear (a, s)
    y = Mul (x, cos)
}"""
    original = onnx.parser.parse_model(text)
    work = ir.serde.deserialize_model(original)
    rng = np.random.default_rng(testing.SEED)
    calib = [{"a": rng.integers(-500, 500, (2, 4)).astype(np.int32)} for _ in range(4)]
    record = run_pipeline(work, "imul,integer-chain,cleanup", samples=calib)[0]
    assert record.rewrites == {"imul": 1}, record.declines
    assert "Mul" in testing.op_types(work)
    testing.assert_valid(work)
    feeds = calib[0]
    np.testing.assert_allclose(testing.run_ort(work, feeds)[0], testing.run_ort(original, feeds)[0], atol=0.02)
