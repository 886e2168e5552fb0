"""Hand-scheduled CPU kernels for ``pkg.graphopt::LinearAttention``: cost linear in sequence length.

    LinearAttention <causal, eps> (Qf, Kf, V, decay) => (Y)       (spec: graphopt/ops/linear_attention.py)

Inputs are flattened to heads: Qf [BH, Sq, F], Kf [BH, Sk, F], V [BH, Sk, Dv], decay [BH] (λ per
head; 1 = none). Every kernel runs the heads in parallel (``T.parallel(BH)``) and vectorizes over Dv
(the SIMD width comes from the target: ``cpu.common.vector_lanes``), float32 only.

Non-causal (``noncausal_func``), two GEMM-like stages per head, O(N·F·Dv):

1. state ``S = Kfᵀ·V`` [F, Dv] and ``z = Kfᵀ·1`` [F]: register tiles of ``FT`` (4) rows of S by ``EB``
   (2 SIMD vectors) columns, the sequence walked in blocks of ``JB`` (32) keys so that a block of Kf
   and V stays in L1 while every tile of S passes over it (S itself, 16 KiB at 64 x 64, stays in L1);
2. ``Y = Qf·S / (Qf·z + eps)``: tiles of ``IT`` (4) query rows by ``EB`` columns, accumulators in
   registers over F; the denominator a vector dot product per row. The last row tile overlaps the one
   before it when Sq is not a multiple of 4 (rows computed twice, the same values written twice).

Causal (``causal_func``), chunked as Lightning Attention-2, chunks of ``CHUNK`` (64) tokens, O(N·C·(F+Dv)):
per chunk c (rows c0 .. c0+L-1) with the running state S_c = Σ_{j<c0} λ^{c0-1-j} Kf_jᵀV_j and z_c:

- intra: ``A[i, j] = (Qf_i·Kf_j)·λ^{i-j}`` for j <= i (the chunk's Kf transposed once, the scores
  vectorized over j; a per-head decay matrix ``D[r, j] = λ^{r-j}`` (0 above the diagonal) applied);
- output: ``Y_i = (λ^{r+1}·Qf_i·S_c + Σ_j A[i,j]·V_j) / (λ^{r+1}·Qf_i·z_c + Σ_j A[i,j] + eps)``, r = i - c0;
- update: ``S_{c+1} = λ^L·S_c + Σ_r λ^{L-1-r}·Kf_rᵀV_r`` (and z alike).

Decode (``recurrent_step_func``): one token against a carried state, O(F·Dv) whatever the context:
``S' = λS + kᵀv``, ``z' = λz + k``, ``y = q·S' / (q·z' + eps)``; heads in parallel only for a
state of ``PARALLEL_STATE`` elements or more.

``emit(bb, qf, kf, v, decay, causal=, eps=)`` puts the right kernel into a Relax function (broadcast
leading axes when they differ, ``call_tir`` on the tensors as they are: the kernels read them as
[BH, rows, cols] through flat aliases of their buffers, so no reshape copies) and returns None where it does not apply
(no CPU target, shapes not static, not float32, causal with Sq != Sk): the caller then emits the TE
compute of ``backends/tvm/kernels/linear_attention.py``.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.script import tirx as T
from tvm.target import Target

from ._attention_tiles import (DTYPE, add_weights_times_values, chunk_rows, chunk_score_widths, clamped_rows,
                               normalizer_dot, rows_from, state_takes_keys, tile_widths, whole_vectors,
                               zeroed_chunk_scores, zeroed_tile_of_row_products)

__all__ = ["CHUNK", "causal_func", "emit", "noncausal_func", "recurrent_step_func", "static_shape"]

CHUNK = 64  # causal chunk (Lightning Attention-2's block); intra-chunk work is quadratic in it
IT = 4  # query rows per register tile (stage 2)
JB = 32  # keys per block of stage 1 (a block of Kf and V in L1)
# decode: states below this many elements (12 heads x 64 x 64 is 49K) are updated by one thread: the
# step is ~10 µs of work, and a parallel region's fork/join costs µs idle and ms on a loaded host
PARALLEL_STATE = 1 << 20


def _full_shapes(shapes, default):
    """The arguments' declared shapes: ``shapes`` (the tensors as the graph has them, any leading axes
    whose product is BH) or the flat [BH, rows, cols] ones; the body reads flat aliases of them."""
    return tuple(tuple(int(d) for d in shape) for shape in shapes) if shapes is not None else default


def noncausal_func(bh: int, sq: int, sk: int, f: int, dv: int, lanes: int, eps: float, shapes=None) -> tirx.PrimFunc:
    """Non-causal linear attention for Qf [bh, sq, f], Kf [bh, sk, f], V [bh, sk, dv] -> Y [bh, sq, dv]
    (``shapes``: the four tensors' shapes with their own leading axes, read without a copy)."""
    qs, ks, vs, ys = _full_shapes(shapes, ((bh, sq, f), (bh, sk, f), (bh, sk, dv), (bh, sq, dv)))
    ft, eb = tile_widths(f, dv, lanes)
    it = min(IT, sq)
    fv, fr = whole_vectors(f, lanes)
    jblocks = (sk + JB - 1) // JB
    eps_c = float(eps)

    @T.prim_func
    def func(q_in: T.Buffer(qs, DTYPE), k_in: T.Buffer(ks, DTYPE), v_in: T.Buffer(vs, DTYPE), y_out: T.Buffer(ys, DTYPE)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        q = T.decl_buffer((bh, sq, f), DTYPE, data=q_in.data)
        k = T.decl_buffer((bh, sk, f), DTYPE, data=k_in.data)
        v = T.decl_buffer((bh, sk, dv), DTYPE, data=v_in.data)
        y = T.decl_buffer((bh, sq, dv), DTYPE, data=y_out.data)
        s = T.decl_buffer((bh, f, dv), DTYPE)
        z = T.decl_buffer((bh, f), DTYPE)
        for h in T.parallel(bh):
            for a in range(f):
                z[h, a] = T.float32(0)
                for e in range(dv):
                    s[h, a, e] = T.float32(0)
            for jo in range(jblocks):  # stage 1: S += Kf_blockᵀ V_block, z += Σ Kf_block
                for fo in range(f // ft):
                    for eo in range(dv // eb):
                        acc = T.decl_buffer((ft, eb), DTYPE, scope="local")
                        for a in T.unroll(ft):
                            for e in T.vectorized(eb):
                                acc[a, e] = s[h, fo * ft + a, eo * eb + e]
                        for j in range(T.min(JB, sk - jo * JB)):
                            for a in T.unroll(ft):
                                for e in T.vectorized(eb):
                                    acc[a, e] = acc[a, e] + k[h, jo * JB + j, fo * ft + a] * v[h, jo * JB + j, eo * eb + e]
                        for a in T.unroll(ft):
                            for e in T.vectorized(eb):
                                s[h, fo * ft + a, eo * eb + e] = acc[a, e]
                for j in range(T.min(JB, sk - jo * JB)):
                    for c in range(fv):
                        for l in T.vectorized(lanes):
                            z[h, c * lanes + l] = z[h, c * lanes + l] + k[h, jo * JB + j, c * lanes + l]
                    for r in range(fr):
                        z[h, fv * lanes + r] = z[h, fv * lanes + r] + k[h, jo * JB + j, fv * lanes + r]
            for io in range((sq + it - 1) // it):  # stage 2: Y = Qf S / (Qf z + eps)
                i0: T.int32 = T.min(io * it, sq - it)
                den = T.decl_buffer((it,), DTYPE, scope="local")
                for a in range(it):
                    normalizer_dot(den, a, T.float32(eps_c), q, h, i0 + a, z, fv, fr, lanes)
                    den[a] = T.float32(1) / den[a]
                for eo in range(dv // eb):
                    acc = T.decl_buffer((it, eb), DTYPE, scope="local")
                    zeroed_tile_of_row_products(acc, it, eb, f, q, h, rows_from(i0), s, eo * eb)
                    for a in T.unroll(it):
                        for e in T.vectorized(eb):
                            y[h, i0 + a, eo * eb + e] = acc[a, e] * den[a]

    return func


def causal_func(bh: int, n: int, f: int, dv: int, lanes: int, eps: float, chunk: int = CHUNK, shapes=None) -> tirx.PrimFunc:
    """Causal (chunked) linear attention with per-head decay: Qf, Kf [bh, n, f], V [bh, n, dv], decay [bh]
    (``shapes``: Qf's, Kf's, V's and Y's shapes with their own leading axes, read without a copy)."""
    qs, ks, vs, ys = _full_shapes(shapes, ((bh, n, f), (bh, n, f), (bh, n, dv), (bh, n, dv)))
    ft, eb = tile_widths(f, dv, lanes)
    cs = min(chunk, n)
    chunks = (n + cs - 1) // cs
    fv, fr = whole_vectors(f, lanes)
    cw, srows = chunk_score_widths(cs, lanes, IT)  # score vector width over the chunk's keys, rows per tile
    it = IT  # output rows per tile (a short last chunk repeats its last row: same values written twice)
    eps_c = float(eps)

    @T.prim_func
    def func(q_in: T.Buffer(qs, DTYPE), k_in: T.Buffer(ks, DTYPE), v_in: T.Buffer(vs, DTYPE),
             decay: T.Buffer((bh,), DTYPE), y_out: T.Buffer(ys, DTYPE)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        q = T.decl_buffer((bh, n, f), DTYPE, data=q_in.data)
        k = T.decl_buffer((bh, n, f), DTYPE, data=k_in.data)
        v = T.decl_buffer((bh, n, dv), DTYPE, data=v_in.data)
        y = T.decl_buffer((bh, n, dv), DTYPE, data=y_out.data)
        s = T.decl_buffer((bh, f, dv), DTYPE)
        z = T.decl_buffer((bh, f), DTYPE)
        pw = T.decl_buffer((bh, cs + 1), DTYPE)  # λ^r
        dm = T.decl_buffer((bh, cs, cs), DTYPE)  # λ^(i-j) for j <= i, else 0
        kt = T.decl_buffer((bh, f, cs), DTYPE)  # the chunk's Kf transposed (0 past its end)
        att = T.decl_buffer((bh, cs, cs), DTYPE)  # intra-chunk weights
        for h in T.parallel(bh):
            pw[h, 0] = T.float32(1)
            for r in range(cs):
                pw[h, r + 1] = pw[h, r] * decay[h]
            for i in range(cs):
                for j in range(cs):
                    dm[h, i, j] = T.Select(j <= i, pw[h, T.max(i - j, 0)], T.float32(0))
            for a in range(f):
                z[h, a] = T.float32(0)
                for e in range(dv):
                    s[h, a, e] = T.float32(0)
            for ci in range(chunks):
                c0: T.int32 = ci * cs
                length: T.int32 = T.min(cs, n - c0)
                for r in range(cs):
                    for a in range(f):
                        kt[h, a, r] = T.Select(r < length, k[h, T.min(c0 + r, n - 1), a], T.float32(0))
                for io in range((length + srows - 1) // srows):  # scores of srows rows, decayed and masked
                    sc = T.decl_buffer((srows, cs), DTYPE, scope="local")
                    zeroed_chunk_scores(sc, srows, cs, cw, f, q, h, chunk_rows(c0, io, srows, length), kt)
                    for b in T.unroll(srows):
                        for jo in T.unroll(cs // cw):
                            for l in T.vectorized(cw):
                                att[h, T.min(io * srows + b, length - 1), jo * cw + l] = (
                                    sc[b, jo * cw + l] * dm[h, T.min(io * srows + b, length - 1), jo * cw + l])
                for io in range((length + it - 1) // it):  # output rows: inter (state) + intra (scores)
                    den = T.decl_buffer((it,), DTYPE, scope="local")
                    for b in range(it):
                        row: T.int32 = T.min(io * it + b, length - 1)
                        normalizer_dot(den, b, T.float32(0), q, h, c0 + row, z, fv, fr, lanes)
                        den[b] = den[b] * pw[h, row + 1]
                        for j in range(row + 1):
                            den[b] = den[b] + att[h, row, j]
                        den[b] = T.float32(1) / (den[b] + T.float32(eps_c))
                    for eo in range(dv // eb):
                        acc = T.decl_buffer((it, eb), DTYPE, scope="local")
                        zeroed_tile_of_row_products(acc, it, eb, f, q, h, chunk_rows(c0, io, it, length), s, eo * eb)
                        for b in T.unroll(it):
                            for e in T.vectorized(eb):
                                acc[b, e] = acc[b, e] * pw[h, T.min(io * it + b, length - 1) + 1]
                        # keys up to the tile's last row (att[row, j] is 0 for j > row)
                        add_weights_times_values(acc, att, v, h, T.min(io * it + it, length), it, eb,
                                                 clamped_rows(io, it, length), rows_from(c0), eo * eb)
                        for b in T.unroll(it):
                            for e in T.vectorized(eb):
                                y[h, c0 + T.min(io * it + b, length - 1), eo * eb + e] = acc[b, e] * den[b]
                for r in range(length):  # decay the chunk's keys for the update: λ^(L-1-r)
                    for a in range(f):
                        kt[h, a, r] = kt[h, a, r] * pw[h, length - 1 - r]
                # S = λ^L S + Ktᵀ V
                state_takes_keys(s, kt, v, h, f, ft, dv, eb, length, rows_from(c0), pw[h, length])
                for a in range(f):
                    z[h, a] = z[h, a] * pw[h, length]
                    for r in range(length):
                        z[h, a] = z[h, a] + kt[h, a, r]

    return func


def recurrent_step_func(bh: int, f: int, dv: int, lanes: int, eps: float) -> tirx.PrimFunc:
    """One decode step: (q, k [bh, 1, f], v [bh, 1, dv], decay [bh], S [bh, f, dv], z [bh, f]) -> (y, S', z')."""
    _, eb = tile_widths(f, dv, lanes)
    eps_c = float(eps)
    heads = T.parallel if bh * f * dv >= PARALLEL_STATE else T.serial  # a small state: no fork/join

    @T.prim_func
    def func(q: T.Buffer((bh, 1, f), DTYPE), k: T.Buffer((bh, 1, f), DTYPE), v: T.Buffer((bh, 1, dv), DTYPE),
             decay: T.Buffer((bh,), DTYPE), s_in: T.Buffer((bh, f, dv), DTYPE), z_in: T.Buffer((bh, f), DTYPE),
             y: T.Buffer((bh, 1, dv), DTYPE), s_out: T.Buffer((bh, f, dv), DTYPE), z_out: T.Buffer((bh, f), DTYPE)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for h in heads(bh):
            den = T.decl_buffer((1,), DTYPE, scope="local")
            den[0] = T.float32(eps_c)
            for a in range(f):
                z_out[h, a] = z_in[h, a] * decay[h] + k[h, 0, a]
                den[0] = den[0] + q[h, 0, a] * z_out[h, a]
            for eo in range(dv // eb):
                acc = T.decl_buffer((eb,), DTYPE, scope="local")
                for e in T.vectorized(eb):
                    acc[e] = T.float32(0)
                for a in range(f):
                    for e in T.vectorized(eb):
                        s_out[h, a, eo * eb + e] = s_in[h, a, eo * eb + e] * decay[h] + k[h, 0, a] * v[h, 0, eo * eb + e]
                        acc[e] = acc[e] + q[h, 0, a] * s_out[h, a, eo * eb + e]
                for e in T.vectorized(eb):
                    y[h, 0, eo * eb + e] = acc[e] / den[0]

    return func


# --- Relax emission (called by the LinearAttention converter) -------------------------------------


def static_shape(expr) -> list[int] | None:
    values = getattr(getattr(expr, "ty", None), "shape", None)
    values = getattr(values, "values", None)
    if values is None or not all(isinstance(d, tirx.IntImm) for d in values):
        return None
    return [int(d) for d in values]


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


def _head_decay(bb: relax.BlockBuilder, decay, lead: list[int], bh: int):
    """decay as [bh] (one λ per head), or None when its shape is not "broadcastable to the head axes":
    a scalar / one element, or [.., H, 1, 1] (the op's reference broadcasts it against [.., Sq, Sk])."""
    shape = static_shape(decay)
    if shape is None or _dtype(decay) != DTYPE:
        return None
    if int(np.prod(shape, dtype=np.int64)) == 1:
        heads = []
    elif len(shape) >= 2 and shape[-2:] == [1, 1]:
        heads = shape[:-2]
    else:
        return None
    try:
        if list(np.broadcast_shapes(tuple(heads), tuple(lead))) != lead:
            return None
    except ValueError:
        return None
    d = bb.emit(relax.op.reshape(decay, heads)) if heads != shape else decay
    if heads != lead:
        d = bb.emit(relax.op.broadcast_to(d, lead))
    return bb.emit(relax.op.reshape(d, [bh]))


def emit(bb: relax.BlockBuilder, qf, kf, v, decay, *, causal: int = 0, eps: float = 1e-6) -> relax.Expr | None:
    """The fast kernel for one LinearAttention node, or None where it does not apply (see module doc)."""
    target = Target.current(allow_none=True)
    if target is None or target.kind.name not in ("llvm", "c"):
        return None
    shapes = [static_shape(x) for x in (qf, kf, v)]
    if any(s is None or len(s) < 2 for s in shapes) or any(_dtype(x) != DTYPE for x in (qf, kf, v)):
        return None
    (q_shape, k_shape, v_shape) = shapes
    sq, f = q_shape[-2:]
    sk, dv = v_shape[-2:]
    if k_shape[-2:] != [sk, f] or (causal and sq != sk) or min(sq, sk, f, dv) < 1:
        return None
    try:
        lead = list(np.broadcast_shapes(tuple(q_shape[:-2]), tuple(k_shape[:-2]), tuple(v_shape[:-2])))
    except ValueError:
        return None
    bh = int(np.prod(lead, dtype=np.int64)) if lead else 1

    def heads(x, shape, rows, cols):  # the kernels read [.., rows, cols] as [bh, rows, cols]: no reshape (a copy)
        return bb.emit(relax.op.broadcast_to(x, [*lead, rows, cols])) if shape[:-2] != lead else x

    q3, k3, v3 = heads(qf, q_shape, sq, f), heads(kf, k_shape, sk, f), heads(v, v_shape, sk, dv)
    shapes = ([*lead, sq, f], [*lead, sk, f], [*lead, sk, dv], [*lead, sq, dv])
    from graphopt.backends.tvm.cpu.common import vector_lanes  # noqa: PLC0415

    lanes = vector_lanes(target, DTYPE)
    out = relax.TensorType([*lead, sq, dv], DTYPE)
    if causal:
        if decay is None:
            decay = relax.const(np.float32(1))
        d = _head_decay(bb, decay, lead, bh)
        if d is None:
            return None
        gvar = bb.add_func(causal_func(bh, sq, f, dv, lanes, eps, shapes=shapes).without_attr("global_symbol"),
                           "graphopt_linear_attention_causal")
        y = bb.emit(relax.call_tir(gvar, [q3, k3, v3, d], out))
    else:
        gvar = bb.add_func(noncausal_func(bh, sq, sk, f, dv, lanes, eps, shapes=shapes).without_attr("global_symbol"),
                           "graphopt_linear_attention")
        y = bb.emit(relax.call_tir(gvar, [q3, k3, v3], out))
    return y


def compile_kernel(func: tirx.PrimFunc, target: str | Target = "llvm"):
    """A PrimFunc of this file compiled alone (tests, benchmarks): the callable ``main``."""
    target = Target(target) if isinstance(target, str) else target
    return tvm.compile(tvm.IRModule({"main": func}), target=target)["main"]
