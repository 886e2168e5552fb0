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
lowered values are memoized per (value, scale), and a sum (Add/Sub) already lowered at a finer
scale is requantized from that lowering instead of rebuilt (a pre-LN residual stream is quantized
at a new scale before every layer: ViT-S/16 481 -> 209 DyadicRequants); ``Shape`` of a dequantized value reads the
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

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from graphopt import ops, rewrite
from graphopt.pass_base import GraphoptPass
from graphopt.passes._canonical_utils import constant, default_opset
from graphopt.passes._integer_lowering import (
    LOWERINGS,
    MAX_SCALE_ELEMENTS,
    SINK_LAYOUT,
    TARGETS,
    Lowerer,
    Unlowerable,
)
from graphopt.registry import register_pass

__all__ = ["IntegerChainOptions", "IntegerChainPass", "LOWERINGS"]


@dataclasses.dataclass(frozen=True)
class IntegerChainOptions:
    entry_bits: int = 16  # bits of the QuantizeLinear that brings float preprocessing (masks) in


def _quantize_target(node: ir.Node) -> tuple[np.ndarray | None, int, str | None]:
    """(the scale, the zero point, None) of a QuantizeLinear this pass can lower, else (None, 0, why not).

    The scale is per tensor, or per channel on the last axis (``int8-linear``'s smoothed inputs);
    a nonzero zero point must be one number (``int8-linear``'s uint8 operands at zero point 128).
    """
    out, x = node.outputs[0], node.inputs[0]
    if out.dtype not in TARGETS:
        return None, 0, f"quantizes to {out.dtype}; int8/int16/uint8 only"
    scale = constant(node.inputs[1], MAX_SCALE_ELEMENTS)
    if scale is None or not np.all(scale > 0):
        return None, 0, "the scale is not a positive constant"
    if scale.size > 1:
        rank = None if x.shape is None else len(x.shape)
        axis = node.attributes.get_int("axis", 1)
        if scale.ndim != 1 or rank is None or axis % rank != rank - 1 or node.attributes.get_int("block_size", 0):
            return None, 0, "a per-axis scale is supported on the last axis only"
    zero = constant(node.inputs[2], MAX_SCALE_ELEMENTS) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if zero is not None and np.any(zero != 0) and (zero.size != 1 or scale.size != 1):
        return None, 0, "a nonzero zero point is supported per tensor only"
    zero_point = 0 if zero is None else int(zero.ravel()[0])
    return scale.astype(np.float64).ravel() if scale.size > 1 else scale.astype(np.float64).reshape(()), zero_point, None


@register_pass("integer-chain", options=IntegerChainOptions, category="rewrite")
class IntegerChainPass(GraphoptPass):
    """Replace each QuantizeLinear's float input by integer ops, joining the integer islands."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        lowerer = Lowerer(graph, self.options, default_opset(model))
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
                if user.domain != "" or user.op_type not in SINK_LAYOUT or index != 0:
                    break
                chain.append(user)
                value = user.outputs[0]
            if not chain or not value.is_graph_output() or value.uses():
                continue
            integer = dq.inputs[0]
            zero = dq.inputs[2] if len(dq.inputs) > 2 else None
            producer = integer.producer()
            graphopt_op = producer is not None and producer.domain == ops.DOMAIN  # returns int32, see lower_dequantize
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
    def _lower_to(lowerer: Lowerer, q: ir.Node, scale: np.ndarray) -> ir.Value:
        """``x / scale`` as int32; a per-channel scale lowers at the finest channel's, then rescales."""
        x = q.inputs[0]
        if scale.ndim == 0:
            return lowerer.lower(x, float(scale))
        finest = float(scale.min())
        return lowerer.rescale(lowerer.lower(x, finest), finest / scale, x, q.name or "q")

    @staticmethod
    def _replace(lowerer: Lowerer, q: ir.Node, integer: ir.Value, source: str, zero_point: int) -> None:
        out = q.outputs[0]
        lo, hi = TARGETS[out.dtype]
        if zero_point:
            shift = lowerer.const(np.array(zero_point, np.int32), "zero_point")
            integer = lowerer.add("Add", [integer, shift], like=out).outputs[0]
        low = lowerer.const(np.array(lo, np.int32), f"{out.dtype.name.lower()}_min")
        high = lowerer.const(np.array(hi, np.int32), f"{out.dtype.name.lower()}_max")
        clip = lowerer.add("Clip", [integer, low, high], like=out)
        # which float value this integer tensor stands for, and at what scale (per-layer error)
        clip.metadata_props["pkg.graphopt.quantizes"] = source
        scale = constant(q.inputs[1], MAX_SCALE_ELEMENTS).astype(float)  # a number, or one per channel
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
