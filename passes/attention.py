"""Fuse scaled-dot-product attention into one ``pkg.graphopt::DotProductAttention`` node.

    MatMul(Q', K') -> [Mul|Div c] -> [cap·Tanh(x/cap)] -> [Add mask | Where(b, x, fill)] -> Softmax(last)
      -> [Where(IsNaN(p), 0, p) | Where(ReduceMax(mask) == -inf, 0, p)] -> MatMul(., V)
    ==>  DotProductAttention(Q, K, V, mask, scale, softcap, causal, nan_to_zero, zero_masked_rows)

Q' is Q times constant scalars (Mul/Div, folded into ``scale``); K' is Kᵀ times constant scalars:
    Transpose(x, perm)                          K = Transpose(x, perm with its last two swapped)
                                                  (x itself when that is the identity)
    Reshape(Transpose(Reshape(K), [0,2,1]))     K, when the shapes prove it swaps the last two axes
    anything else of known rank                 K = Transpose(K', swap the last two axes)
A constant all-zero mask is dropped; a constant top-left causal mask becomes ``causal=1``; a
boolean ``Where`` mask becomes the additive ``Where(b, 0, fill)``; no mask becomes a scalar 0.

Declined, with the reason: the model's opset is below 15 (the op's ONNX body needs CastLike); the
score scale or softcap is not a constant scalar; Softmax is not over the last axis; Q's or Kᵀ's rank
is unknown; a value inside the block is used outside it (ONNX Attention's ``qk_matmul_output``);
a ``Where`` mask fills with more than -1e30 (as an additive mask it would change fully-masked rows).

Why: every exporter's attention becomes one node carrying Q, K, V, scale and mask, which the
technique passes (Shiftmax, linear attention, binary attention) and the backends match once.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import pattern

from graphopt import ops, rewrite
from graphopt.pass_base import RulePass
from graphopt.ops.attention import ATTENTION_OP, MIN_OPSET
from graphopt.passes._canonical_utils import FLOAT_TYPES, check_opset, constant, default_opset
from graphopt.registry import register_pass

__all__ = ["AttentionOptions", "AttentionPass"]

_MASKED = -1e30  # a Where-mask fill at or below this is minus infinity to softmax
_MASK_LIMIT = 1 << 24  # largest constant mask (elements) inspected for zeros / causality


@dataclasses.dataclass(frozen=True)
class AttentionOptions:
    detect_causal: bool = True  # a constant top-left causal mask becomes causal=1


def _rank(value: ir.Value | None) -> int | None:
    return None if value is None or value.shape is None else len(value.shape)


def _scalar(value: ir.Value | None, rank: int | None) -> float | None:
    """A one-element constant that does not broadcast a rank-``rank`` tensor up, as a float."""
    array = constant(value)
    if array is None or array.size != 1 or array.ndim > (1 if rank is None else rank):
        return None
    return float(array.reshape(()))


def _peel_scale(value: ir.Value) -> tuple[ir.Value, float]:
    """Strip Mul/Div by constant scalars off ``value``: (the source, the product of the factors)."""
    factor = 1.0
    while (node := value.producer()) is not None and node.domain == "" and node.op_type in ("Mul", "Div"):
        a, b = node.inputs
        if node.op_type == "Mul" and (c := _scalar(a, _rank(b))) is not None:
            value, factor = b, factor * c
        elif (c := _scalar(b, _rank(a))) is not None and (node.op_type == "Mul" or c != 0):
            value, factor = a, factor * (c if node.op_type == "Mul" else 1.0 / c)
        else:
            break
    return value, factor


def _same_dims(a, b) -> bool:
    """Equal shapes: ints equal, symbolic dims equal by (known) name."""
    return len(a) == len(b) and all(x == y and (isinstance(x, int) or x.value is not None) for x, y in zip(a, b))


def _is(node: ir.Node | None, op_type: str) -> bool:
    return node is not None and node.domain == "" and node.op_type == op_type


def _key(kt: ir.Value) -> tuple[ir.Value, list[int] | None, float] | str:
    """(source, perm or None, factor) with K = Transpose(source, perm) · factor, or why not."""
    kt, factor = _peel_scale(kt)
    node = kt.producer()
    if _is(node, "Transpose"):
        x = node.inputs[0]
        perm = node.attributes.get_ints("perm", None) or list(reversed(range(_rank(x) or 0)))
        if len(perm) >= 2:
            x, inner = _peel_scale(x)
            back = [*perm[:-2], perm[-1], perm[-2]]
            return x, (None if back == sorted(back) else back), factor * inner
    t = node.inputs[0].producer() if _is(node, "Reshape") else None
    if _is(t, "Transpose") and _is(r := t.inputs[0].producer(), "Reshape"):
        k, flat = r.inputs[0], t.inputs[0]
        if list(t.attributes.get_ints("perm", [])) == [0, 2, 1] and None not in (k.shape, flat.shape, kt.shape):
            dims = list(k.shape)
            swapped = [*dims[:-2], *dims[:-3:-1]]
            if len(dims) >= 2 and _same_dims(list(flat.shape)[1:], dims[-2:]) and _same_dims(list(kt.shape), swapped):
                k, inner = _peel_scale(k)
                return k, None, factor * inner
    rank = _rank(kt)
    if rank is None or rank < 2:
        return f"rank of the key operand {kt.name} is {'unknown' if rank is None else rank}; cannot un-transpose it"
    return kt, [*range(rank - 2), rank - 1, rank - 2], factor


def _constant_mask(mask: ir.Value | None) -> np.ndarray | None:
    """The mask's contents when constant (ConstantOfShape of 0 included), else None."""
    array = constant(mask, max_size=_MASK_LIMIT)
    node = mask.producer() if mask is not None else None
    if array is None and _is(node, "ConstantOfShape") and (shape := constant(node.inputs[0])) is not None:
        fill = node.attributes.get("value")
        if fill is None or not fill.as_tensor().numpy().any():
            return np.zeros(shape.astype(np.int64), np.float32)
    return array


