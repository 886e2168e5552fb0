"""Hand-scheduled CPU kernel for ``pkg.graphopt::MaskedAddMatMul``: masked additions on SIMD registers.

    MaskedAddMatMul <k> (Bits, X) => (Y)          Y[m] = Σ_{j < k, bit j of row m set} X[j]

(spec: graphopt/ops/masked_add_matmul.py; Bits int32 [.., M, W], 16 bits a word, X float32 [.., k, N]).
Inputs are read as [BH, M, W] / [BH, k, N] through flat aliases of their buffers (no reshape copies;
differing leading axes are broadcast first). One parallel task per (head, tile of ``RT`` rows); per
task, N is cut into chunks of one SIMD vector of the target (``cpu.common.vector_lanes``: AVX2 8
lanes, AVX-512 16, NEON 4) and a tile holds ``RT`` rows x up to 12 chunks of accumulators in
registers over all of k (``tile``: all of N when it fits, N = 65 is 9 AVX2 / 5 AVX-512 chunks):

    for each word w, each bit b (16 unrolled; the last word's k % 16):
        mask_r = 0 - ((word[r] >> b) & 1)                   all ones or all zeros, per row r: made once
        acc[r, chunk] += as_float(as_int(X[16w + b, chunk]) & mask_r)      for every chunk of the tile

no multiplication and no branch: the bit becomes a lane mask that keeps or zeroes the X row before
an add (integer AND + float add per lane). The last row tile and the last column chunk overlap the
ones before them when M or N is not a multiple (the same values computed and written twice), so
every access stays a whole vector; N < lanes makes the chunk N wide. float32 only.

Many rows and few bits (``table_func``, M >= 64 and k <= 64: binary attention's queries, M = Sq,
k = F): per head and group of 4 X rows, the 16 sums of its subsets are tabulated once (masked adds
as above), then a Y row is the sum of one table row per group, picked by the row's 4 bits (Four
Russians): for k = 16, 4 row additions instead of 16 masked ones. 12 heads x 1024 rows x 16 bits x
65 columns, one thread on this host: 0.20 ms vs 0.45 ms for the masked adds (min of 15 rounds).

``emit(bb, bits, x, k)`` puts the kernel into a Relax function, or returns None where it does not
apply (no CPU target, shapes not static, X not float32, Bits too short for k): the converter then
emits the TE compute of ``backends/tvm/kernels/masked_add_matmul.py``.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.script import tirx as T
from tvm.target import Target

from graphopt.ops.masked_add_matmul import BITS_PER_WORD

__all__ = ["ACCUMULATORS", "cpu_func", "emit", "table_func", "tile"]

DTYPE = "float32"
WORD = "int32"  # the packed bits
# parallel tasks per head at most: TVM takes a task's register scratch from its workspace allocator
# (a call per buffer per task), so a task runs several row tiles (with 12 heads: 192 tasks)
TASKS_PER_HEAD = 16
NIBBLE = 4  # X rows per table group of ``table_func`` (16 subset sums each)
TABLE_MIN_ROWS = 64  # rows of Y from which building the tables pays (16 row sums per group per head)
TABLE_MAX_K = 64  # bits up to which the tables take ``table_func`` (16 groups: 256 row sums per head)
ACCUMULATORS = 12  # SIMD registers of accumulators per tile (AVX2 has 16; NEON and AVX-512 32)


def tile(m: int, n: int, lanes: int) -> tuple[int, int, int]:
    """(rows, column chunks, lanes per chunk) of a register tile: a chunk is one SIMD vector (N itself
    when N < lanes); as many chunks as N has, up to ``ACCUMULATORS``, then as many rows as fit. With
    all of N in registers a row's lane mask for a bit is made once and used on every chunk."""
    nb = min(lanes, n)
    chunks = -(-n // nb)
    group = min(chunks, ACCUMULATORS)
    return max(1, min(m, ACCUMULATORS // group)), group, nb


def _kept(value, mask):
    """``value`` where ``mask`` is all ones, +0.0 where it is zero: an AND of the float's bits."""
    return tirx.reinterpret(DTYPE, tirx.reinterpret("int32", value) & mask)


def _lane_mask(word, bit):
    """0 - bit ``bit`` of ``word``: -1 (all ones) when set, else 0 (``bit``: an unrolled loop's variable)."""
    shift = tirx.const(bit, "int32") if isinstance(bit, int) else bit.astype("int32")
    return tirx.const(0, "int32") - ((word >> shift) & tirx.const(1, "int32"))


def cpu_func(bh: int, m: int, words: int, k: int, n: int, lanes: int, shapes=None) -> tirx.PrimFunc:
    """Y [bh, m, n] = masked sums for Bits [bh, m, words] (words >= ceil(k/16)), X [bh, k, n]
    (``shapes``: the three tensors' shapes with their own leading axes, read without a copy)."""
    assert words * BITS_PER_WORD >= k, f"{words} words hold fewer than k={k} bits"
    bs, xs, ys = (tuple(tuple(int(d) for d in s) for s in shapes) if shapes is not None
                  else ((bh, m, words), (bh, k, n), (bh, m, n)))
    rt, group, nb = tile(m, n, lanes)
    tiles = (m + rt - 1) // rt
    per_task = -(-tiles // TASKS_PER_HEAD)  # row tiles per parallel task (the last may repeat a tile: same values)
    tasks = (tiles + per_task - 1) // per_task
    chunks = (n + nb - 1) // nb
    groups = (chunks + group - 1) // group
    full, tail = divmod(k, BITS_PER_WORD)

    @T.prim_func
    def func(bits_in: T.Buffer(bs, WORD), x_in: T.Buffer(xs, DTYPE), y_out: T.Buffer(ys, DTYPE)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        bits = T.decl_buffer((bh, m, words), WORD, data=bits_in.data)
        x = T.decl_buffer((bh, k, n), DTYPE, data=x_in.data)
        y = T.decl_buffer((bh, m, n), DTYPE, data=y_out.data)
        for task in T.parallel(bh * tasks):
            for t in range(per_task):
                h: T.int32 = task // tasks
                m0: T.int32 = T.min(((task % tasks) * per_task + t) * rt, m - rt)
                word = T.decl_buffer((rt,), WORD, scope="local")
                mask = T.decl_buffer((rt,), WORD, scope="local")
                acc = T.decl_buffer((rt, group, nb), DTYPE, scope="local")
                start = T.decl_buffer((group,), "int32", scope="local")
                for g in range(groups):
                    for c in T.unroll(group):  # the chunk's first column: the last chunks overlap
                        start[c] = T.min(T.min(g * group + c, chunks - 1) * nb, n - nb)
                    for r in T.unroll(rt):
                        for c in T.unroll(group):
                            for e in T.vectorized(nb):
                                acc[r, c, e] = T.float32(0)
                    for w in range(full):
                        for r in T.unroll(rt):
                            word[r] = bits[h, m0 + r, w]
                        for b in T.unroll(BITS_PER_WORD):
                            for r in T.unroll(rt):
                                mask[r] = _lane_mask(word[r], b)
                            for c in T.unroll(group):
                                for r in T.unroll(rt):
                                    for e in T.vectorized(nb):
                                        acc[r, c, e] = acc[r, c, e] + _kept(x[h, w * BITS_PER_WORD + b, start[c] + e], mask[r])
                    for r in T.unroll(rt):
                        word[r] = bits[h, m0 + r, T.min(full, words - 1)]
                    for b in T.unroll(tail):
                        for r in T.unroll(rt):
                            mask[r] = _lane_mask(word[r], b)
                        for c in T.unroll(group):
                            for r in T.unroll(rt):
                                for e in T.vectorized(nb):
                                    acc[r, c, e] = acc[r, c, e] + _kept(x[h, full * BITS_PER_WORD + b, start[c] + e], mask[r])
                    for r in T.unroll(rt):
                        for c in T.unroll(group):
                            for e in T.vectorized(nb):
                                y[h, m0 + r, start[c] + e] = acc[r, c, e]

    return func


def table_func(bh: int, m: int, words: int, k: int, n: int, lanes: int, shapes=None) -> tirx.PrimFunc:
    """Many rows, few bits (the queries' side of binary attention: M = Sq, k = F): per head, the 16
    sums of every subset of each group of 4 X rows (``NIBBLE``), then each Y row is the sum of one
    table row per group, picked by the row's nibble (Four Russians). For k = 16: 4 adds of a row
    instead of 16 masked adds. X rows past k enter no table entry (their bits are ignored)."""
    assert words * BITS_PER_WORD >= k, f"{words} words hold fewer than k={k} bits"
    bs, xs, ys = (tuple(tuple(int(d) for d in s) for s in shapes) if shapes is not None
                  else ((bh, m, words), (bh, k, n), (bh, m, n)))
    nb = min(lanes, n)
    chunks = (n + nb - 1) // nb
    groups = (k + NIBBLE - 1) // NIBBLE
    entries = 1 << NIBBLE
    per_task = -(-m // TASKS_PER_HEAD)
    tasks = (m + per_task - 1) // per_task

    @T.prim_func
    def func(bits_in: T.Buffer(bs, WORD), x_in: T.Buffer(xs, DTYPE), y_out: T.Buffer(ys, DTYPE)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        bits = T.decl_buffer((bh, m, words), WORD, data=bits_in.data)
        x = T.decl_buffer((bh, k, n), DTYPE, data=x_in.data)
        y = T.decl_buffer((bh, m, n), DTYPE, data=y_out.data)
        table = T.decl_buffer((bh, groups, entries, n), DTYPE)
        for hg in T.parallel(bh * groups):  # table[h, g, c] = Σ_{i < 4, bit i of c, 4g + i < k} X[4g + i]
            for c in range(entries):
                for e in range(n):
                    table[hg // groups, hg % groups, c, e] = T.float32(0)
                for i in T.unroll(NIBBLE):
                    for e in range(n):
                        table[hg // groups, hg % groups, c, e] = table[hg // groups, hg % groups, c, e] + _kept(
                            x[hg // groups, T.min((hg % groups) * NIBBLE + i, k - 1), e],
                            _lane_mask(T.Select((hg % groups) * NIBBLE + i < k, c, 0), i))
        for task in T.parallel(bh * tasks):
            for t in range(per_task):
                h: T.int32 = task // tasks
                row: T.int32 = T.min((task % tasks) * per_task + t, m - 1)
                nibble = T.decl_buffer((groups,), WORD, scope="local")
                for g in T.unroll(groups):
                    nibble[g] = (bits[h, row, g // 4] >> T.int32(NIBBLE) * (g % 4)) & T.int32(entries - 1)
                for c in range(chunks):
                    acc = T.decl_buffer((nb,), DTYPE, scope="local")
                    for e in T.vectorized(nb):
                        acc[e] = table[h, 0, nibble[0], T.min(c * nb, n - nb) + e]
                    for g in T.unroll(1, groups):
                        for e in T.vectorized(nb):
                            acc[e] = acc[e] + table[h, g, nibble[g], T.min(c * nb, n - nb) + e]
                    for e in T.vectorized(nb):
                        y[h, row, T.min(c * nb, n - nb) + e] = acc[e]

    return func


# --- Relax emission (called by the MaskedAddMatMul converter) ---------------------------------------


def _static_shape(expr) -> list[int] | None:
    values = getattr(getattr(getattr(expr, "ty", None), "shape", None), "values", None)
    if values is None or not all(isinstance(d, tirx.IntImm) for d in values):
        return None
    return [int(d) for d in values]


def emit(bb: relax.BlockBuilder, bits, x, k: int) -> relax.Expr | None:
    """The kernel for one MaskedAddMatMul node, or None where it does not apply (see module doc)."""
    target = Target.current(allow_none=True)
    if target is None or target.kind.name not in ("llvm", "c"):
        return None
    b_shape, x_shape = _static_shape(bits), _static_shape(x)
    if b_shape is None or x_shape is None or len(b_shape) < 2 or len(x_shape) < 2:
        return None
    if str(x.ty.dtype) != DTYPE or str(bits.ty.dtype) != "int32":
        return None
    m, words = b_shape[-2:]
    rows, n = x_shape[-2:]
    if rows != k or k < 1 or min(m, n) < 1 or words * BITS_PER_WORD < k:
        return None
    try:
        lead = list(np.broadcast_shapes(tuple(b_shape[:-2]), tuple(x_shape[:-2])))
    except ValueError:
        return None
    bh = int(np.prod(lead, dtype=np.int64)) if lead else 1

    def heads(value, shape, tail):  # the kernel reads [.., rows, cols] as [bh, rows, cols]: broadcast only if needed
        return bb.emit(relax.op.broadcast_to(value, [*lead, *tail])) if shape[:-2] != lead else value

    from graphopt.backends.tvm.cpu.common import vector_lanes  # noqa: PLC0415

    b3, x3 = heads(bits, b_shape, [m, words]), heads(x, x_shape, [k, n])
    shapes = ([*lead, m, words], [*lead, k, n], [*lead, m, n])
    make = table_func if m >= TABLE_MIN_ROWS and k <= TABLE_MAX_K else cpu_func
    func = make(bh, m, words, k, n, vector_lanes(target, DTYPE), shapes=shapes)
    gvar = bb.add_func(func.without_attr("global_symbol"), "graphopt_masked_add_matmul")
    return bb.emit(relax.call_tir(gvar, [b3, x3], relax.TensorType([*lead, m, n], DTYPE)))


def compile_kernel(func: tirx.PrimFunc, target: str | Target = "llvm"):
    """A PrimFunc of this file compiled alone (tests, benchmarks): the callable ``main``."""
    target = Target(target) if isinstance(target, str) else target
    return tvm.compile(tvm.IRModule({"main": func}), target=target)["main"]
