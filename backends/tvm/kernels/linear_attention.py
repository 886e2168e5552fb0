"""TE kernels for ``pkg.graphopt::LinearizedAttention`` (spec: ``graphopt/ops/linear_attention.py``).

Non-causal, the linear form itself, in four PrimFuncs whose cost is linear in N:
    kv = Kfᵀ·V [.., F, Dv],  ksum = Σ_j Kf_j [.., F],  num = Qf·kv,  Y = num / (Qf·ksum + eps)
Causal, the quadratic masked form (a correct reference kernel, O(N²)): scores Qf·Kfᵀ, weighted
by ``decay^(i-j)`` for j <= i (else 0), then ``(w·V) / (Σ_j w + eps)``. The converter first asks
``linear_attention_fast.emit`` for the hand-scheduled CPU kernels (chunked causal, linear in N,
Lightning-Attention-2 style); these TE computes are the path where those do not apply.
Leading (batch/head) axes broadcast as in MatMul; float16 is computed in float32 and rounded once.
"""

from __future__ import annotations

from tvm import relax, te, tirx

from graphopt import ops

from ._common import broadcast_load, broadcast_shape, op_attributes
from .linear_attention_fast import emit as emit_fast

__all__ = ["linear_kv", "linear_ksum", "linear_output", "causal_weights", "causal_output", "linearized_attention"]


def _wide(dtype: str) -> str:
    return "float32" if dtype in ("float16", "bfloat16") else dtype


def linear_kv(kf: te.Tensor, v: te.Tensor) -> te.Tensor:
    """Kfᵀ·V [.., F, Dv] in the compute dtype."""
    acc = _wide(str(kf.dtype))
    batch = broadcast_shape(kf.shape[:-2], v.shape[:-2])
    j = te.reduce_axis((0, kf.shape[-2]), name="j")

    def dot(*index):
        lead, f, e = index[:-2], index[-2], index[-1]
        return te.sum(broadcast_load(kf, (*lead, j, f)).astype(acc) * broadcast_load(v, (*lead, j, e)).astype(acc), axis=j)

    return te.compute([*batch, kf.shape[-1], v.shape[-1]], dot, name="linear_attention_kv")


def linear_ksum(kf: te.Tensor) -> te.Tensor:
    """Σ_j Kf_j [.., F] in the compute dtype."""
    acc = _wide(str(kf.dtype))
    s = te.reduce_axis((0, kf.shape[-2]), name="s")
    return te.compute([*kf.shape[:-2], kf.shape[-1]], lambda *i: te.sum(kf(*i[:-1], s, i[-1]).astype(acc), axis=s),
                      name="linear_attention_ksum")


def linear_output(qf: te.Tensor, kv: te.Tensor, ksum: te.Tensor, eps: float = 1e-6) -> te.Tensor:
    """``Qf·kv / (Qf·ksum + eps)``, cast to Qf's dtype."""
    acc = str(kv.dtype)
    batch = broadcast_shape(qf.shape[:-2], kv.shape[:-2], ksum.shape[:-1])
    f = te.reduce_axis((0, qf.shape[-1]), name="f")
    g = te.reduce_axis((0, qf.shape[-1]), name="g")
    rows = [*batch, qf.shape[-2]]
    den = te.compute(rows, lambda *r: te.sum(broadcast_load(qf, (*r, g)).astype(acc) * broadcast_load(ksum, (*r[:-1], g)),
                                             axis=g), name="linear_attention_den")

    def num(*index):
        lead, i, e = index[:-2], index[-2], index[-1]
        return te.sum(broadcast_load(qf, (*lead, i, f)).astype(acc) * broadcast_load(kv, (*lead, f, e)), axis=f)

    numerator = te.compute([*rows, kv.shape[-1]], num, name="linear_attention_num")
    eps_c = tirx.const(eps, acc)
    return te.compute(numerator.shape, lambda *i: (numerator(*i) / (den(*i[:-1]) + eps_c)).astype(str(qf.dtype)),
                      name="linear_attention_out")