def _mask_kind(mask: np.ndarray | None, scores: ir.Value) -> str | None:
    """"zero" / "causal" when a constant mask adds nothing / -inf above the diagonal, else None."""
    dims = list(scores.shape) if scores.shape is not None else None
    if mask is None or dims is None or mask.ndim > len(dims):
        return None
    tail = dims[len(dims) - mask.ndim :]
    if not all(m in (1, d) for m, d in zip(mask.shape, tail)):
        return None  # the mask broadcasts the scores up
    if not mask.any():
        return "zero"
    if mask.ndim < 2 or any(d != 1 for d in mask.shape[:-2]) or list(mask.shape[-2:]) != tail[-2:]:
        return None
    square = mask.reshape(mask.shape[-2:])
    above = np.triu(np.ones(square.shape, bool), 1)
    return "causal" if (square[~above] == 0).all() and (square[above] <= _MASKED).all() else None


def _rows_guard_reason(node: ir.Node, axes, minus_inf, zero, masking, probs) -> str | None:
    """Why ``Where(Equal(ReduceMax(mask), -inf), 0, p)`` is not ONNX Attention's fully-masked-row guard."""
    if masking != "add":
        return "the fully-masked-row guard reads a mask that is not added to the scores"
    picked = constant(axes) if axes is not None else np.array(node.attributes.get_ints("axes", []))
    rank = _rank(node.inputs[0])
    if picked is None or [int(a) for a in picked.reshape(-1)] not in ([-1], [] if rank is None else [rank - 1]):
        return "the fully-masked-row guard does not reduce over the last axis"
    if not node.attributes.get_int("keepdims", 1):
        return "the fully-masked-row guard reduces with keepdims=0"
    if _scalar(minus_inf, None) != -np.inf or _scalar(zero, _rank(probs)) != 0.0:
        return "the fully-masked-row guard is not Where(max(mask) == -inf, 0, p)"
    return None


def _leak(context) -> ir.Value | None:
    """A value computed inside the match (not its output) that something outside uses."""
    inside = set(context.nodes)
    for node in context.nodes:
        for value in node.outputs:
            if value not in context.output_values and (
                value.is_graph_output() or any(use.node not in inside for use in value.uses())
            ):
                return value
    return None


