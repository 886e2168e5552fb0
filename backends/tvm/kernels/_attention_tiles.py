"""Register-tile pieces shared by the chunked attention kernels (``linear_attention_fast``, ``hybrid_attention_fast``).

Each piece is a ``T.macro``: it is inlined where a kernel calls it, so a kernel's TIR is what it
would be with the loops written out. Which rows or keys a piece reads is passed as a function of
the tile's loop index (``rows_from``, ``clamped_rows``, ``chunk_rows`` build them), so one piece
serves a kernel walking positions forwards and the hybrid kernel's mirrored (non-causal) pass.
"""

from __future__ import annotations

from tvm.script import tirx as T

DTYPE = "float32"
FT = 4  # rows of the state per register tile


def tile_widths(f: int, dv: int, lanes: int) -> tuple[int, int]:
    """(rows of S per tile, columns per tile): FT / 2 SIMD vectors where they divide F / Dv."""
    ft = next(t for t in (FT, 2, 1) if f % t == 0)
    eb = next((w for w in (2 * lanes, lanes) if dv % w == 0), dv)
    return ft, eb


def whole_vectors(extent: int, lanes: int) -> tuple[int, int]:
    """(whole SIMD vectors in ``extent``, the scalar rest)."""
    return extent // lanes, extent % lanes


def chunk_score_widths(cs: int, lanes: int, max_rows: int) -> tuple[int, int]:
    """(score vector width over a chunk's keys, score rows per tile: about 16 accumulator vectors)."""
    cw = lanes if cs % lanes == 0 else cs
    return cw, max(1, min(max_rows, 16 // max(1, cs // cw)))


def mirrored(t, dn, n):
    """Position t walked forwards (dn 0) or from the end (dn 1: the non-causal pass over later keys).
    A literal 0 leaves t as it is (no ``+ 0 * (..)`` in the TIR of a kernel that never mirrors)."""
    return t if isinstance(dn, int) and dn == 0 else t + dn * (n - 1 - 2 * t)


def rows_from(first, dn=0, n=0):
    """Tile index u -> position first + u (mirrored when dn is 1)."""
    return lambda u: mirrored(first + u, dn, n)


def clamped_rows(io, rows, length):
    """Row b of tile io -> io·rows + b, clamped to length - 1 (a short last tile repeats its last row)."""
    return lambda b: T.min(io * rows + b, length - 1)


def chunk_rows(c0, io, rows, length, dn=0, n=0):
    """Row b of tile io of the chunk from c0 -> its position (clamped as ``clamped_rows``, mirrored when dn is 1)."""
    return lambda b: mirrored(c0 + T.min(io * rows + b, length - 1), dn, n)


@T.macro
def zeroed_tile_of_row_products(acc, rows, width, depth, lhs, h, row_of, rhs, col0):
    """acc[b, e] = Σ_a lhs[h, row_of(b), a] · rhs[h, a, col0 + e]: rows x width registers, rank-1 updates over depth."""
    for b in T.unroll(rows):
        for e in T.vectorized(width):
            acc[b, e] = T.float32(0)
    for a in range(depth):
        for b in T.unroll(rows):
            for e in T.vectorized(width):
                acc[b, e] = acc[b, e] + lhs[h, row_of(b), a] * rhs[h, a, col0 + e]


@T.macro
def zeroed_chunk_scores(sc, rows, keys, cw, depth, lhs, h, row_of, kt):
    """sc[b, j] = lhs[h, row_of(b), :] · kt[h, :, j] for a chunk's keys j < keys, vectorized cw keys at a time."""
    for b in T.unroll(rows):
        for jo in T.unroll(keys // cw):
            for l in T.vectorized(cw):
                sc[b, jo * cw + l] = T.float32(0)
    for a in range(depth):
        for b in T.unroll(rows):
            for jo in T.unroll(keys // cw):
                for l in T.vectorized(cw):
                    sc[b, jo * cw + l] = sc[b, jo * cw + l] + lhs[h, row_of(b), a] * kt[h, a, jo * cw + l]


@T.macro
def normalizer_dot(den, b, start, q, h, row, z, fv, fr, lanes):
    """den[b] = start + q[h, row, :] · z[h, :]: fv SIMD vectors summed across lanes, then the fr scalars left."""
    dacc = T.decl_buffer((lanes,), DTYPE, scope="local")
    for l in T.vectorized(lanes):
        dacc[l] = T.float32(0)
    for c in range(fv):
        for l in T.vectorized(lanes):
            dacc[l] = dacc[l] + q[h, row, c * lanes + l] * z[h, c * lanes + l]
    den[b] = start
    for l in range(lanes):
        den[b] = den[b] + dacc[l]
    for r in range(fr):
        den[b] = den[b] + q[h, row, fv * lanes + r] * z[h, fv * lanes + r]


@T.macro
def add_weights_times_values(acc, att, v, h, count, rows, width, weight_row_of, key_of, col0):
    """acc[b, e] += Σ_{j < count} att[h, weight_row_of(b), j] · v[h, key_of(j), col0 + e]."""
    for j in range(count):
        for b in T.unroll(rows):
            for e in T.vectorized(width):
                acc[b, e] = acc[b, e] + att[h, weight_row_of(b), j] * v[h, key_of(j), col0 + e]


@T.macro
def state_takes_keys(s, kt, v, h, f, ft, dv, eb, count, key_of, decay):
    """S = decay·S + Σ_{r < count} kt[h, :, r]ᵀ v[h, key_of(r), :] (decay None: S +=), register tiles of ft x eb."""
    for fo in range(f // ft):
        for eo in range(dv // eb):
            acc = T.decl_buffer((ft, eb), DTYPE, scope="local")
            for a in T.unroll(ft):
                for e in T.vectorized(eb):
                    if decay is None:
                        acc[a, e] = s[h, fo * ft + a, eo * eb + e]
                    else:
                        acc[a, e] = s[h, fo * ft + a, eo * eb + e] * decay
            for r in range(count):
                for a in T.unroll(ft):
                    for e in T.vectorized(eb):
                        acc[a, e] = acc[a, e] + kt[h, fo * ft + a, r] * v[h, key_of(r), eo * eb + e]
            for a in T.unroll(ft):
                for e in T.vectorized(eb):
                    s[h, fo * ft + a, eo * eb + e] = acc[a, e]
