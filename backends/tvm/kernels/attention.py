"""TE kernels for ``pkg.graphopt::DotProductAttention``: ``softmax(cap(scale·Q·Kᵀ) + mask)·V``.

Three PrimFuncs, not one, so each has a shape the CPU schedule rules know and FuseOps can work
with: the score matmul (a batched matmul with a scale/softcap epilogue), the masked row softmax
with the op's guards (reductions over the last axis, like TVM's softmax), and the output matmul.
Leading (batch/head) axes broadcast as in MatMul; the mask broadcasts to [.., Sq, Sk].
float16 is computed in float32 and rounded once at the end. Spec: ``graphopt/ops/attention.py``.
"""

from __future__ import annotations

import math

from tvm import relax, te, tirx

from graphopt import ops

from ._common import broadcast_load, broadcast_shape, op_attributes


# max with identity -inf (te.max starts from the dtype's lowest finite value, which would make a
# fully masked row's mask maximum -FLT_MAX instead of -inf)
_max_from_minus_inf = te.comm_reducer(lambda a, b: tirx.max(a, b), lambda dtype: tirx.const(-math.inf, dtype),
                                      name="max_from_minus_inf")


def _wide(dtype: str) -> str:
    return "float32" if dtype in ("float16", "bfloat16") else dtype


def attention_scores(q: te.Tensor, k: te.Tensor, scale: float = 1.0, softcap: float = 0.0) -> te.Tensor:
    """``cap(scale · Q·Kᵀ)`` over the last two axes, [batch.., Sq, Sk], in the compute dtype."""
    acc = _wide(str(q.dtype))
    batch = broadcast_shape(q.shape[:-2], k.shape[:-2])
    d = te.reduce_axis((0, q.shape[-1]), name="d")

    def dot(*index):
        lead, i, j = index[:-2], index[-2], index[-1]
        return te.sum(broadcast_load(q, (*lead, i, d)).astype(acc) * broadcast_load(k, (*lead, j, d)).astype(acc), axis=d)

    raw = te.compute([*batch, q.shape[-2], k.shape[-2]], dot, name="attention_qk")

    def capped(*index):
        s = raw(*index) * tirx.const(scale, acc)
        if softcap > 0:
            cap = tirx.const(softcap, acc)
            s = cap * tirx.tanh(s / cap)
        return s

    return te.compute(raw.shape, capped, name="attention_scores")


def attention_probs(scores: te.Tensor, mask: te.Tensor, causal: int = 0, nan_to_zero: int = 0,
                    zero_masked_rows: int = 0) -> te.Tensor:
    """Row softmax of ``scores + mask`` (-inf above the diagonal if causal), with the op's guards."""
    dtype = str(scores.dtype)
    shape = broadcast_shape(scores.shape, mask.shape)
    rows = shape[:-1]
    minus_inf = tirx.const(-math.inf, dtype)
    zero = tirx.const(0, dtype)

    def logit(index):
        value = broadcast_load(scores, index) + broadcast_load(mask, index).astype(dtype)
        if causal:
            value = tirx.Select(index[-1] > index[-2], minus_inf, value)
        return value

    logits = te.compute(shape, lambda *i: logit(i), name="attention_logits")
    k = te.reduce_axis((0, shape[-1]), name="k")
    row_max = te.compute(rows, lambda *r: te.max(logits(*r, k), axis=k), name="attention_row_max")
    exps = te.compute(shape, lambda *i: te.exp(logits(*i) - row_max(*i[:-1])), name="attention_exp")
    j = te.reduce_axis((0, shape[-1]), name="j")
    total = te.compute(rows, lambda *r: te.sum(exps(*r, j), axis=j), name="attention_row_sum")
    if zero_masked_rows:
        m = te.reduce_axis((0, shape[-1]), name="m")
        mask_max = te.compute(rows, lambda *r: _max_from_minus_inf(broadcast_load(mask, (*r, m)).astype(dtype), axis=m),
                              name="attention_mask_row_max")

    def prob(*index):
        p = exps(*index) / total(*index[:-1])
        if nan_to_zero:
            p = tirx.Select(tirx.isnan(p), zero, p)
        if zero_masked_rows:
            p = tirx.Select(mask_max(*index[:-1]) == minus_inf, zero, p)
        return p

    return te.compute(shape, prob, name="attention_probs")


def attention_output(probs: te.Tensor, v: te.Tensor, out_dtype: str | None = None) -> te.Tensor:
    """``P · V`` over the last two axes (batch axes broadcast), cast to ``out_dtype``."""
    acc = str(probs.dtype)
    batch = broadcast_shape(probs.shape[:-2], v.shape[:-2])
    j = te.reduce_axis((0, v.shape[-2]), name="j")

    def dot(*index):
        lead, i, e = index[:-2], index[-2], index[-1]
        return te.sum(broadcast_load(probs, (*lead, i, j)) * broadcast_load(v, (*lead, j, e)).astype(acc), axis=j)

    out = te.compute([*batch, probs.shape[-2], v.shape[-1]], dot, name="attention_pv")
    if out_dtype is None or out_dtype == acc:
        return out
    return te.compute(out.shape, lambda *i: out(*i).astype(out_dtype), name="attention_out")


@ops.implements("DotProductAttention", "tvm", part="te")
def dot_product_attention(q: te.Tensor, k: te.Tensor, v: te.Tensor, mask: te.Tensor, scale: float = 1.0,
                          softcap: float = 0.0, causal: int = 0, nan_to_zero: int = 0,
                          zero_masked_rows: int = 0) -> te.Tensor:
    """The whole op as one TE graph (the converter emits the three parts as separate PrimFuncs)."""
    scores = attention_scores(q, k, scale=scale, softcap=softcap)
    probs = attention_probs(scores, mask, causal=causal, nan_to_zero=nan_to_zero, zero_masked_rows=zero_masked_rows)
    return attention_output(probs, v, out_dtype=str(q.dtype))


@ops.implements("DotProductAttention", "tvm")
def convert(bb: relax.BlockBuilder, inputs: list, attrs: dict) -> relax.Expr:
    a = op_attributes("DotProductAttention", attrs)
    q, k, v, mask = (list(inputs) + [None] * 4)[:4]
    dtype = str(q.ty.dtype.dtype)
    if mask is None:
        mask = relax.const(0, dtype)
    scores = bb.emit_te(attention_scores, q, k, scale=float(a["scale"]), softcap=float(a["softcap"]),
                        primfunc_name_hint="graphopt_attention_scores")
    probs = bb.emit_te(attention_probs, scores, mask, causal=int(a["causal"]), nan_to_zero=int(a["nan_to_zero"]),
                       zero_masked_rows=int(a["zero_masked_rows"]), primfunc_name_hint="graphopt_attention_softmax")
    return bb.emit_te(attention_output, probs, v, out_dtype=dtype,
                      primfunc_name_hint="graphopt_attention_output")
