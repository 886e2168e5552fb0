"""Join integer islands: rewrite each QuantizeLinear's float input as integer ops (the ``ivit`` glue).

After ``int8-linear``, ``shiftmax``, ``shiftgelu`` and ``ilayernorm`` a transformer is a chain of
islands with float between them::

    IntLayerNorm -> DequantizeLinear(s_ln) --\\
    MatMulInteger -> DequantizeLinear(s_x·s_w[c]) -> Add --> QuantizeLinear(s_q, int16) -> IntLayerNorm

This pass takes every ``QuantizeLinear(x, s_q)`` (per-tensor scale or per channel on the last
axis; zero point 0, or one number; int8/int16/uint8) and
*lowers* x: it builds an int32 value equal to ``x / s_q`` from integer ops only, walking up x's
producers with the lowering rules below, then replaces the QuantizeLinear with a saturating Clip
(after adding its zero point, if any; and a Cast to int8/int16/uint8 where the consumer reads that type)::

    QuantizeLinear(Add(DequantizeLinear(a, s_a), DequantizeLinear(b, s_b)), s_q)
      ->  Clip(Add(DyadicRequant(a, m_a, k_a), DyadicRequant(b, m_b, k_b)), -2^(b-1), 2^(b-1)-1)

with ``m · 2^-k ≈ s_a / s_q`` (``DyadicRequant``, per channel when s_a is). Lowering rules
(``x / s`` for a target scale ``s``; each is one entry of ``LOWERINGS``):

- ``DequantizeLinear(a, s_a)``      -> ``DyadicRequant(a, s_a / s)`` (just ``a`` when s_a == s)
- ``Add/Sub(x, y)``                  -> ``Add/Sub(x/s, y/s)``
- ``Mul(x, c)`` / ``Div(x, c)``      -> ``x / (s/c)`` / ``x / (s·c)``  (c a scalar constant)
- ``Neg(x)``                         -> ``Neg(x/s)``
- layout ops (Reshape, Transpose, Squeeze, Unsqueeze, Flatten, Expand, Slice, Gather,
  GatherElements, Tile, Identity) and ``Concat``, ``Where``, ``Split`` (one integer Split for all
  its outputs: GPT-2's fused QKV), ``Pad`` (its constant value lowered too) -> the same op on the
  lowered data
- ``Resize`` (static shapes; nearest, or linear whose weights are multiples of 2^-12: power-of-two
  ratios, MobileViT's unfold/fold) -> per resized axis a Gather of the taps, for linear
  ``Σ (w·2^k)·x`` in int32, then one ``DyadicRequant`` by ``2^-Σk``; other weights decline
- a float constant c                 -> the int32 constant ``round(c / s)`` (clipped to ±2^24:
  a value beyond that saturates every int8/int16 target; e.g. an additive mask's finfo.min)
- ``Cast<float>(i)`` of an integer   -> ``DyadicRequant(Cast<int32>(i), 1/s)``
- a per-channel target scale s[c] (``int8-linear``'s smoothed inputs): lower at the finest
  channel's scale, then ``DyadicRequant(·, finest / s[c])``; when the finest-scale value is a
  per-tensor DyadicRequant that nothing else reads, the two become one per-channel requant
  (one rounding, one integer multiply per element fewer)
- float preprocessing (a value with no DequantizeLinear upstream, e.g. an attention mask built
  in float from the 0/1 input) that these rules cannot lower (a 0/1 mask times finfo.min needs a
  scale below float32's range): the region's entry, ``Cast<int32>(QuantizeLinear(v, s, int16))``
  at the outermost such value
- a float graph input read through other ops (a decoder's ``past_key`` concatenated with the new
  keys): the same entry on the input itself; a QuantizeLinear that reads a graph input directly is
  already an entry and stays

A QuantizeLinear whose input is a float graph input or reaches an op without a rule (a float MatMul
that ``int8-linear`` did not take, say) is left as it is, and the pass says why (a decline). The
lowered values are memoized per (value, scale); ``Shape`` of a dequantized value reads the
integer tensor instead; the float nodes nobody reads any more are removed. The result is integer between the entry quantizes and the output DequantizeLinear:
``graphopt inspect --integer-only`` checks it.

A per-tensor DequantizeLinear whose only path to a graph output is layout ops (Reshape,
Transpose, Squeeze, Unsqueeze, Flatten, Identity) moves below them (``sink-dequantize``): the
integers are moved and the output is the DequantizeLinear's, the same floats. ONNX Runtime's
optimizer (levels basic and up) would otherwise propagate an int32 DequantizeLinear through the
layout ops as a QuantizeLinear to int32, which it has no kernel for (SegFormer's output).

Numerics: the lowering rounds where the float graph would round once, at the QuantizeLinear
(plus once per DyadicRequant, half up): per-element differences of a unit or two of the target
int8/int16 scale.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from graphopt import ops, rewrite
from graphopt.pass_base import GraphoptPass
from graphopt.passes._canonical_utils import constant, default_opset
from graphopt.ops.dyadic_requant import DYADIC_REQUANT, dyadic_multiplier
from graphopt.registry import register_pass

__all__ = ["IntegerChainOptions", "IntegerChainPass", "LOWERINGS"]

CONSTANT_LIMIT = 2**24
_FLOATS = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}
_TARGETS = {ir.DataType.INT8: (-(2**7), 2**7 - 1), ir.DataType.INT16: (-(2**15), 2**15 - 1), ir.DataType.UINT8: (0, 255)}
_INTEGER_SOURCES = {ir.DataType.INT8, ir.DataType.INT16, ir.DataType.INT32, ir.DataType.INT64, ir.DataType.UINT8,
                    ir.DataType.UINT16, ir.DataType.BOOL}
_LAYOUT = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Expand", "Slice", "Gather",
           "GatherElements", "Tile", "Identity")
_MAX_SCALE_ELEMENTS = 1 << 16
_RESIZE_SHIFT_LIMIT = 12  # a linear Resize's weights: multiples of 2^-12 at most, all axes together
_SINK_LAYOUT = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity")  # one data input, values unchanged


@dataclasses.dataclass(frozen=True)
class IntegerChainOptions:
    entry_bits: int = 16  # bits of the QuantizeLinear that brings float preprocessing (masks) in


class Unlowerable(Exception):
    """Why a value has no integer form (becomes the decline reason)."""


class _Lowerer:
    """Builds ``value / scale`` as int32 values, inserting the new nodes before ``anchor``."""

    def __init__(self, graph: ir.Graph, options: IntegerChainOptions, opset: int) -> None:
        self.graph, self.options, self.opset = graph, options, opset
        self.memo: dict[tuple[int, float], ir.Value] = {}
        self.multi_output: dict[tuple[int, float], ir.Node] = {}  # a lowered Split serves all its outputs
        self.dequantized = _dequantized_values(graph)
        self.anchor: ir.Node | None = None
        self.created = 0

    # -- building blocks ---------------------------------------------------------------------
    def add(self, op_type: str, inputs, *, like: ir.Value | None = None, dtype=ir.DataType.INT32,
            attributes=None, domain: str = "", num_outputs: int = 1) -> ir.Node:
        node = ir.node(op_type, list(inputs), attributes=attributes or {}, domain=domain,
                       version=ops.OPSET_VERSION if domain == ops.DOMAIN else None, num_outputs=num_outputs)
        for out in node.outputs:
            out.dtype = dtype
            if like is not None and like.shape is not None:
                out.shape = ir.Shape(like.shape)
        self.graph.insert_before(self.anchor, node)
        return node

    def const(self, array: np.ndarray, hint: str) -> ir.Value:
        self.created += 1
        name = f"{hint}_int{self.created}"
        value = ir.Value(name=name, const_value=ir.tensor(np.array(array, order="C"), name=name))
        value.dtype = ir.DataType.from_numpy(array.dtype)
        value.shape = ir.Shape(array.shape)
        self.graph.register_initializer(value)
        return value

    def requant(self, x: ir.Value, ratio: np.ndarray, like: ir.Value, hint: str) -> ir.Value:
        """int32 ``x · ratio`` via DyadicRequant (ratio a scalar or broadcastable array)."""
        if np.all(ratio == 1.0):
            return x
        if np.any(np.abs(ratio) >= 2.0**30):
            raise Unlowerable(f"rescaling {hint} by {float(np.abs(ratio).max()):.3g} would overflow int32")
        m, k = dyadic_multiplier(ratio)
        node = self.add(DYADIC_REQUANT.name, [x, self.const(m, f"{hint}_m"), self.const(k, f"{hint}_k")],
                        like=like, domain=ops.DOMAIN, attributes={"out_bits": 32})
        return node.outputs[0]

    def rescale(self, x: ir.Value, ratio: np.ndarray, like: ir.Value, hint: str) -> ir.Value:
        """int32 ``x · ratio``. When x is the output of a per-tensor DyadicRequant that nothing reads
        yet (just made by this lowering), that requant takes the product of both ratios instead: one
        rounding instead of two, and one integer multiply per element fewer. The unread requant
        stays for the memo and goes with the unused nodes at the end."""
        inner = x.producer()
        if inner is not None and inner.op_type == DYADIC_REQUANT.name and inner.domain == ops.DOMAIN \
                and not x.uses() and not x.is_graph_output() and inner.attributes.get_int("out_bits", 32) == 32:
            m, k = (constant(v, 1) for v in inner.inputs[1:3])
            if m is not None and k is not None and inner.inputs[0].dtype == ir.DataType.INT32:
                inner_ratio = float(m.ravel()[0]) * 2.0 ** -float(k.ravel()[0])
                return self.requant(inner.inputs[0], inner_ratio * np.asarray(ratio, np.float64), like, hint)
        return self.requant(x, ratio, like, hint)

    def cast32(self, x: ir.Value) -> ir.Value:
        return x if x.dtype == ir.DataType.INT32 else self.add("Cast", [x], like=x, attributes={"to": ir.DataType.INT32}).outputs[0]

    # -- the walk ----------------------------------------------------------------------------
    def lower(self, value: ir.Value, scale: float) -> ir.Value:
        key = (id(value), scale)
        if key not in self.memo:
            self.memo[key] = self._lower(value, scale)
        return self.memo[key]

    def _lower(self, value: ir.Value, scale: float) -> ir.Value:
        array = constant(value, max_size=1 << 28)
        if array is not None:
            if array.dtype.kind != "f":
                raise Unlowerable(f"{value.name} is an integer constant where a float is read")
            scaled = np.clip(np.rint(array.astype(np.float64) / scale), -CONSTANT_LIMIT, CONSTANT_LIMIT)
            return self.const(scaled.astype(np.int32), value.name or "c")
        node = value.producer()
        if node is None:
            if self.anchor is not None and value is self.anchor.inputs[0]:
                raise Unlowerable(f"reads the float graph input {value.name!r} (quantized here: the region's entry)")
            return self.entry(value, scale)  # e.g. a decoder's float KV cache, concatenated with new keys
        if value.dtype is not None and value.dtype not in _FLOATS:
            raise Unlowerable(f"{value.name} is {value.dtype}, not float")
        rule = LOWERINGS.get(node.op_type) if node.domain == "" else None
        pure = id(value) not in self.dequantized  # float preprocessing: no DequantizeLinear upstream
        if rule is not None:
            try:
                return rule(self, node, value, scale)
            except Unlowerable:
                if not pure:
                    raise  # (a failed try leaves dead nodes; the pass removes them)
        if pure:
            return self.entry(value, scale)
        raise Unlowerable(f"{value.name} comes from {node.domain + '::' if node.domain else ''}{node.op_type}, "
                          "which has no integer lowering")

    def entry(self, value: ir.Value, scale: float) -> ir.Value:
        """Float preprocessing (no DequantizeLinear upstream): quantize it here, the region's entry."""
        if not 1e-30 < abs(scale) < 1e30:
            raise Unlowerable(f"quantizing {value.name} would need the scale {scale:.3g}, outside float32's normal range")
        bits = self.options.entry_bits if self.opset >= 21 else 8
        dtype = ir.DataType.INT16 if bits == 16 else ir.DataType.INT8
        s = self.const(np.array(abs(scale), np.float32), f"{value.name}_entry_scale")
        zero = self.const(np.array(0, dtype.numpy()), f"{value.name}_entry_zero")
        source = value if scale > 0 else self.add("Neg", [value], like=value, dtype=value.dtype).outputs[0]
        q = self.add("QuantizeLinear", [source, s, zero], like=value, dtype=dtype).outputs[0]
        return self.cast32(q)


