"""TE kernels for ``pkg.graphopt::WindowedLinearAttention`` (LoLCATs' hybrid; spec:
``graphopt/ops/hybrid_attention.py``), in the quadratic masked form, one PrimFunc per shape the CPU
schedule rules know: the two score matmuls (``attention_scores`` of the DotProductAttention kernel:
scale·QKᵀ and Qf·Kfᵀ), the window's row maximum (a row reduction), the mixed weights
``γ·exp(s - m)`` in the window / ``qf·kf`` outside (elementwise), their row sums, ``W·V`` (a batched
matmul) and the division. float16 is computed in float32 and rounded once at the end.
The converter takes the hand-scheduled kernel of ``hybrid_attention_fast`` first (linear in N:
float32, static shapes, Sq = Sk, a CPU target); these TE computes are the fallback (float16, CUDA,
dynamic shapes, decode).
"""

from __future__ import annotations

import math

from tvm import relax, te, tirx

from graphopt import ops

from ._common import broadcast_load, broadcast_shape, op_attributes
from .attention import _max_from_minus_inf, attention_output, attention_scores
from .hybrid_attention_fast import emit as emit_fast

__all__ = ["hybrid_output", "hybrid_row_max", "hybrid_weights", "windowed_linear_attention"]


def _masks(i, j, window: int, causal: int):
    far = tirx.abs(i - j)
    visible = tirx.const(True, "bool") if not causal else (j <= i)
    return tirx.all(far < window, visible), tirx.all(far >= window, visible)


def hybrid_row_max(scores: te.Tensor, window: int = 64, causal: int = 0) -> te.Tensor:
    """max over the window's keys of the scores [.., Sq] (-inf for an empty window)."""
    j = te.reduce_axis((0, scores.shape[-1]), name="j")
    minus_inf = tirx.const(-math.inf, str(scores.dtype))

    def row(*r):
        inside, _ = _masks(r[-1], j, window, causal)
        return _max_from_minus_inf(tirx.Select(inside, scores(*r, j), minus_inf), axis=j)

    return te.compute(scores.shape[:-1], row, name="hybrid_row_max")


def hybrid_weights(scores: te.Tensor, linear: te.Tensor, row_max: te.Tensor, gamma: te.Tensor, window: int = 64,
                   causal: int = 0) -> te.Tensor:
    """γ·exp(s - m) inside the window, qf·kf outside it (0 where causal hides the key)."""
    dtype = str(scores.dtype)
    shape = broadcast_shape(scores.shape, linear.shape)
    zero = tirx.const(0, dtype)

    def weight(*index):
        inside, outside = _masks(index[-2], index[-1], window, causal)
        m = broadcast_load(row_max, index[:-1])
        shift = tirx.Select(m == tirx.const(-math.inf, dtype), zero, m)
        soft = tirx.exp(broadcast_load(scores, index) - shift) * broadcast_load(gamma, index).astype(dtype)
        return tirx.Select(inside, soft, tirx.Select(outside, broadcast_load(linear, index), zero))

    return te.compute(shape, weight, name="hybrid_weights")


def hybrid_row_sum(weights: te.Tensor) -> te.Tensor:
    j = te.reduce_axis((0, weights.shape[-1]), name="j")
    return te.compute(weights.shape[:-1], lambda *r: te.sum(weights(*r, j), axis=j), name="hybrid_row_sum")


def hybrid_output(num: te.Tensor, den: te.Tensor, out_dtype: str) -> te.Tensor:
    return te.compute(num.shape, lambda *i: (num(*i) / broadcast_load(den, i[:-1])).astype(out_dtype), name="hybrid_out")


@ops.implements("WindowedLinearAttention", "tvm", part="te")
def windowed_linear_attention(q: te.Tensor, k: te.Tensor, qf: te.Tensor, kf: te.Tensor, v: te.Tensor, gamma: te.Tensor,
                              window: int = 64, scale: float = 1.0, causal: int = 0) -> te.Tensor:
    """The whole op as one TE graph (the converter emits its parts as separate PrimFuncs)."""
    scores = attention_scores(q, k, scale=scale)
    linear = attention_scores(qf, kf)
    weights = hybrid_weights(scores, linear, hybrid_row_max(scores, window, causal), gamma, window, causal)
    return hybrid_output(attention_output(weights, v), hybrid_row_sum(weights), str(q.dtype))


@ops.implements("WindowedLinearAttention", "tvm")
def convert(bb: relax.BlockBuilder, inputs: list, attrs: dict) -> relax.Expr:
    a = op_attributes("WindowedLinearAttention", attrs)
    q, k, qf, kf, v, gamma = (list(inputs) + [None] * 6)[:6]
    dtype = str(q.ty.dtype)
    window, causal = int(a["window"]), int(a["causal"])
    if gamma is None:
        gamma = relax.const(1, dtype)
    fast = emit_fast(bb, q, k, qf, kf, v, gamma, window=window, scale=float(a["scale"]), causal=causal)
    if fast is not None:
        return fast
    scores = bb.emit_te(attention_scores, q, k, scale=float(a["scale"]), primfunc_name_hint="graphopt_hybrid_scores")
    linear = bb.emit_te(attention_scores, qf, kf, primfunc_name_hint="graphopt_hybrid_linear_scores")
    row_max = bb.emit_te(hybrid_row_max, scores, window=window, causal=causal, primfunc_name_hint="graphopt_hybrid_row_max")
    weights = bb.emit_te(hybrid_weights, scores, linear, row_max, gamma, window=window, causal=causal,
                         primfunc_name_hint="graphopt_hybrid_weights")
    num = bb.emit_te(attention_output, weights, v, primfunc_name_hint="graphopt_hybrid_num")
    den = bb.emit_te(hybrid_row_sum, weights, primfunc_name_hint="graphopt_hybrid_den")
    return bb.emit_te(hybrid_output, num, den, out_dtype=dtype, primfunc_name_hint="graphopt_hybrid_output")