def _zero(op, graph: ir.Graph, dtype: ir.DataType) -> ir.Value:
    """The shared scalar 0 of ``dtype`` (an initializer), created on first use."""
    name = f"graphopt_attention_zero_{dtype.name.lower()}"
    if name in graph.initializers:
        return graph.initializers[name]
    return op.initializer(ir.tensor(np.zeros((), dtype.numpy()), dtype=dtype, name=name), name=name)


class _Attention(pattern.RewriteRuleClassBase):
    """The attention spine; ``guard`` is the softmax guard this variant matches (None, isnan, rows)."""

    def __init__(self, name: str, guard: str | None, detect_causal: bool) -> None:
        super().__init__(name, remove_nodes=False)  # check() names the value that keeps a block alive
        self.guard, self.detect_causal = guard, detect_causal

    def pattern(self, op, q, kt, v, c, cap_div, cap_mul, mask, cond, fill, zero, axes, minus_inf):
        qk = op.MatMul(q, kt, _outputs=["qk"])
        scaled = pattern.OrValue([op.Mul(qk, c), op.Mul(c, qk), op.Div(qk, c), qk], tag_var="by",
                                 tag_values=["mul", "mul", "div", None])
        tanh = op.Tanh(op.Div(scaled, cap_div))
        capped = pattern.OrValue([op.Mul(tanh, cap_mul), op.Mul(cap_mul, tanh), scaled])
        logits = pattern.OrValue(
            [op.Add(capped, mask), op.Add(mask, capped),
             op.Where(cond, capped, fill), op.Where(cond, fill, capped), capped],
            tag_var="masking", tag_values=["add", "add", "keep", "drop", None],
        )
        probs = op.Softmax(logits, _allow_other_attributes=True, _outputs=["probs"])
        if self.guard == "isnan":
            probs = op.Where(op.IsNaN(probs), zero, probs)
        elif self.guard == "rows":
            reduce = [op.ReduceMax(mask, axes, _allow_other_attributes=True),
                      op.ReduceMax(mask, _allow_other_attributes=True)]  # axes as input (>= 18) / attribute
            probs = op.Where(op.Equal(pattern.OrValue(reduce, name="row_max"), minus_inf), zero, probs)
        return op.MatMul(probs, v)

    def check(self, context, q, kt, qk, probs, c=None, by=None, cap_div=None, cap_mul=None, mask=None, masking=None,
              cond=None, fill=None, zero=None, axes=None, minus_inf=None, row_max=None, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if not check_opset(context, result, ATTENTION_OP.name, MIN_OPSET):
            return result
        if (leak := _leak(context)) is not None:
            return result.fail(f"{leak.name} is also used outside the attention block", leak)
        softmax, rank = probs.producer(), _rank(qk)
        axis = softmax.attributes.get_int("axis", -1 if default_opset(context.model) >= 13 else 1)
        if axis != -1 and (_rank(softmax.inputs[0]) is None or axis != _rank(softmax.inputs[0]) - 1):
            return result.fail(f"Softmax is over axis {axis}, not the last axis", softmax)
        scale = 1.0 if by is None else _scalar(c, rank)
        if scale is None or scale == 0:
            return result.fail("the scale of Q·Kᵀ is not a nonzero constant scalar", c)
        softcap = 0.0
        if cap_div is not None:
            softcap = _scalar(cap_div, rank)
            if softcap is None or softcap <= 0 or _scalar(cap_mul, rank) != softcap:
                return result.fail("the softcap divisor and factor are not the same positive constant", cap_div)
        q_src, q_factor = _peel_scale(q)
        if (_rank(q_src) or 0) < 2:
            return result.fail(f"rank of Q ({q_src.name}) is unknown or below 2", q_src)
        if (dtype := q_src.dtype or qk.dtype) is None or dtype not in FLOAT_TYPES:
            return result.fail(f"Q's element type is {dtype.name if dtype else 'unknown'}, not a known float type", q)
        if isinstance(key := _key(kt), str):
            return result.fail(key, kt)
        k_src, k_perm, k_factor = key
        attrs = {"scale": (scale if by != "div" else 1.0 / scale) * q_factor * k_factor, "softcap": softcap,
                 "causal": 0, "nan_to_zero": 0, "zero_masked_rows": 0}  # all explicit: onnx's inliner drops defaults
        where = None
        if masking in ("keep", "drop"):
            value = _scalar(fill, rank)
            if value is None or value > _MASKED:
                return result.fail(f"Where-mask fill {value} is not a constant at or below {_MASKED:g}", fill)
            where, bits = (cond, fill, masking == "keep"), constant(cond, max_size=_MASK_LIMIT)
            kind = None if bits is None else _mask_kind(np.where(bits == (masking == "keep"), 0.0, value), qk)
        else:
            kind = _mask_kind(_constant_mask(mask), qk)
        if kind == "causal" and not self.detect_causal:
            kind = None
        if kind is not None:  # the mask is zeros or the causal triangle: no row is ever fully masked
            mask = where = None
            attrs["causal"] = int(kind == "causal")
        if self.guard == "isnan":
            if _scalar(zero, _rank(probs)) != 0.0:
                return result.fail("the IsNaN guard does not replace NaN with 0", zero)
            attrs["nan_to_zero"] = 1
        elif self.guard == "rows":
            if reason := _rows_guard_reason(row_max.producer(), axes, minus_inf, zero, masking, probs):
                return result.fail(reason, row_max.producer())
            attrs["zero_masked_rows"] = int(kind is None)
        if mask is None and isinstance(context.graph_or_function, ir.Function):
            return result.fail("the block needs a new constant (zero mask) but is inside a function; inline first")
        self._plan = (q_src, k_src, k_perm, mask, where, dtype, context.graph_or_function, attrs)
        return result

    def rewrite(self, op, v, **_):
        q, k, k_perm, mask, where, dtype, graph, attrs = self._plan
        if k_perm is not None:
            k = op.Transpose(k, perm=k_perm)
        if where is not None:
            cond, fill, keep = where
            zero = _zero(op, graph, fill.dtype or dtype)
            mask = op.Where(cond, zero, fill) if keep else op.Where(cond, fill, zero)
        elif mask is None:
            mask = _zero(op, graph, dtype)
        return op.DotProductAttention(q, k, v, mask, **attrs, _domain=ops.DOMAIN)


@register_pass("attention", options=AttentionOptions, category="canonicalize")
class AttentionPass(RulePass):
    """Fuse MatMul/scale/mask/Softmax/MatMul attention into pkg.graphopt DotProductAttention."""

    def rules(self):
        causal = self.options.detect_causal
        return [_Attention.rule(f"attention{suffix}", guard, causal)
                for suffix, guard in (("", None), ("-isnan-guard", "isnan"), ("-masked-rows-guard", "rows"))]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        rules = self.rules()
        outcome = self.apply_rules(model, rules, explain=False)
        if outcome.total:  # the rules keep the matched nodes (remove_nodes=False): drop the dead ones
            common_passes.RemoveUnusedNodesPass()(model)
        outcome.declines = rewrite.explain_rules(model, rules)
        outcome.declines += _unmatched_softmaxes(model, {d.node for d in outcome.declines})
        return ir.passes.PassResult(model, modified=self.record(outcome))


def _unmatched_softmaxes(model: ir.Model, declined: set[str]) -> list[rewrite.Decline]:
    """A Softmax left unfused that no rule even began to match: say so, with what feeds it, so every
    attention the inspector would count is fused or explained (DeBERTa's disentangled scores,
    MPNet's relative-position bias added after the scaling)."""
    left = []
    for node in model.graph:
        if node.op_type != "Softmax" or node.domain not in ("", "ai.onnx") or (node.name or "") in declined:
            continue
        producer = node.inputs[0].producer() if node.inputs[0] is not None else None
        feeds = producer.op_type if producer is not None else "a graph input"
        left.append(rewrite.Decline("attention", node.name or "?", f"Softmax fed by {feeds} is not the scores of "
                                    "MatMul(Q, Kᵀ) [scaled] [+ mask] the rules know (e.g. relative-position terms added in)"))
    return left