def _dequantized_values(graph: ir.Graph) -> set[int]:
    """ids of the values downstream of some DequantizeLinear (the rest is float preprocessing)."""
    found: set[int] = set()
    for node in graph:  # topological order: a node's inputs are classified before it
        if (node.op_type == "DequantizeLinear" and node.domain == "") or any(id(i) in found for i in node.inputs if i is not None):
            found.update(id(o) for o in node.outputs)
    return found


# -- lowering rules: (lowerer, node, the output being lowered, target scale) -> int32 value ------

def _dequantize(lw: _Lowerer, node: ir.Node, value: ir.Value, scale: float) -> ir.Value:
    a, s_a = node.inputs[0], constant(node.inputs[1], _MAX_SCALE_ELEMENTS)
    if s_a is None:
        raise Unlowerable(f"{node.name}: the DequantizeLinear scale is not a constant")
    zero = constant(node.inputs[2], _MAX_SCALE_ELEMENTS) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if zero is not None and np.any(zero != 0):
        raise Unlowerable(f"{node.name}: nonzero zero point")
    if node.attributes.get_int("block_size", 0):
        raise Unlowerable(f"{node.name}: blocked dequantization")
    producer = a.producer()
    if a.dtype is None and producer is not None and producer.domain == ops.DOMAIN:
        a.dtype = ir.DataType.INT32  # graphopt's integer ops return int32 (docs/integer-ops.md)
    if a.dtype not in (ir.DataType.INT8, ir.DataType.INT16, ir.DataType.INT32):
        raise Unlowerable(f"{node.name}: dequantizes {a.dtype}; int8/int16/int32 expected")
    ratio = s_a.astype(np.float64) / scale
    if s_a.size > 1:
        rank = None if a.shape is None else len(a.shape)
        axis = node.attributes.get_int("axis", 1)
        if rank is None:
            raise Unlowerable(f"{node.name}: per-axis scale on an input of unknown rank")
        ratio = ratio.reshape((-1,) + (1,) * (rank - 1 - axis % rank))
    return lw.requant(lw.cast32(a), ratio, a, node.name or "dq")


