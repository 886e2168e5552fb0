"""The lowering rules of ``integer-chain``: each float op's integer form, for a target scale.

``Lowerer.lower(value, scale)`` builds an int32 value equal to ``value / scale`` from integer ops
only, walking up the producers with ``LOWERINGS`` (op type -> rule); the rules and their numerics
are listed in ``passes/integer_chain.py``'s docstring. ``Unlowerable`` carries why a value has no
integer form. Split from the pass so that each file has one job (the pass: which QuantizeLinear
nodes to lower, and replacing them).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from graphopt import ops
from graphopt.ops.dyadic_requant import DYADIC_REQUANT, dyadic_multiplier
from graphopt.passes._canonical_utils import constant

if TYPE_CHECKING:
    from graphopt.passes.integer_chain import IntegerChainOptions

__all__ = ["LOWERINGS", "MAX_SCALE_ELEMENTS", "SINK_LAYOUT", "TARGETS", "Lowerer", "Unlowerable", "lower_dequantize"]


CONSTANT_LIMIT = 2**24
_FLOATS = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}
TARGETS = {ir.DataType.INT8: (-(2**7), 2**7 - 1), ir.DataType.INT16: (-(2**15), 2**15 - 1), ir.DataType.UINT8: (0, 255)}
_INTEGER_SOURCES = {ir.DataType.INT8, ir.DataType.INT16, ir.DataType.INT32, ir.DataType.INT64, ir.DataType.UINT8,
                    ir.DataType.UINT16, ir.DataType.BOOL}
_LAYOUT = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Expand", "Slice", "Gather",
           "GatherElements", "Tile", "Identity")
MAX_SCALE_ELEMENTS = 1 << 16
_RESIZE_SHIFT_LIMIT = 12  # a linear Resize's weights: multiples of 2^-12 at most, all axes together
SINK_LAYOUT = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity")  # one data input, values unchanged


class Unlowerable(Exception):
    """Why a value has no integer form (becomes the decline reason)."""


class Lowerer:
    """Builds ``value / scale`` as int32 values, inserting the new nodes before ``anchor``."""

    def __init__(self, graph: ir.Graph, options: IntegerChainOptions, opset: int) -> None:
        self.graph, self.options, self.opset = graph, options, opset
        self.memo: dict[tuple[int, float], ir.Value] = {}
        self.multi_output: dict[tuple[int, float], ir.Node] = {}  # a lowered Split serves all its outputs
        self.lowered_at: dict[int, list[float]] = {}  # the scales each value was lowered at (reuse by sums)
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
            finer = self._finer_sum(value, scale)
            self.memo[key] = self._lower(value, scale) if finer is None else \
                self.requant(self.memo[(id(value), finer)], np.float64(finer / scale), value, value.name or "sum")
            self.lowered_at.setdefault(id(value), []).append(scale)
        return self.memo[key]

    def _finer_sum(self, value: ir.Value, scale: float) -> float | None:
        """The finest scale at or below ``scale`` that a sum (Add/Sub) was already lowered at, if any.
        A pre-LN residual stream x_l = x_(l-1) + f_l is quantized at a new scale before every
        layer's norm; lowering it afresh would rebuild the whole chain of sums each time (O(layers²)
        requants: ViT-S 481 DyadicRequants); one requant from a finer lowering rounds once, at the
        target scale, as the fresh chain's last rounding would."""
        producer = value.producer()
        if producer is None or producer.domain != "" or producer.op_type not in ("Add", "Sub"):
            return None
        finer = [s for s in self.lowered_at.get(id(value), ()) if 0 < s <= scale and scale > 0]
        return min(finer) if finer else None

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

def lower_dequantize(lw: Lowerer, node: ir.Node, value: ir.Value, scale: float) -> ir.Value:
    a, s_a = node.inputs[0], constant(node.inputs[1], MAX_SCALE_ELEMENTS)
    if s_a is None:
        raise Unlowerable(f"{node.name}: the DequantizeLinear scale is not a constant")
    zero = constant(node.inputs[2], MAX_SCALE_ELEMENTS) if len(node.inputs) > 2 and node.inputs[2] is not None else None
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


def _elementwise(lw: Lowerer, node: ir.Node, value: ir.Value, scale: float) -> ir.Value:
    x, y = (lw.lower(i, scale) for i in node.inputs[:2])
    return lw.add(node.op_type, [x, y], like=value).outputs[0]


def _scaled_by_constant(lw: Lowerer, node: ir.Node, value: ir.Value, scale: float) -> ir.Value:
    for data_index in (0, 1) if node.op_type == "Mul" else (0,):
        c = constant(node.inputs[1 - data_index], 1)
        if c is not None and c.size == 1 and float(c.ravel()[0]) != 0.0 and math.isfinite(float(c.ravel()[0])):
            factor = float(c.ravel()[0])
            data = node.inputs[data_index]
            return lw.lower(data, scale / factor if node.op_type == "Mul" else scale * factor)
    raise Unlowerable(f"{node.name}: {node.op_type} by a non-constant or non-scalar factor")


def _neg(lw: Lowerer, node: ir.Node, value: ir.Value, scale: float) -> ir.Value:
    return lw.add("Neg", [lw.lower(node.inputs[0], scale)], like=value).outputs[0]


def _data_first(lw: Lowerer, node: ir.Node, value: ir.Value, scale: float) -> ir.Value:
    inputs = [lw.lower(node.inputs[0], scale), *node.inputs[1:]]
    attributes = {name: attr for name, attr in node.attributes.items()}
    return lw.add(node.op_type, inputs, like=value, attributes=attributes).outputs[0]


def _concat(lw: Lowerer, node: ir.Node, value: ir.Value, scale: float) -> ir.Value:
    inputs = [lw.lower(i, scale) for i in node.inputs]
    return lw.add("Concat", inputs, like=value, attributes={"axis": node.attributes.get_int("axis")}).outputs[0]


def _split(lw: Lowerer, node: ir.Node, value: ir.Value, scale: float) -> ir.Value:
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


def _pad(lw: Lowerer, node: ir.Node, value: ir.Value, scale: float) -> ir.Value:
    """Pad: the data and its float constant_value (input 2, opset >= 11) at the same scale."""
    if node.attributes.get_float("value", 0.0) != 0.0:
        raise Unlowerable(f"{node.name}: Pad with a nonzero 'value' attribute (opset < 11)")
    inputs = [lw.lower(node.inputs[0], scale), *node.inputs[1:]]
    if len(inputs) > 2 and inputs[2] is not None:
        inputs[2] = lw.lower(node.inputs[2], scale)
    attributes = {name: attr for name, attr in node.attributes.items()}
    return lw.add("Pad", inputs, like=value, attributes=attributes).outputs[0]


def _where(lw: Lowerer, node: ir.Node, value: ir.Value, scale: float) -> ir.Value:
    inputs = [node.inputs[0], lw.lower(node.inputs[1], scale), lw.lower(node.inputs[2], scale)]
    return lw.add("Where", inputs, like=value).outputs[0]


def _cast(lw: Lowerer, node: ir.Node, value: ir.Value, scale: float) -> ir.Value:
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


def _resize(lw: Lowerer, node: ir.Node, value: ir.Value, scale: float) -> ir.Value:
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


LOWERINGS: dict[str, Callable[[Lowerer, ir.Node, ir.Value, float], ir.Value]] = {
    "DequantizeLinear": lower_dequantize,
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
