"""shiftsilu: the canonical SiLU -> integer-only ShiftGelu island with slope 1 (x·σ(x))."""

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

ISLAND = ["Constant", "Constant", "QuantizeLinear", "Cast", "ShiftGelu", "Constant", "DequantizeLinear"]


def model(body: str, x: str = "float[4, 32]", opset: int = 21) -> str:
    return f'<ir_version: 10, opset_import: ["" : {opset}]>\ng ({x} x) => ({x} y) {{\n{body}\n}}'


# the exporters' spelling; the ``silu`` pass (first in each pipeline here) makes it SigmoidLinearUnit
SILU = "s = Sigmoid (x)\n y = Mul (x, s)"


def _silu(x):
    return x / (1.0 + np.exp(-x))


def test_slope_one_constants():
    x0, n = shiftgelu_constants(0.05, 16, factor=1.0)
    assert x0 == math.floor(-1 / 0.05) == -20 and n == 16
    x0, n = shiftgelu_constants(1e-4, 23, factor=1.0)
    assert x0 == -10000 and 2 * (-x0) * 2**n < 2**31 < 2 * (-x0) * 2 ** (n + 1)


@pytest.mark.parametrize("bits", [8, 16])
def test_reference_at_slope_one_is_close_to_float_silu(bits):
    qmax = 2 ** (bits - 1) - 1
    s = 8.0 / qmax
    x = np.linspace(-8, 8, 1001)[None]
    x0, n = shiftgelu_constants(s, 8 if bits == 16 else 16, factor=1.0)
    q = np.round(x / s).astype(np.int32)
    y = shift_gelu_reference(q, x0=x0, n=n, row_max=0).astype(np.float64) * s / 128
    # the linear 2^f and the 8-bit σ: a few percent of |x| at worst
    assert np.abs(y - _silu(x)).max() < 0.1 and np.abs(y - _silu(x)).mean() < 0.03


def test_silu_becomes_an_integer_island(check):
    result = check.fires(model(SILU), "silu,shiftsilu(row_max=false, n=16)", ISLAND, rtol=0, atol=0.06)
    assert result.last.rewrites == {"shiftsilu": 1}
    nodes = list(result.model.graph)
    q, sg, dq = nodes[2], nodes[4], nodes[6]
    assert sg.domain == ops.DOMAIN and sg.attributes.get_int("row_max") == 0
    s_in = float(q.inputs[1].const_value.numpy())
    x0, n = shiftgelu_constants(s_in, 16, factor=1.0)
    assert sg.attributes.get_int("x0") == x0 and sg.attributes.get_int("n") == n
    assert float(dq.inputs[1].const_value.numpy()) == pytest.approx(s_in / 128, rel=1e-6)


def test_ivit_settings_int16_after_the_silu_canonicalization(check):
    result = check.fires(model(SILU), "silu,shiftsilu(row_max=false,n=8,input_bits=16)", ISLAND, rtol=0, atol=0.03)
    quantize = next(n for n in result.model.graph if n.op_type == "QuantizeLinear")
    assert quantize.outputs[0].dtype == ir.DataType.INT16


def test_island_matches_the_reference_bit_for_bit(check):
    result = check.run(model(SILU), "silu,shiftsilu")
    feeds = check.feeds(result.original)
    nodes = list(result.model.graph)
    s = float(nodes[2].inputs[1].const_value.numpy())
    q = np.clip(np.round(feeds["x"] / np.float32(s)), -128, 127).astype(np.int32)
    attrs = {k: nodes[4].attributes.get_int(k) for k in ("x0", "n", "out_bits", "row_max")}
    expected = shift_gelu_reference(q, **attrs).astype(np.float32) * np.float32(s / 128)
    np.testing.assert_allclose(testing.run_ort(result.model, feeds)[0], expected, rtol=1e-6, atol=0)


def test_the_island_is_integer_only(check):
    result = check.run(model(SILU), "silu,shiftsilu")
    testing.assert_valid(result.model)
    inlined = onnx.shape_inference.infer_shapes(onnx.inliner.inline_local_functions(ir.to_proto(result.model)), strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in inlined.graph.value_info}
    body = [o for n in inlined.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear", "Constant") for o in n.output]
    assert body and all(types[o] in (onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT64) for o in body)


@pytest.mark.parametrize(
    ("text", "pipeline", "reason"),
    [
        (model(SILU, x="double[4, 32]"), "silu,shiftsilu", "ShiftGelu islands take float32 input; x is DOUBLE"),
        (model(SILU, opset=20), "silu,shiftsilu(input_bits=16)", "needs an int16 QuantizeLinear (opset >= 21)"),
        (model("zero = Constant <value = float {0.0}> ()\n z = Mul (x, zero)\n s = Sigmoid (z)\n y = Mul (z, s)"),
         "silu,shiftsilu", "calibrated range of z is 0.0"),
    ],
    ids=["double", "opset", "zero-range"],
)
def test_declines_with_the_reason(check, text, pipeline, reason):
    result = check.run(text, pipeline)
    assert result.records[0].modified and not result.last.modified  # canonical SiLU, left alone
    assert "SigmoidLinearUnit" in result.ops and "ShiftGelu" not in result.ops
    assert any(reason in d for d in result.last.declines), result.last.declines


def test_gelu_is_not_touched(check):
    result = check.run(model('y = Gelu (x)'), "shiftsilu")
    assert not result.last.modified and result.ops == ["Gelu"]


def test_bad_options_name_the_pass(check):
    with pytest.raises(Exception, match="option .input_bits. of pass .shiftsilu. must be between 2 and 16"):
        check.run(model(SILU), "silu,shiftsilu(input_bits=17)")