def _elementwise(lw: _Lowerer, node: ir.Node, value: ir.Value, scale: float) -> ir.Value:
    x, y = (lw.lower(i, scale) for i in node.inputs[:2])
    return lw.add(node.op_type, [x, y], like=value).outputs[0]


def _scaled_by_constant(lw: _Lowerer, node: ir.Node, value: ir.Value, scale: float) -> ir.Value:
    for data_index in (0, 1) if node.op_type == "Mul" else (0,):
        c = constant(node.inputs[1 - data_index], 1)
        if c is not None and c.size == 1 and float(c.ravel()[0]) != 0.0 and math.isfinite(float(c.ravel()[0])):
            factor = float(c.ravel()[0])
            data = node.inputs[data_index]
            return lw.lower(data, scale / factor if node.op_type == "Mul" else scale * factor)
    raise Unlowerable(f"{node.name}: {node.op_type} by a non-constant or non-scalar factor")


def _neg(lw: _Lowerer, node: ir.Node, value: ir.Value, scale: float) -> ir.Value:
    return lw.add("Neg", [lw.lower(node.inputs[0], scale)], like=value).outputs[0]


def _data_first(lw: _Lowerer, node: ir.Node, value: ir.Value, scale: float) -> ir.Value:
    inputs = [lw.lower(node.inputs[0], scale), *node.inputs[1:]]
    attributes = {name: attr for name, attr in node.attributes.items()}
    return lw.add(node.op_type, inputs, like=value, attributes=attributes).outputs[0]


