"""TVM converter for ``pkg.graphopt::LinearAttentionStep`` (spec: ``graphopt/ops/linear_attention_step.py``).

    (Qf, Kf, V [.., 1, F|Dv], S [.., F, Dv], z [.., 1, F], decay) => (Y, S_next, z_next)

float32, static shapes, one token, a CPU target in scope: the hand-scheduled recurrent step of
``linear_attention_fast.recurrent_step_func`` (O(F·Dv) per head, whatever the context length),
reading the tensors as [BH, ..] through flat aliases (z [.., 1, F] has [BH, F]'s layout). Anything
else (float16, CUDA, dynamic shapes, a block of several tokens, leading axes that broadcast): the
body's formula as TE computes (``linear_attention_step``; also O(F·Dv), untuned).
"""

from __future__ import annotations

import numpy as np
from tvm import relax, te, tirx
from tvm.target import Target

from graphopt import ops

from ._common import broadcast_load, broadcast_shape, op_attributes
from .linear_attention_fast import DTYPE, _dtype, _head_decay, recurrent_step_func, static_shape

__all__ = ["convert", "linear_attention_step"]


def _fast(bb: relax.BlockBuilder, qf, kf, v, s, z, decay, eps: float) -> relax.Expr | None:
    target = Target.current(allow_none=True)
    if target is None or target.kind.name not in ("llvm", "c"):
        return None
    shapes = [static_shape(x) for x in (qf, kf, v, s, z)]
    if any(shape is None or len(shape) < 2 for shape in shapes) or any(_dtype(x) != DTYPE for x in (qf, kf, v, s, z)):
        return None
    q_shape, k_shape, v_shape, s_shape, z_shape = shapes
    lead, f, dv = q_shape[:-2], q_shape[-1], v_shape[-1]
    if (q_shape != [*lead, 1, f] or k_shape != q_shape or v_shape != [*lead, 1, dv] or s_shape != [*lead, f, dv]
            or z_shape != [*lead, 1, f]):
        return None
    bh = int(np.prod(lead, dtype=np.int64)) if lead else 1
    d = _head_decay(bb, decay, lead, bh)
    if d is None:
        return None
    from graphopt.backends.tvm.cpu.common import vector_lanes  # noqa: PLC0415

    flat = [bb.emit(relax.op.reshape(x, shape)) for x, shape in
            ((qf, [bh, 1, f]), (kf, [bh, 1, f]), (v, [bh, 1, dv]), (s, [bh, f, dv]), (z, [bh, f]))]
    gvar = bb.add_func(recurrent_step_func(bh, f, dv, vector_lanes(target, DTYPE), eps).without_attr("global_symbol"),
                       "graphopt_linear_attention_step")
    outs = bb.emit(relax.call_tir(gvar, [*flat[:3], d, *flat[3:]],
                                  [relax.TensorType([bh, 1, dv], DTYPE), relax.TensorType([bh, f, dv], DTYPE),
                                   relax.TensorType([bh, f], DTYPE)]))
    y, s_next, z_next = (bb.emit(relax.TupleGetItem(outs, i)) for i in range(3))
    return relax.Tuple([bb.emit(relax.op.reshape(y, [*lead, 1, dv])), bb.emit(relax.op.reshape(s_next, s_shape)),
                        bb.emit(relax.op.reshape(z_next, z_shape))])


@ops.implements("LinearAttentionStep", "tvm", part="te")
def linear_attention_step(qf: te.Tensor, kf: te.Tensor, v: te.Tensor, s: te.Tensor, z: te.Tensor, decay: te.Tensor,
                          eps: float = 1e-6) -> list[te.Tensor]:
    """(Y, S_next, z_next) as TE computes (the body's formula), leading axes broadcast; any float dtype."""
    dtype = str(s.dtype)
    lead = broadcast_shape(qf.shape[:-2], kf.shape[:-2], v.shape[:-2], s.shape[:-2], z.shape[:-2])
    f, dv = kf.shape[-1], v.shape[-1]
    t = te.reduce_axis((0, kf.shape[-2]), name="t")
    u = te.reduce_axis((0, kf.shape[-2]), name="u")

    def outer_sum(*index):
        lead_i, a, e = index[:-2], index[-2], index[-1]
        return te.sum(broadcast_load(kf, (*lead_i, t, a)).astype(dtype) * broadcast_load(v, (*lead_i, t, e)).astype(dtype), axis=t)

    kv = te.compute([*lead, f, dv], outer_sum, name="linear_attention_step_kv")
    k_sum = te.compute([*lead, 1, f], lambda *i: te.sum(broadcast_load(kf, (*i[:-2], u, i[-1])).astype(dtype), axis=u),
                       name="linear_attention_step_k_sum")
    s_out = te.compute(kv.shape, lambda *i: broadcast_load(s, i) * broadcast_load(decay, i).astype(dtype) + kv(*i),
                       name="linear_attention_step_state")
    z_out = te.compute(k_sum.shape, lambda *i: broadcast_load(z, i) * broadcast_load(decay, i).astype(dtype) + k_sum(*i),
                       name="linear_attention_step_ksum")
    g = te.reduce_axis((0, f), name="g")
    h = te.reduce_axis((0, f), name="h")
    rows = [*lead, qf.shape[-2]]
    den = te.compute(rows, lambda *r: te.sum(broadcast_load(qf, (*r, g)).astype(dtype) * z_out(*r[:-1], 0, g), axis=g),
                     name="linear_attention_step_den")
    num = te.compute([*rows, dv], lambda *i: te.sum(broadcast_load(qf, (*i[:-1], h)).astype(dtype) * s_out(*i[:-2], h, i[-1]),
                                                   axis=h), name="linear_attention_step_num")
    eps_c = tirx.const(eps, dtype)
    y = te.compute(num.shape, lambda *i: (num(*i) / (den(*i[:-1]) + eps_c)).astype(str(qf.dtype)), name="linear_attention_step_out")
    return [y, s_out, z_out]


@ops.implements("LinearAttentionStep", "tvm")
def convert(bb: relax.BlockBuilder, inputs: list, attrs: dict) -> relax.Expr:
    a = op_attributes("LinearAttentionStep", attrs)
    qf, kf, v, s, z, decay = (list(inputs) + [None] * 6)[:6]
    eps = float(a["eps"])
    if decay is None:
        decay = relax.const(np.float32(1))
    fast = _fast(bb, qf, kf, v, s, z, decay, eps)
    if fast is not None:
        return fast
    outs = bb.emit_te(linear_attention_step, qf, kf, v, s, z, decay, eps=eps, primfunc_name_hint="graphopt_linear_attention_step_te")
    return relax.Tuple([bb.emit(relax.TupleGetItem(outs, i)) for i in range(3)])
