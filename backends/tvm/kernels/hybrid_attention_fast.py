"""Hand-scheduled CPU kernel for ``pkg.graphopt::WindowedLinearAttention`` (LoLCATs' hybrid): linear in N.

    WindowedLinearAttention <window W, scale, causal> (Q, K, Qf, Kf, V, gamma) => (Y)
                                                          (spec: graphopt/ops/hybrid_attention.py)

Heads flattened to BH (``T.parallel``), float32, Sq = Sk = N. For each query row i the output is
(γ·Σ_win e_ij v_j + Σ_lin (qf_i·kf_j) v_j) / (γ·Σ_win e_ij + Σ_lin qf_i·kf_j); the kernel
accumulates the linear part's numerator into Y and its denominator into a row buffer, then adds
the window and divides:

1. linear part, keys j <= i - W (and, non-causal, the mirror pass over j >= i + W, the same code
   walking positions from the end): Lightning-Attention-2-style chunks of ``CHUNK`` rows with a
   running state S = Σ kf_jᵀ v_j, z = Σ kf_j over the keys below L = c0 - W + 1 (c0 the chunk's
   first row); row c0 + r adds its r - ... at most C - 1 remaining keys directly (qf·kf dot
   products), and after the chunk the state takes the next C keys: O(N·(F·Dv + C·(F + Dv)));
2. window, keys |i - j| < W (j <= i when causal): scores scale·q·k for at most 2W - 1 keys into a
   local row, their maximum, γ·exp(s - m) weighting V: O(N·W·(D + Dv)).

Only additions of non-negative terms (no "all keys minus the window" subtraction), so the linear
part has no cancellation. Dot products over F and D accumulate in SIMD-width vectors, V rows are
vectorized over Dv. ``emit`` returns None where the kernel does not apply (no CPU target, not
float32, shapes not static, Sq != Sk, γ not per head): the converter then emits the TE graph of
``backends/tvm/kernels/hybrid_attention.py``.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, tirx
from tvm.script import tirx as T
from tvm.target import Target

from .linear_attention_fast import _head_decay, static_shape

__all__ = ["CHUNK", "emit", "hybrid_func"]

DTYPE = "float32"
CHUNK = 64  # rows per chunk of the linear part (each row reads at most CHUNK - 1 keys directly)


def hybrid_func(bh: int, n: int, d: int, f: int, dv: int, lanes: int, *, window: int, scale: float, causal: int,
                chunk: int = CHUNK, shapes=None) -> tirx.PrimFunc:
    """Q, K [bh, n, d], Qf, Kf [bh, n, f], V [bh, n, dv], gamma [bh] -> Y [bh, n, dv] (``shapes``: the
    six tensors' shapes with their own leading axes, read through flat aliases without a copy)."""
    qs, ks, qfs, kfs, vs, ys = (tuple(tuple(int(x) for x in s) for s in shapes) if shapes is not None else
                                ((bh, n, d), (bh, n, d), (bh, n, f), (bh, n, f), (bh, n, dv), (bh, n, dv)))
    cs = max(1, min(chunk, n))
    chunks = (n + cs - 1) // cs
    directions = 1 if causal else 2
    w = int(min(window, n))  # a window past the sequence is the whole sequence
    row_keys = min(n, w if causal else 2 * w - 1)  # keys in one row's window
    fv, fr = f // lanes, f % lanes
    dvv, dvr = d // lanes, d % lanes
    scale_c = float(scale)
    ahead = 1 if causal else w  # the window's keys after i: j < i + ahead

    @T.prim_func
    def func(q_in: T.Buffer(qs, DTYPE), k_in: T.Buffer(ks, DTYPE), qf_in: T.Buffer(qfs, DTYPE), kf_in: T.Buffer(kfs, DTYPE),
             v_in: T.Buffer(vs, DTYPE), gamma: T.Buffer((bh,), DTYPE), y_out: T.Buffer(ys, DTYPE)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        q = T.decl_buffer((bh, n, d), DTYPE, data=q_in.data)
        k = T.decl_buffer((bh, n, d), DTYPE, data=k_in.data)
        qf = T.decl_buffer((bh, n, f), DTYPE, data=qf_in.data)
        kf = T.decl_buffer((bh, n, f), DTYPE, data=kf_in.data)
        v = T.decl_buffer((bh, n, dv), DTYPE, data=v_in.data)
        y = T.decl_buffer((bh, n, dv), DTYPE, data=y_out.data)
        s = T.decl_buffer((bh, f, dv), DTYPE)
        z = T.decl_buffer((bh, f), DTYPE)
        den = T.decl_buffer((bh, n), DTYPE)
        for h in T.parallel(bh):
            for i in range(n):
                den[h, i] = T.float32(0)
                for e in T.vectorized(dv):
                    y[h, i, e] = T.float32(0)
            for dn in range(directions):  # 0: keys j <= i - W; 1 (non-causal): keys j >= i + W, positions mirrored
                for a in range(f):
                    z[h, a] = T.float32(0)
                    for e in T.vectorized(dv):
                        s[h, a, e] = T.float32(0)
                for ci in range(chunks):
                    c0: T.int32 = ci * cs
                    first: T.int32 = T.max(c0 - w + 1, 0)  # keys below are in the state
                    for r in range(T.min(cs, n - c0)):
                        t: T.int32 = c0 + r
                        i: T.int32 = t + dn * (n - 1 - 2 * t)
                        acc = T.decl_buffer((dv,), DTYPE, scope="local")
                        dsum = T.decl_buffer((1,), DTYPE, scope="local")
                        dot = T.decl_buffer((lanes,), DTYPE, scope="local")
                        for e in T.vectorized(dv):
                            acc[e] = T.float32(0)
                        for l in T.vectorized(lanes):
                            dot[l] = T.float32(0)
                        for c in range(fv):
                            for l in T.vectorized(lanes):
                                dot[l] = dot[l] + qf[h, i, c * lanes + l] * z[h, c * lanes + l]
                        dsum[0] = T.float32(0)
                        for l in range(lanes):
                            dsum[0] = dsum[0] + dot[l]
                        for c in range(fr):
                            dsum[0] = dsum[0] + qf[h, i, fv * lanes + c] * z[h, fv * lanes + c]
                        for a in range(f):
                            for e in T.vectorized(dv):
                                acc[e] = acc[e] + qf[h, i, a] * s[h, a, e]
                        for u in range(T.max(t - w + 1 - first, 0)):  # keys first .. t - W not yet in the state
                            tj: T.int32 = first + u
                            j: T.int32 = tj + dn * (n - 1 - 2 * tj)
                            wt = T.decl_buffer((1,), DTYPE, scope="local")
                            for l in T.vectorized(lanes):
                                dot[l] = T.float32(0)
                            for c in range(fv):
                                for l in T.vectorized(lanes):
                                    dot[l] = dot[l] + qf[h, i, c * lanes + l] * kf[h, j, c * lanes + l]
                            wt[0] = T.float32(0)
                            for l in range(lanes):
                                wt[0] = wt[0] + dot[l]
                            for c in range(fr):
                                wt[0] = wt[0] + qf[h, i, fv * lanes + c] * kf[h, j, fv * lanes + c]
                            dsum[0] = dsum[0] + wt[0]
                            for e in T.vectorized(dv):
                                acc[e] = acc[e] + wt[0] * v[h, j, e]
                        den[h, i] = den[h, i] + dsum[0]
                        for e in T.vectorized(dv):
                            y[h, i, e] = y[h, i, e] + acc[e]
                    for u in range(T.max(T.min(c0 - w + 1 + cs, n) - first, 0)):  # the state takes the next keys
                        tj: T.int32 = first + u
                        j: T.int32 = tj + dn * (n - 1 - 2 * tj)
                        for a in range(f):
                            z[h, a] = z[h, a] + kf[h, j, a]
                            for e in T.vectorized(dv):
                                s[h, a, e] = s[h, a, e] + kf[h, j, a] * v[h, j, e]
            for i in range(n):  # the window: softmax over |i - j| < W, shifted by its maximum, weighted by γ
                lo: T.int32 = T.max(i - w + 1, 0)
                count: T.int32 = T.min(i + ahead, n) - lo
                sc = T.decl_buffer((row_keys,), DTYPE, scope="local")
                top = T.decl_buffer((1,), DTYPE, scope="local")
                wsum = T.decl_buffer((1,), DTYPE, scope="local")
                dot = T.decl_buffer((lanes,), DTYPE, scope="local")
                acc = T.decl_buffer((dv,), DTYPE, scope="local")
                top[0] = T.float32(-np.inf)
                for u in range(count):
                    for l in T.vectorized(lanes):
                        dot[l] = T.float32(0)
                    for c in range(dvv):
                        for l in T.vectorized(lanes):
                            dot[l] = dot[l] + q[h, i, c * lanes + l] * k[h, lo + u, c * lanes + l]
                    sc[u] = T.float32(0)
                    for l in range(lanes):
                        sc[u] = sc[u] + dot[l]
                    for c in range(dvr):
                        sc[u] = sc[u] + q[h, i, dvv * lanes + c] * k[h, lo + u, dvv * lanes + c]
                    sc[u] = sc[u] * T.float32(scale_c)
                    top[0] = T.max(top[0], sc[u])
                if top[0] == T.float32(-np.inf):  # every window key masked: shift 0 (weights exp(-inf) = 0)
                    top[0] = T.float32(0)
                wsum[0] = T.float32(0)
                for e in T.vectorized(dv):
                    acc[e] = T.float32(0)
                for u in range(count):
                    sc[u] = T.exp(sc[u] - top[0]) * gamma[h]
                    wsum[0] = wsum[0] + sc[u]
                    for e in T.vectorized(dv):
                        acc[e] = acc[e] + sc[u] * v[h, lo + u, e]
                for e in T.vectorized(dv):
                    y[h, i, e] = (y[h, i, e] + acc[e]) / (den[h, i] + wsum[0])

    return func


def emit(bb: relax.BlockBuilder, q, k, qf, kf, v, gamma, *, window: int, scale: float, causal: int) -> relax.Expr | None:
    """The fast kernel for one WindowedLinearAttention node, or None where it does not apply (module doc)."""
    target = Target.current(allow_none=True)
    if target is None or target.kind.name not in ("llvm", "c") or window < 1:
        return None
    inputs = (q, k, qf, kf, v)
    shapes = [static_shape(x) for x in inputs]
    if any(s is None or len(s) < 2 for s in shapes) or any(str(x.ty.dtype) != DTYPE for x in inputs):
        return None
    n, d = shapes[0][-2:]
    f, dv = shapes[2][-1], shapes[4][-1]
    if shapes[1][-2:] != [n, d] or shapes[2][-2] != n or shapes[3][-2:] != [n, f] or shapes[4][-2] != n or min(n, d, f, dv) < 1:
        return None
    try:
        lead = list(np.broadcast_shapes(*(tuple(s[:-2]) for s in shapes)))
    except ValueError:
        return None
    bh = int(np.prod(lead, dtype=np.int64)) if lead else 1
    g = _head_decay(bb, gamma if gamma is not None else relax.const(np.float32(1)), lead, bh)
    if g is None:
        return None
    flat = [bb.emit(relax.op.broadcast_to(x, [*lead, *s[-2:]])) if s[:-2] != lead else x for x, s in zip(inputs, shapes)]
    full = [[*lead, *s[-2:]] for s in shapes] + [[*lead, n, dv]]
    from graphopt.backends.tvm.cpu.common import vector_lanes  # noqa: PLC0415

    func = hybrid_func(bh, n, d, f, dv, vector_lanes(target, DTYPE), window=window, scale=scale, causal=causal,
                       shapes=full)
    gvar = bb.add_func(func.without_attr("global_symbol"), "graphopt_hybrid_attention")
    return bb.emit(relax.call_tir(gvar, [*flat, g], relax.TensorType([*lead, n, dv], DTYPE)))