def _concat(lw: _Lowerer, node: ir.Node, value: ir.Value, scale: float) -> ir.Value:
    inputs = [lw.lower(i, scale) for i in node.inputs]
    return lw.add("Concat", inputs, like=value, attributes={"axis": node.attributes.get_int("axis")}).outputs[0]


def _split(lw: _Lowerer, node: ir.Node, value: ir.Value, scale: float) -> ir.Value:
    """Split (GPT-2's fused QKV): one integer Split for all outputs, whichever is lowered first."""
    key = (id(node), scale)
    if key not in lw.multi_output:
        inputs = [lw.lower(node.inputs[0], scale), *node.inputs[1:]]
        attributes = {name: attr for name, attr in node.attributes.items()}
        lowered = lw.add("Split", inputs, attributes=attributes, num_outputs=len(node.outputs))
        for out, original in zip(lowered.outputs, node.outputs):
            out.shape = ir.Shape(original.shape) if original.shape is not None else None
        lw.multi_output[key] = lowered
    return lw.multi_output[key].outputs[list(node.outputs).index(value)]


def _pad(lw: _Lowerer, node: ir.Node, value: ir.Value, scale: float) -> ir.Value:
    """Pad: the data and its float constant_value (input 2, opset >= 11) at the same scale."""
    if node.attributes.get_float("value", 0.0) != 0.0:
        raise Unlowerable(f"{node.name}: Pad with a nonzero 'value' attribute (opset < 11)")
    inputs = [lw.lower(node.inputs[0], scale), *node.inputs[1:]]
    if len(inputs) > 2 and inputs[2] is not None:
        inputs[2] = lw.lower(node.inputs[2], scale)
    attributes = {name: attr for name, attr in node.attributes.items()}
    return lw.add("Pad", inputs, like=value, attributes=attributes).outputs[0]