def causal_weights(qf: te.Tensor, kf: te.Tensor, decay: te.Tensor) -> te.Tensor:
    """``(Qf·Kfᵀ)_ij · decay^(i-j)`` for j <= i, else 0: [batch.., Sq, Sk], in the compute dtype."""
    acc = _wide(str(qf.dtype))
    batch = broadcast_shape(qf.shape[:-2], kf.shape[:-2], decay.shape[:-2] if len(decay.shape) >= 2 else [])
    d = te.reduce_axis((0, qf.shape[-1]), name="d")

    def dot(*index):
        lead, i, j = index[:-2], index[-2], index[-1]
        return te.sum(broadcast_load(qf, (*lead, i, d)).astype(acc) * broadcast_load(kf, (*lead, j, d)).astype(acc), axis=d)

    shape = [*batch, qf.shape[-2], kf.shape[-2]]
    scores = te.compute(shape, dot, name="linear_attention_scores")

    def weight(*index):
        i, j = index[-2], index[-1]
        lam = broadcast_load(decay, index).astype(acc)
        power = tirx.power(lam, (i - j).astype(acc))
        return tirx.Select(j <= i, scores(*index) * tirx.Select(i == j, tirx.const(1, acc), power), tirx.const(0, acc))

    return te.compute(shape, weight, name="linear_attention_weights")


def causal_output(weights: te.Tensor, v: te.Tensor, eps: float = 1e-6, out_dtype: str | None = None) -> te.Tensor:
    """``(w·V) / (Σ_j w + eps)`` over the last two axes, cast to ``out_dtype``."""
    acc = str(weights.dtype)
    batch = broadcast_shape(weights.shape[:-2], v.shape[:-2])
    j = te.reduce_axis((0, v.shape[-2]), name="j")
    s = te.reduce_axis((0, weights.shape[-1]), name="s")
    den = te.compute(weights.shape[:-1], lambda *r: te.sum(weights(*r, s), axis=s), name="linear_attention_causal_den")

    def dot(*index):
        lead, i, e = index[:-2], index[-2], index[-1]
        return te.sum(broadcast_load(weights, (*lead, i, j)) * broadcast_load(v, (*lead, j, e)).astype(acc), axis=j)

    shape = [*batch, weights.shape[-2], v.shape[-1]]
    num = te.compute(shape, dot, name="linear_attention_causal_num")
    eps_c = tirx.const(eps, acc)
    return te.compute(shape, lambda *i: (num(*i) / (broadcast_load(den, i[:-1]) + eps_c)).astype(out_dtype or acc),
                      name="linear_attention_causal_out")


@ops.implements("LinearizedAttention", "tvm", part="te")
def linearized_attention(qf: te.Tensor, kf: te.Tensor, v: te.Tensor, decay: te.Tensor, causal: int = 0,
                         eps: float = 1e-6) -> te.Tensor:
    """The whole op as one TE graph (the converter emits its parts as separate PrimFuncs)."""
    if causal:
        return causal_output(causal_weights(qf, kf, decay), v, eps=eps, out_dtype=str(qf.dtype))
    return linear_output(qf, linear_kv(kf, v), linear_ksum(kf), eps=eps)


@ops.implements("LinearizedAttention", "tvm")
def convert(bb: relax.BlockBuilder, inputs: list, attrs: dict) -> relax.Expr:
    a = op_attributes("LinearizedAttention", attrs)
    qf, kf, v, decay = (list(inputs) + [None] * 4)[:4]
    dtype = str(qf.ty.dtype.dtype)
    eps = float(a["eps"])
    if decay is None:
        decay = relax.const(1, dtype)
    # the hand-scheduled CPU kernels (linear in N, causal chunked) where they apply (float32, static
    # shapes, a CPU target in scope); the TE computes below otherwise (float16, CUDA, dynamic shapes)
    fast = emit_fast(bb, qf, kf, v, decay, causal=int(a["causal"]), eps=eps)
    if fast is not None:
        return fast
    if int(a["causal"]):
        weights = bb.emit_te(causal_weights, qf, kf, decay, primfunc_name_hint="graphopt_linear_attention_weights")
        return bb.emit_te(causal_output, weights, v, eps=eps, out_dtype=dtype,
                          primfunc_name_hint="graphopt_linear_attention_causal_output")
    kv = bb.emit_te(linear_kv, kf, v, primfunc_name_hint="graphopt_linear_attention_kv")
    ksum = bb.emit_te(linear_ksum, kf, primfunc_name_hint="graphopt_linear_attention_ksum")
    return bb.emit_te(linear_output, qf, kv, ksum, eps=eps, primfunc_name_hint="graphopt_linear_attention_output")
