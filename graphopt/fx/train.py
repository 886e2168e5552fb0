"""Train mode of ``to_torch``: integer graphs made differentiable without changing what they compute.

Autograd cannot flow through integer dtypes, so in train mode a value whose ONNX type is int8,
uint8, int16 or int32 is *carried* as a float64 tensor holding the same integers. float64 holds
every integer below 2^53 exactly, and the integer ops of graphopt graphs stay far below: int32
accumulators and requantized activations by construction; the int64 intermediates of Shiftmax /
ShiftGelu / DyadicRequant (up to ~2^62) are computed inside the ops' exact forms in int64, never
carried. int64 and bool values (shapes, indices, masks) stay as they are: no gradient flows
through them. One difference with the integer semantics: an int32 ``Add``/``Mul`` that overflows
wraps in eval mode and does not on a carrier; graphopt's passes clip before every such op.

Each node gets, in this order:

1. its train form, if ``TRAIN_FORMS`` has one: the exact eval computation (on exact integers) in
   the forward and a float surrogate's gradient in the backward (``straight_through``): ``Cast``
   to an integer type, ``QuantizeLinear`` (round, clamp; learnable scale as in LSQ),
   ``DequantizeLinear``, ``MatMulInteger`` / ``ConvInteger`` (exact float64 sums, int32 wrap),
   integer ``Div``, ``Floor`` / ``Round`` / ``Ceil``, and the graphopt integer ops
   (``graphopt.fx.train_ops``);
2. the eval converter itself, when no input or output is carried (float ops: natural gradients),
   or when the op is in ``ON_CARRIERS`` (elementwise and layout ops, exact on float64 integers);
   inputs of such an op in a position that is not a value (Gather's indices) become integers again;
3. otherwise the eval converter on exact integers, its integer outputs carried again: the forward
   stays exact, gradients stop there (an op with no train form yet).

So the train-mode forward equals the eval forward bit for bit (carried values compare equal to
the integers), and gradients reach every parameter upstream of a carried op with a train form.
"""

from __future__ import annotations

import torch
import onnx_ir as ir

from graphopt import ops
from graphopt.fx import onnx_math, onnx_quant, train_ops, train_parameters
from graphopt.fx.converters import STANDARD_DOMAINS
from graphopt.fx.dtypes import torch_dtype
from graphopt.fx.straight_through import straight_through, wrap_to_range

__all__ = ["CARRIER", "carried_dtype", "converter", "to_carrier"]

CARRIER = torch.float64
_CARRIED = {ir.DataType.INT8, ir.DataType.UINT8, ir.DataType.INT16, ir.DataType.INT32}
_INTEGER_TORCH = {torch.int8, torch.uint8, torch.int16, torch.int32}
# graphopt ops whose output is int32 even where a graph left the value untyped
_INT32_OUTPUTS = {"Shiftmax", "ShiftGelu", "IntLayerNorm", "DyadicRequant"}