def _where(lw: _Lowerer, node: ir.Node, value: ir.Value, scale: float) -> ir.Value:
    inputs = [node.inputs[0], lw.lower(node.inputs[1], scale), lw.lower(node.inputs[2], scale)]
    return lw.add("Where", inputs, like=value).outputs[0]


def _cast(lw: _Lowerer, node: ir.Node, value: ir.Value, scale: float) -> ir.Value:
    source = node.inputs[0]
    if source.dtype in _FLOATS:  # float -> float (e.g. an upcast): lower what it casts
        return lw.lower(source, scale)
    if source.dtype not in _INTEGER_SOURCES:
        raise Unlowerable(f"{node.name}: Cast from {source.dtype}")
    ratio = np.array(1.0 / scale)
    return lw.requant(lw.cast32(source), ratio, source, node.name or "cast")


def _resize_taps(size_in: int, size_out: int, mode: str, transform: str, nearest: str) -> tuple[np.ndarray, ...]:
    """One axis of a Resize, as ONNX Runtime computes it: per output index the two input indices it
    reads and the weight of the second (0 for nearest); coordinates beyond the edges clamp to them."""
    ratio, x = size_out / size_in, np.arange(size_out, dtype=np.float64)
    if transform == "half_pixel" or (transform == "pytorch_half_pixel" and size_out > 1):
        origin = (x + 0.5) / ratio - 0.5
    elif transform == "align_corners" and size_out > 1:
        origin = x * (size_in - 1) / (size_out - 1)
    elif transform == "asymmetric":
        origin = x / ratio
    elif transform in ("pytorch_half_pixel", "align_corners"):  # one output: the first input
        origin = np.zeros_like(x)
    else:
        raise Unlowerable(f"coordinate_transformation_mode={transform}")
    if mode == "nearest":
        half = origin - np.floor(origin) == 0.5
        rounded = {"floor": np.floor(origin), "ceil": np.ceil(origin),
                   "round_prefer_floor": np.where(half, np.floor(origin), np.floor(origin + 0.5)),
                   "round_prefer_ceil": np.where(half, np.ceil(origin), np.floor(origin + 0.5))}.get(nearest)
        if rounded is None:
            raise Unlowerable(f"nearest_mode={nearest}")
        index = np.clip(rounded, 0, size_in - 1).astype(np.int64)
        return index, index, np.zeros(size_out)
    origin = np.clip(origin, 0, size_in - 1)
    low = np.floor(origin).astype(np.int64)
    return low, np.minimum(low + 1, size_in - 1), origin - low


