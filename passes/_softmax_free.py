"""The shared part of ``sigmoid-attention`` and ``softplus-attention``: DotProductAttention's
logits as plain ONNX ops, and the rule skeleton that swaps softmax for an elementwise function.

    logits = [cap·tanh(s/cap)](scale · Q·Kᵀ) + mask  [Where(key > query, -inf, .) if causal]

Kᵀ is a Transpose of K's last two axes (K's rank must be known); the causal triangle is built from
the shapes at run time (Trilu), so any sequence length works. The output MatMul carries the replaced
attention's output name (``SITE_KEY``) for ``graphopt.attention_fidelity``.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt import ops
from graphopt.ops.linear_attention import SITE_KEY
from graphopt.passes._canonical_utils import FLOAT_TYPES, constant

__all__ = ["SoftmaxFreeRule", "logits"]


def _const(op, value, dtype: ir.DataType) -> ir.Value:
    return op.Constant(value=ir.tensor(np.asarray(value, dtype=dtype.numpy())))


def logits(op, q: ir.Value, k: ir.Value, mask: ir.Value | None, *, dtype: ir.DataType, k_rank: int, scale: float,
           softcap: float, causal: int) -> ir.Value:
    kt = op.Transpose(k, perm=[*range(k_rank - 2), k_rank - 1, k_rank - 2])
    scores = op.MatMul(q, kt)
    if scale != 1.0:
        scores = op.Mul(scores, _const(op, scale, dtype))
    if softcap > 0:
        cap = _const(op, softcap, dtype)
        scores = op.Mul(op.Tanh(op.Div(scores, cap)), cap)
    if mask is not None:
        scores = op.Add(scores, op.CastLike(mask, scores))
    if causal:
        square = op.Concat(op.Shape(q, start=-2, end=-1), op.Shape(k, start=-2, end=-1), axis=0)
        ones = op.ConstantOfShape(square, value=ir.tensor(np.ones(1, np.int64)))
        above = op.Cast(op.Trilu(ones, op.Constant(value=ir.tensor(np.asarray(1, np.int64))), upper=1), to=ir.DataType.BOOL)
        scores = op.Where(above, _const(op, -np.inf, dtype), scores)
    return scores


class SoftmaxFreeRule(pattern.RewriteRuleClassBase):
    """DotProductAttention(Q, K, V, mask) -> MatMul(weights(logits), V); subclasses say how the
    logits become weights (``weights``) and may decline more (``check_more``)."""

    def pattern(self, op, q, k, v, mask):
        return op.DotProductAttention(q, k, v, mask, _domain=ops.DOMAIN, _allow_other_attributes=True, _outputs=["out"])

    def check_more(self, node: ir.Node, q: ir.Value, k: ir.Value, result: pattern.MatchResult) -> pattern.MatchResult:
        return result

    def check(self, context, q, k, v, mask, out, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        self._plan = None
        node = out.producer()
        if (dtype := q.dtype) not in FLOAT_TYPES:
            return result.fail(f"Q's element type is {dtype.name if dtype else 'unknown'}, not float", q)
        k_rank = None if k.shape is None else len(k.shape)
        if k_rank is None or k_rank < 2:
            return result.fail(f"the rank of K ({k.name}) is {'unknown' if k_rank is None else k_rank}; cannot transpose it", k)
        array = constant(mask, max_size=1 << 22)
        attrs = node.attributes
        self._site = out.name or ""
        self._plan = dict(dtype=dtype, k_rank=k_rank, scale=attrs.get_float("scale", 1.0),
                          softcap=attrs.get_float("softcap", 0.0), causal=attrs.get_int("causal", 0),
                          drop_mask=array is not None and not array.any())
        return self.check_more(node, q, k, result)

    def weights(self, op, scores: ir.Value, k: ir.Value, dtype: ir.DataType) -> ir.Value:
        raise NotImplementedError

    def rewrite(self, op, q, k, v, mask, **_):
        plan = dict(self._plan)
        dtype = plan["dtype"]
        scores = logits(op, q, k, None if plan.pop("drop_mask") else mask, **plan)
        y = op.MatMul(self.weights(op, scores, k, dtype), v)
        y.producer().metadata_props[SITE_KEY] = self._site
        return y