_ALL = None  # every input position is a value
# op -> the input positions that may be carriers (values); None: all
ON_CARRIERS: dict[str, set[int] | None] = {
    **dict.fromkeys(["Add", "Sub", "Mul", "Neg", "Abs", "Sign", "Relu", "Min", "Max", "Sum", "Clip", "Identity",
                     "Mod", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Concat", "Shape", "Size"], _ALL),
    **dict.fromkeys(["Reshape", "Transpose", "Unsqueeze", "Squeeze", "Expand", "Slice", "Gather", "GatherElements",
                     "GatherND", "Tile", "Flatten", "Split", "ReduceSum", "ReduceMax", "ReduceMin", "CumSum",
                     "ArgMax", "Trilu"], {0}),
    "Where": {1, 2}, "Pad": {0, 2}, "ScatterND": {0, 2}, "ScatterElements": {0, 2},
}


def carried_dtype(value: ir.Value | None) -> torch.dtype | None:
    """The integer dtype ``value`` has in eval mode if train mode carries it as float64, else None."""
    if value is None:
        return None
    if value.dtype is None:
        producer = value.producer()
        known = producer is not None and producer.domain == ops.DOMAIN and producer.op_type in _INT32_OUTPUTS
        return torch.int32 if known else None
    return torch_dtype(value.dtype) if value.dtype in _CARRIED else None


def to_carrier(x: torch.Tensor) -> torch.Tensor:
    """An int8/uint8/int16/int32 tensor as its float64 carrier; anything else as it is."""
    return x.to(CARRIER) if x.dtype in _INTEGER_TORCH else x


def _to_integer(x, dtype):
    return x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x


def _carry_outputs(result):
    if isinstance(result, tuple):
        return tuple(_carry_outputs(r) for r in result)
    return to_carrier(result) if isinstance(result, torch.Tensor) else result


def _named(fn, name: str):
    fn.__name__ = fn.__qualname__ = name  # the FX code names the call after it
    return fn


def _on_exact_integers(eval_fn, integer_inputs: dict[int, torch.dtype], carry: bool):
    """``eval_fn`` with the carried inputs at ``integer_inputs`` made integers again."""

    def call(*args, **kwargs):
        args = [_to_integer(a, integer_inputs[i]) if i in integer_inputs else a for i, a in enumerate(args)]
        result = eval_fn(*args, **kwargs)
        return _carry_outputs(result) if carry else result

    return _named(call, f"{getattr(eval_fn, '__name__', 'op')}_{'exact' if carry else 'indices'}")


def converter(node: ir.Node, eval_fn):
    """The train-mode function for ``node``, whose eval converter is ``eval_fn``."""
    inputs = [carried_dtype(v) for v in node.inputs]
    outputs = [carried_dtype(v) for v in node.outputs]
    form = TRAIN_FORMS.get((node.domain, node.op_type))
    if form is not None:
        fn = form(node, eval_fn, inputs, outputs)
        if fn is not None:
            return fn
    if not any(inputs) and not any(outputs):
        return eval_fn
    values = ON_CARRIERS.get(node.op_type, ()) if node.domain in STANDARD_DOMAINS else ()
    if values is _ALL:
        return eval_fn
    if values:
        indices = {i: t for i, t in enumerate(inputs) if t is not None and i not in values}
        return _on_exact_integers(eval_fn, indices, carry=False) if indices else eval_fn
    return _on_exact_integers(eval_fn, {i: t for i, t in enumerate(inputs) if t is not None}, carry=True)


# --- train forms of standard ops -------------------------------------------------------------


def cast(x, to, saturate=1, round_mode="up"):
    """Cast: to an int8..int32 type the exact cast (float sources truncate; integers wrap) as a
    carrier, gradient identity; to any other type an ordinary ``to`` (a float target keeps the
    gradient; int64 / bool have none)."""
    target = torch_dtype(to)
    if target not in _INTEGER_TORCH:
        return x.to(target)
    source = x.to(torch.int64) if x.is_floating_point() else x  # carriers hold integers: exact
    exact = source.to(target).to(CARRIER)
    return straight_through(exact, lambda v: v.to(CARRIER), x) if x.is_floating_point() else exact


def _cast_like(node, eval_fn, inputs, outputs):
    target = node.inputs[1].dtype
    if target is None:
        return None

    def cast_like(x, like, saturate=1, round_mode="up"):
        return cast(x, int(target), saturate, round_mode)

    return cast_like


def _quantize_linear(node, eval_fn, inputs, outputs):
    dtype = outputs[0] or (inputs[2] if len(inputs) > 2 else None)  # typed output, else the zero point's
    attribute = node.attributes.get("output_dtype")
    if dtype is None and node.outputs[0].dtype is None:
        dtype = torch_dtype(attribute.value) if attribute is not None and attribute.value else torch.uint8
    if dtype is None or dtype not in _INTEGER_TORCH:
        return None  # a float8 / int4 output: refused by the eval converter anyway
    info = torch.iinfo(dtype)

    def quantize_linear(x, y_scale, y_zero_point=None, axis=1, block_size=0, output_dtype=0, saturate=1, precision=0):
        zero = _to_integer(y_zero_point, dtype)
        exact = onnx_quant.quantize_linear(x, y_scale, zero, axis, block_size, output_dtype, saturate, precision)

        def surrogate(x, scale, zp):
            q = x / onnx_quant.along(scale, x, axis)
            if zp is not None:
                q = q + onnx_quant.along(zp, x, axis).to(q.dtype)
            return torch.clamp(q, info.min, info.max).to(CARRIER)  # LSQ: d/ds = -x/s^2 inside the range

        return straight_through(exact.to(CARRIER), surrogate, x, y_scale, y_zero_point)

    return quantize_linear


def dequantize_linear(x, x_scale, x_zero_point=None, axis=1, block_size=0, output_dtype=0):
    """``(x - zp) · scale`` on the carrier: the same float as eval's int32 path (float64 -> float32
    and int32 -> float32 both round to nearest), with gradients to x and the scale."""
    if not x.is_floating_point():
        return onnx_quant.dequantize_linear(x, x_scale, x_zero_point, axis, block_size, output_dtype)
    if block_size:
        return onnx_quant.dequantize_linear(x, x_scale, x_zero_point, axis, block_size, output_dtype)  # refuses
    wide = x if x_zero_point is None else x - onnx_quant.along(x_zero_point, x, axis).to(CARRIER)
    return wide.to(x_scale.dtype) * onnx_quant.along(x_scale, x, axis)


def matmul_integer(a, b, a_zero_point=None, b_zero_point=None):
    """The exact float64 sum (as eval computes it) wrapped to int32 with gradient 1."""
    return wrap_to_range(onnx_quant.matmul_sum(a, b, a_zero_point, b_zero_point), 32, signed=True)


def conv_integer(x, w, x_zero_point=None, w_zero_point=None, **window):
    return wrap_to_range(onnx_quant.conv_sum(x, w, x_zero_point, w_zero_point, **window), 32, signed=True)


def _integer_div(node, eval_fn, inputs, outputs):
    if outputs[0] is None:
        return None  # float Div: differentiable as it is

    def integer_div(a, b):
        exact = onnx_math.div(a.to(torch.int64), b.to(torch.int64)).to(CARRIER)  # truncates, as ONNX
        return straight_through(exact, torch.div, a, b)

    return integer_div


def _rounding(torch_fn):
    def form(node, eval_fn, inputs, outputs):
        def rounding(x):
            return straight_through(torch_fn(x), lambda v: v, x)

        return _named(rounding, f"{torch_fn.__name__}_straight_through")

    return form


def _fixed(fn):
    return lambda node, eval_fn, inputs, outputs: fn


def _shift_matmul(node, eval_fn, inputs, outputs):
    """Latent weights where the builder made the packed codes one (``train_parameters.shift_codes``);
    else the codes stay a fixed buffer and the eval form runs on them."""
    return train_ops.shift_matmul_latent if train_parameters.shift_codes(node.inputs[1]) else None


TRAIN_FORMS = {
    **{(d, op): form for d in STANDARD_DOMAINS for op, form in {
        "Cast": _fixed(cast), "CastLike": _cast_like, "QuantizeLinear": _quantize_linear,
        "DequantizeLinear": _fixed(dequantize_linear), "MatMulInteger": _fixed(matmul_integer),
        "ConvInteger": _fixed(conv_integer), "Div": _integer_div,
        "Floor": _rounding(torch.floor), "Round": _rounding(torch.round), "Ceil": _rounding(torch.ceil),
    }.items()},
    **{(ops.DOMAIN, op): _fixed(fn) for op, fn in train_ops.TRAIN_FORMS.items()},
    (ops.DOMAIN, "ShiftMatMul"): _shift_matmul,
}