def _resize(lw: _Lowerer, node: ir.Node, value: ir.Value, scale: float) -> ir.Value:
    """Resize (nearest, or linear with dyadic weights: MobileViT's unfold/fold) of static shapes, one
    axis at a time: Gather of the taps, and for linear ``Σ w·2^k · x`` then one DyadicRequant by
    ``2^-(Σk)`` (the weights exact, one rounding). Other weights (a non-power-of-two ratio) decline."""
    attrs, data = node.attributes, node.inputs[0]
    mode = attrs.get_string("mode", "nearest")
    plain = not attrs.get_int("antialias", 0) and "axes" not in attrs and attrs.get_string("keep_aspect_ratio_policy", "stretch") == "stretch"
    if mode not in ("nearest", "linear") or not plain:
        raise Unlowerable(f"{node.name}: Resize mode={mode} (antialias, axes, aspect policies) has no integer lowering")
    shape = list(data.shape) if data.shape is not None else None
    if shape is None or not all(isinstance(d, int) for d in shape):
        raise Unlowerable(f"{node.name}: Resize of a value without a static shape")
    inputs = list(node.inputs) + [None] * (4 - len(node.inputs))
    scales_in, sizes_in = (inputs[1], None) if len(node.inputs) == 2 else (inputs[2], inputs[3])  # opset 10: (X, scales)
    sizes, scales = constant(sizes_in, 16), constant(scales_in, 16)
    if sizes is None and (scales is None or scales.size != len(shape)):
        raise Unlowerable(f"{node.name}: Resize sizes/scales are not constants")
    out = [int(d) for d in sizes] if sizes is not None else [int(np.floor(d * f)) for d, f in zip(shape, scales.astype(np.float64), strict=True)]
    transform = attrs.get_string("coordinate_transformation_mode", "half_pixel")
    x, shift = lw.lower(data, scale), 0
    for axis, (size_in, size_out) in enumerate(zip(shape, out, strict=True)):
        if size_in == size_out:
            continue  # every transform above maps an unresized axis onto itself
        try:
            low, high, weight = _resize_taps(size_in, size_out, mode, transform, attrs.get_string("nearest_mode", "round_prefer_floor"))
        except Unlowerable as why:
            raise Unlowerable(f"{node.name}: Resize {why}") from None
        gathered = lw.add("Gather", [x, lw.const(low, "resize_index")], attributes={"axis": axis}).outputs[0]
        if not weight.any():
            x = gathered
            continue
        k = next((k for k in range(_RESIZE_SHIFT_LIMIT - shift + 1) if np.all(weight * 2**k == np.rint(weight * 2**k))), None)
        if k is None:
            raise Unlowerable(f"{node.name}: Resize weights are not multiples of 2^-{_RESIZE_SHIFT_LIMIT - shift}")
        broadcast = [1] * len(shape)
        broadcast[axis] = size_out
        w_low = lw.const(np.rint((1 - weight) * 2**k).astype(np.int32).reshape(broadcast), "resize_weight")
        w_high = lw.const(np.rint(weight * 2**k).astype(np.int32).reshape(broadcast), "resize_weight")
        other = lw.add("Gather", [x, lw.const(high, "resize_index")], attributes={"axis": axis}).outputs[0]
        x = lw.add("Add", [lw.add("Mul", [gathered, w_low]).outputs[0], lw.add("Mul", [other, w_high]).outputs[0]]).outputs[0]
        shift += k
    return lw.requant(x, np.array(2.0**-shift), value, node.name or "resize") if shift else x


LOWERINGS: dict[str, Callable[[_Lowerer, ir.Node, ir.Value, float], ir.Value]] = {
    "DequantizeLinear": _dequantize,
    "Add": _elementwise,
    "Sub": _elementwise,
    "Mul": _scaled_by_constant,
    "Div": _scaled_by_constant,
    "Neg": _neg,
    "Concat": _concat,
    "Where": _where,
    "Cast": _cast,
    "Split": _split,
    "Pad": _pad,
    "Resize": _resize,
    **{op: _data_first for op in _LAYOUT},
}


