"""Hand-scheduled CPU kernel for ``pkg.graphopt::WindowedLinearAttention`` (LoLCATs' hybrid): linear in N.

    WindowedLinearAttention <window W, scale, causal> (Q, K, Qf, Kf, V, gamma) => (Y)
                                                          (spec: graphopt/ops/hybrid_attention.py)

Heads flattened to BH (``T.parallel``), float32, Sq = Sk = N. For each query row i the output is
(γ·Σ_win e_ij v_j + Σ_lin (qf_i·kf_j) v_j) / (γ·Σ_win e_ij + Σ_lin qf_i·kf_j); the kernel
accumulates the linear part's numerator into Y and its denominator into a row buffer, then adds
the window and divides:

1. linear part, keys j <= i - W (and, non-causal, a mirrored pass over j >= i + W: the same code
   walking positions from the end), chunks of ``CHUNK`` (C) rows as Lightning Attention-2 / the
   causal ``linear_attention_fast`` kernel, but with the state delayed by the window: for the chunk
   from row c0 the state S = Σ kf_jᵀ v_j, z = Σ kf_j holds the keys j < c0 - W + 1; the next C keys
   (those the chunk's rows still see: j <= i - W) are transposed once, their weights qf_i·kf_j for
   the chunk's rows computed as score tiles vectorized over keys (0 where j > i - W), then each tile
   of ``IT`` rows x 2 SIMD vectors of Dv accumulates Qf·S + Σ weights·V in registers, and the state
   takes those keys (register tiles of S): O(N·(F·Dv + C·(F + Dv)));
2. window, keys |i - j| < W (j <= i when causal), ``IT`` rows at a time: Kᵀ is made once, the
   scores of the rows with the span of keys their windows cover (at most IT + 2W - 2, in whole
   2-vector tiles; keys outside a row's window -inf) are register tiles over D, then per row the
   maximum and γ·exp(s - m) (scalar exp), and weights·V in IT x 2-vector tiles; the sum is divided
   by the linear denominator plus the window's: O(N·W·(D + Dv)).

Only additions of non-negative terms (no "all keys minus the window" subtraction, which would
cancel badly when γ is small and the window's linear weights large). Memory: Kᵀ and a row of
denominators per head, O(N). ``emit`` returns None where the kernel does not apply (no CPU target, not
float32, shapes not static, Sq != Sk, γ not per head): the converter then emits the TE graph of
``backends/tvm/kernels/hybrid_attention.py``.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, tirx
from tvm.script import tirx as T
from tvm.target import Target

from ._attention_tiles import (DTYPE, add_weights_times_values, chunk_rows, chunk_score_widths, clamped_rows, mirrored,
                               normalizer_dot, rows_from, state_takes_keys, tile_widths, whole_vectors,
                               zeroed_chunk_scores, zeroed_tile_of_row_products)
from .linear_attention_fast import _head_decay, static_shape

__all__ = ["CHUNK", "emit", "hybrid_func"]

CHUNK = 64  # rows per chunk of the linear part (each row reads at most CHUNK - 1 keys directly)
IT = 4  # window rows per register tile


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
    it = min(IT, n)  # window rows per tile
    kb = 2 * lanes  # keys per score register tile
    ahead = 1 if causal else w  # the window's keys after i: j < i + ahead
    span = -(-(it + w - 1 + ahead - 1) // kb) * kb  # keys a row tile's windows cover, in whole key tiles
    row_tiles = -(-n // it)
    ft, eb = tile_widths(f, dv, lanes)  # state rows, V columns per register tile
    fv, fr = whole_vectors(f, lanes)
    cw, srows = chunk_score_widths(cs, lanes, IT)  # score vector width over a chunk's keys, rows per tile
    scale_c = float(scale)

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
        kc = T.decl_buffer((bh, f, cs), DTYPE)  # a chunk's next keys' Kf, transposed
        att = T.decl_buffer((bh, cs, cs), DTYPE)  # a chunk's rows' weights of those keys
        kt = T.decl_buffer((bh, d, n + span), DTYPE)
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
                    length: T.int32 = T.min(cs, n - c0)
                    first: T.int32 = T.max(c0 - w + 1, 0)  # keys below are in the state
                    nkeys: T.int32 = T.max(T.min(c0 + cs - w + 1, n), 0) - first  # the keys the state takes next
                    for u in range(cs):  # those keys' Kf, transposed (0 past nkeys)
                        for a in range(f):
                            kc[h, a, u] = T.Select(u < nkeys, kf[h, mirrored(T.min(first + u, n - 1), dn, n), a],
                                                   T.float32(0))
                    for io in range((length + srows - 1) // srows):  # qf·kf of each row with those keys (0 past its own)
                        sca = T.decl_buffer((srows, cs), DTYPE, scope="local")
                        zeroed_chunk_scores(sca, srows, cs, cw, f, qf, h, chunk_rows(c0, io, srows, length, dn, n), kc)
                        for b in T.unroll(srows):
                            for jo in T.unroll(cs // cw):
                                for l in T.vectorized(cw):
                                    att[h, T.min(io * srows + b, length - 1), jo * cw + l] = T.Select(
                                        first + jo * cw + l <= c0 + T.min(io * srows + b, length - 1) - w,
                                        sca[b, jo * cw + l], T.float32(0))
                    for io in range((length + it - 1) // it):  # rows: Qf·S + Σ att·V over IT rows x EB columns
                        dsum = T.decl_buffer((it,), DTYPE, scope="local")
                        for b in range(it):
                            normalizer_dot(dsum, b, T.float32(0), qf, h, mirrored(c0 + T.min(io * it + b, length - 1), dn, n),
                                           z, fv, fr, lanes)
                            for u in range(nkeys):
                                dsum[b] = dsum[b] + att[h, T.min(io * it + b, length - 1), u]
                        for eo in range(dv // eb):
                            acc = T.decl_buffer((it, eb), DTYPE, scope="local")
                            zeroed_tile_of_row_products(acc, it, eb, f, qf, h, chunk_rows(c0, io, it, length, dn, n), s, eo * eb)
                            add_weights_times_values(acc, att, v, h, nkeys, it, eb, clamped_rows(io, it, length),
                                                     rows_from(first, dn, n), eo * eb)
                            for b in range(it):
                                if io * it + b < length:
                                    for e in T.vectorized(eb):
                                        y[h, mirrored(c0 + io * it + b, dn, n), eo * eb + e] = (
                                            y[h, mirrored(c0 + io * it + b, dn, n), eo * eb + e] + acc[b, e])
                        for b in range(it):
                            if io * it + b < length:
                                den[h, mirrored(c0 + io * it + b, dn, n)] = den[h, mirrored(c0 + io * it + b, dn, n)] + dsum[b]
                    # the state takes the keys: S += Kcᵀ V, register tiles of FT x EB
                    state_takes_keys(s, kc, v, h, f, ft, dv, eb, nkeys, rows_from(first, dn, n), None)
                    for a in range(f):
                        for u in range(nkeys):
                            z[h, a] = z[h, a] + kc[h, a, u]
            for a in range(d):  # Kᵀ, zero past the end: the window's score tiles read keys contiguously
                for j in range(n + span):
                    kt[h, a, j] = T.Select(j < n, k[h, T.min(j, n - 1), a], T.float32(0))
            for io in range(row_tiles):  # the window, IT rows at a time over the SPAN keys from lo
                lo: T.int32 = T.max(io * it - w + 1, 0)
                sc = T.decl_buffer((it, span), DTYPE, scope="local")
                wsum = T.decl_buffer((it,), DTYPE, scope="local")
                for jo in range(span // kb):  # scores: register tile of IT rows x KB keys, over D
                    acc = T.decl_buffer((it, kb), DTYPE, scope="local")
                    zeroed_tile_of_row_products(acc, it, kb, d, q, h, clamped_rows(io, it, n), kt, lo + jo * kb)
                    for b in T.unroll(it):
                        for l in T.vectorized(kb):
                            sc[b, jo * kb + l] = T.Select(
                                tirx.all(lo + jo * kb + l > io * it + b - w,
                                         lo + jo * kb + l < T.min(io * it + b + ahead, n)),
                                acc[b, l] * T.float32(scale_c), T.float32(-np.inf))
                for b in range(it):  # γ·exp(s - m), m the row's window maximum (0 if it has no key)
                    top = T.decl_buffer((1,), DTYPE, scope="local")
                    top[0] = T.float32(-np.inf)
                    for u in range(span):
                        top[0] = T.max(top[0], sc[b, u])
                    if top[0] == T.float32(-np.inf):
                        top[0] = T.float32(0)
                    wsum[b] = T.float32(0)
                    for u in range(span):
                        sc[b, u] = T.exp(sc[b, u] - top[0]) * gamma[h]
                        wsum[b] = wsum[b] + sc[b, u]
                for eo in range(dv // eb):  # weights · V: register tile of IT rows x EB columns, over the keys
                    acc = T.decl_buffer((it, eb), DTYPE, scope="local")
                    for b in T.unroll(it):
                        for e in T.vectorized(eb):
                            acc[b, e] = T.float32(0)
                    for u in range(span):
                        for b in T.unroll(it):
                            for e in T.vectorized(eb):
                                acc[b, e] = acc[b, e] + sc[b, u] * v[h, T.min(lo + u, n - 1), eo * eb + e]
                    for b in range(it):
                        if io * it + b < n:
                            for e in T.vectorized(eb):
                                y[h, io * it + b, eo * eb + e] = (y[h, io * it + b, eo * eb + e] + acc[b, e]) / (
                                    den[h, io * it + b] + wsum[b])

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