def _quantize_target(node: ir.Node) -> tuple[np.ndarray | None, int, str | None]:
    """(the scale, the zero point, None) of a QuantizeLinear this pass can lower, else (None, 0, why not).

    The scale is per tensor, or per channel on the last axis (``int8-linear``'s smoothed inputs);
    a nonzero zero point must be one number (``int8-linear``'s uint8 operands at zero point 128).
    """
    out, x = node.outputs[0], node.inputs[0]
    if out.dtype not in _TARGETS:
        return None, 0, f"quantizes to {out.dtype}; int8/int16/uint8 only"
    scale = constant(node.inputs[1], _MAX_SCALE_ELEMENTS)
    if scale is None or not np.all(scale > 0):
        return None, 0, "the scale is not a positive constant"
    if scale.size > 1:
        rank = None if x.shape is None else len(x.shape)
        axis = node.attributes.get_int("axis", 1)
        if scale.ndim != 1 or rank is None or axis % rank != rank - 1 or node.attributes.get_int("block_size", 0):
            return None, 0, "a per-axis scale is supported on the last axis only"
    zero = constant(node.inputs[2], _MAX_SCALE_ELEMENTS) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if zero is not None and np.any(zero != 0) and (zero.size != 1 or scale.size != 1):
        return None, 0, "a nonzero zero point is supported per tensor only"
    zero_point = 0 if zero is None else int(zero.ravel()[0])
    return scale.astype(np.float64).ravel() if scale.size > 1 else scale.astype(np.float64).reshape(()), zero_point, None


@register_pass("integer-chain", options=IntegerChainOptions, category="rewrite")
class IntegerChainPass(GraphoptPass):
    """Replace each QuantizeLinear's float input by integer ops, joining the integer islands."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        lowerer = _Lowerer(graph, self.options, default_opset(model))
        targets = [n for n in graph if n.domain == "" and n.op_type == "QuantizeLinear"]
        lowered = 0
        for q in targets:
            scale, zero_point, why = _quantize_target(q)
            if why is None:
                lowerer.anchor = q
                try:
                    integer = self._lower_to(lowerer, q, scale)
                except Unlowerable as reason:
                    why = str(reason)
            if why is not None:
                self.declines.append(rewrite.Decline("integer-chain", q.name or q.outputs[0].name, why))
                continue
            self._replace(lowerer, q, integer, q.inputs[0].name, zero_point)
            lowered += 1
        sunk = self._sink_output_dequantizes(graph)
        if sunk:
            self.rewrites["sink-dequantize"] += sunk
        if lowered:
            self.rewrites["integer-chain"] += lowered
        if lowered or sunk:
            self._shapes_from_integers(graph)
            common_passes.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified=lowered > 0 or sunk > 0)

    @staticmethod
    def _sink_output_dequantizes(graph: ir.Graph) -> int:
        """A per-tensor DequantizeLinear whose only path to a graph output is layout ops (SegFormer's
        Reshape -> Transpose back to [N, C, H, W]) moves below them: the layout ops carry the integers
        and the output is the DequantizeLinear's. The float values are the same; ONNX Runtime's
        optimizer (levels basic and up) would otherwise propagate the int32 DequantizeLinear through
        the layout ops as a QuantizeLinear to int32, which it has no kernel for."""
        sunk = 0
        for dq in [n for n in graph if n.domain == "" and n.op_type == "DequantizeLinear"]:
            scale = constant(dq.inputs[1], 1)
            if scale is None or scale.size != 1 or (len(dq.inputs) > 2 and dq.inputs[2] is not None
                                                    and np.size(constant(dq.inputs[2], 1)) != 1):
                continue
            chain, value = [], dq.outputs[0]
            while not value.is_graph_output() and len(value.uses()) == 1:
                user, index = value.uses()[0]
                if user.domain != "" or user.op_type not in _SINK_LAYOUT or index != 0:
                    break
                chain.append(user)
                value = user.outputs[0]
            if not chain or not value.is_graph_output() or value.uses():
                continue
            integer = dq.inputs[0]
            zero = dq.inputs[2] if len(dq.inputs) > 2 else None
            producer = integer.producer()
            graphopt_op = producer is not None and producer.domain == ops.DOMAIN  # returns int32, see _dequantize
            dtype = integer.dtype or (zero.dtype if zero is not None else None) or (ir.DataType.INT32 if graphopt_op else None)
            shape = ir.Shape(value.shape) if value.shape is not None else None
            chain[0].replace_input_with(0, integer)
            for node in chain:  # the integer type, where known (a graphopt op's output may not say)
                if dtype is None:
                    node.outputs[0].type, node.outputs[0].shape = None, None
                else:
                    node.outputs[0].dtype = dtype
            name = value.name
            value.name = f"{name}_integer"
            moved = ir.node("DequantizeLinear", [value, *dq.inputs[1:]], attributes={a.name: a.value for a in dq.attributes.values()},
                            name=f"{dq.name or name}_sunk")
            out = moved.outputs[0]
            out.name, out.dtype, out.shape = name, ir.DataType.FLOAT, shape
            graph.insert_after(chain[-1], moved)
            graph.outputs[graph.outputs.index(value)] = out
            sunk += 1
        return sunk

    @staticmethod
    def _shapes_from_integers(graph: ir.Graph) -> None:
        """Shape/Size of a DequantizeLinear output read the integer input instead (same shape), so
        a dequantize kept alive only for a shape computation (legacy exports' Reshape targets) goes."""
        for node in graph:
            source = node.inputs[0] if node.op_type in ("Shape", "Size") and node.domain == "" and node.inputs else None
            producer = source.producer() if source is not None else None
            if producer is not None and producer.op_type == "DequantizeLinear" and producer.domain == "":
                node.replace_input_with(0, producer.inputs[0])

    @staticmethod
    def _lower_to(lowerer: _Lowerer, q: ir.Node, scale: np.ndarray) -> ir.Value:
        """``x / scale`` as int32; a per-channel scale lowers at the finest channel's, then rescales."""
        x = q.inputs[0]
        if scale.ndim == 0:
            return lowerer.lower(x, float(scale))
        finest = float(scale.min())
        return lowerer.rescale(lowerer.lower(x, finest), finest / scale, x, q.name or "q")

    @staticmethod
    def _replace(lowerer: _Lowerer, q: ir.Node, integer: ir.Value, source: str, zero_point: int) -> None:
        out = q.outputs[0]
        lo, hi = _TARGETS[out.dtype]
        if zero_point:
            shift = lowerer.const(np.array(zero_point, np.int32), "zero_point")
            integer = lowerer.add("Add", [integer, shift], like=out).outputs[0]
        low = lowerer.const(np.array(lo, np.int32), f"{out.dtype.name.lower()}_min")
        high = lowerer.const(np.array(hi, np.int32), f"{out.dtype.name.lower()}_max")
        clip = lowerer.add("Clip", [integer, low, high], like=out)
        # which float value this integer tensor stands for, and at what scale (per-layer error)
        clip.metadata_props["pkg.graphopt.quantizes"] = source
        scale = constant(q.inputs[1], _MAX_SCALE_ELEMENTS).astype(float)  # a number, or one per channel
        clip.metadata_props["pkg.graphopt.scale"] = json.dumps(scale.item() if scale.size == 1 else scale.tolist())
        if zero_point:
            clip.metadata_props["pkg.graphopt.zero_point"] = str(zero_point)
        clipped = clip.outputs[0]
        for use in list(out.uses()):
            user = use.node
            if user.op_type == "Cast" and user.domain == "" and user.attributes.get_int("to") == ir.DataType.INT32:
                user.outputs[0].replace_all_uses_with(clipped, replace_graph_outputs=True)
        if out.uses() or out.is_graph_output():
            narrow = lowerer.add("Cast", [clipped], like=out, dtype=out.dtype, attributes={"to": out.dtype})
            out.replace_all_uses_with(narrow.outputs[0], replace_graph_outputs=True)
