"""Matmul schedule rule: register-tiled, vectorized, parallel GEMM for dense and batched matmuls.

Matches by structure, not by name: one reduction block whose body is ``C[...] += A[...] * B[...]``
(casts allowed, so int8 x int8 -> int32 matches too), with exactly one reduction axis read by both
operands. Spatial axes are sorted into batch (read by A and B), M (read by A only) and N (read by B
only); the output's innermost axis must be an N axis so results are stored as whole vectors. That
covers the ONNX importer's 2-D and 3-D dense forms ``[1,128,384] x [384,1536]``, batched
``[1,12,128,32] x [1,12,32,128]``, B stored transposed, and B pre-packed by ``prepack_matmul_weights.py`` as
``[N/nr, K, nr]``. Injective blocks around the matmul (bias, GELU, residual add, scale + mask) are
inlined into one epilogue that runs on each register tile while it is still hot.

Schedule (the recipe in ``shared/reference/tvm-cpu.md`` that reached ONNX Runtime parity):
an ``mr x nr`` register tile (AVX2 fp32: 4 x 24 = 12 accumulators), loop order
``(batch, N-panel) parallel -> M-tile -> k -> mr (unrolled) -> nr (vectorized)``, accumulators in a
``local`` tile written back through the fused epilogue, and an unpacked B large enough to leave L1
copied panel by panel into contiguous memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.ir.expr import TensorLoad
from tvm.s_tir.dlight.analysis import collect_vars_used_in_prim_expr
from tvm.s_tir.dlight.base import ScheduleRule, try_inline
from tvm.target import Target

from .common import num_cores, one_reduction, parallel_vectorize, static_extent, vector_bits, vector_lanes

# Accumulator registers a tile may use: AVX2 has 16 ymm registers; leave room for B loads and A broadcasts.
ACCUMULATOR_BUDGET = {128: 24, 256: 12, 512: 24}
# B operands at least this big (bytes) do not stay in L1: copy each panel to contiguous memory first.
PANEL_COPY_BYTES = 64 * 1024


@dataclass
class MatmulBlock:
    """A multiply-accumulate block sorted into GEMM roles (positions in its iter_vars)."""

    block: s_tir.schedule.SBlockRV
    batch: list[int]
    m: list[int]
    n: list[int]
    k: int
    b_read: int  # index of B in block.reads
    b_buffer: tirx.Buffer
    b_indices: list


def _strip_cast(expr):
    while isinstance(expr, tirx.Cast):
        expr = expr.value
    return expr


def _multiply_operands(store: tirx.BufferStore):
    """(A load, B load) of ``C[idx] = C[idx] + A * B`` (either add order, casts allowed), else None."""
    value = _strip_cast(store.value)
    if not isinstance(value, tirx.Add):
        return None
    for acc, prod in ((value.a, value.b), (value.b, value.a)):
        acc, prod = _strip_cast(acc), _strip_cast(prod)
        if not (isinstance(acc, TensorLoad) and acc.source.same_as(store.buffer)):
            continue
        if not isinstance(prod, tirx.Mul):
            continue
        lhs, rhs = _strip_cast(prod.a), _strip_cast(prod.b)
        if isinstance(lhs, TensorLoad) and isinstance(rhs, TensorLoad):
            return lhs, rhs
    return None


def _vars_of(indices) -> set:
    used = set()
    for index in indices:
        used |= collect_vars_used_in_prim_expr(index)
    return used


def analyze_matmul(sch: s_tir.Schedule, block) -> MatmulBlock | None:
    """Sort ``block``'s axes into batch/M/N/K if it is a matmul whose output is vectorizable along N."""
    stmt = sch.get(block)
    if not isinstance(stmt.body, tirx.BufferStore) or stmt.init is None:
        return None
    operands = _multiply_operands(stmt.body)
    if operands is None:
        return None
    iter_vars = list(stmt.iter_vars)
    reduce_pos = [i for i, iv in enumerate(iter_vars) if iv.iter_type == tirx.IterVar.CommReduce]
    if len(reduce_pos) != 1 or any(
        iv.iter_type not in (tirx.IterVar.DataPar, tirx.IterVar.CommReduce) for iv in iter_vars
    ):
        return None
    k = reduce_pos[0]
    out_index = list(stmt.body.indices)
    # normalize_prim_func drops unit axes, leaving constant indices behind
    if not out_index or not all(isinstance(i, (tirx.Var, tirx.IntImm)) for i in out_index):
        return None
    if not isinstance(out_index[-1], tirx.Var):
        return None

    # B is the operand indexed by the output's innermost axis (and A is not); try both orders.
    innermost = out_index[-1]
    for a_load, b_load in (operands, operands[::-1]):
        a_vars, b_vars = _vars_of(a_load.indices), _vars_of(b_load.indices)
        if innermost not in b_vars or innermost in a_vars:
            continue
        k_var = iter_vars[k].var
        if k_var not in a_vars or k_var not in b_vars:
            continue
        batch, m, n = [], [], []
        for pos, iv in enumerate(iter_vars):
            if pos == k:
                continue
            in_a, in_b = iv.var in a_vars, iv.var in b_vars
            (batch if in_a == in_b else m if in_a else n).append(pos)
        b_read = next(
            (i for i, region in enumerate(stmt.reads) if region.source.same_as(b_load.source)), None
        )
        if b_read is None or not m and not n:
            return None
        if len(n) > 1:  # N fused across axes (a 1x1 conv's h, w): the tiled nest computed wrong values
            return None
        return MatmulBlock(block, batch, m, n, k, b_read, b_load.source, list(b_load.indices))
    return None


def _product(values) -> int | None:
    total = 1
    for value in values:
        if value is None:
            return None
        total *= value
    return total


def pick_nr(n_extent: int | None, lanes: int, budget: int) -> int:
    """Register-tile width along N: three vectors when N allows (4 x 24 on AVX2 fp32), else two, else one."""
    for vectors in (3, 2, 1):
        width = vectors * lanes
        if vectors * 4 <= budget and (n_extent is None or n_extent % width == 0):
            return width
    if n_extent is not None and n_extent < lanes:
        return n_extent
    return lanes


def pick_mr(m_extent: int | None, nr: int, lanes: int, budget: int) -> int:
    """Register-tile height: the most rows (dividing M) whose accumulators fit in the register budget."""
    vectors = max(nr // lanes, 1)
    if m_extent is not None and m_extent <= 8 and m_extent * vectors <= budget:
        return m_extent  # a short M (7 pixels of a 7x7 feature map) is one tile
    for rows in (8, 6, 4, 3, 2):
        if rows * vectors <= budget and (m_extent is None or m_extent % rows == 0):
            return rows
    return 1


def tile_shape(target: Target, dtype: str, m_extent: int | None, n_extent: int | None) -> tuple[int, int]:
    """(mr, nr) of the register tile for an accumulator ``dtype`` on ``target``."""
    lanes = vector_lanes(target, dtype)
    budget = ACCUMULATOR_BUDGET.get(vector_bits(target), 12)
    nr = pick_nr(n_extent, lanes, budget)
    return pick_mr(m_extent, nr, lanes, budget), nr


def ragged_tile(target: Target, dtype: str, m_extent: int | None, n_extent: int | None) -> tuple[int, int, bool, bool]:
    """(mr, nr, pad M, pad N): ``tile_shape``'s tile, unless a ragged extent (197 tokens) leaves it
    scalar; then a full register tile and the extents padded up to it (``pad_einsum``)."""
    mr, nr = tile_shape(target, dtype, m_extent, n_extent)
    lanes = vector_lanes(target, dtype)
    budget = ACCUMULATOR_BUDGET.get(vector_bits(target), 12)
    pad_n = n_extent is not None and n_extent > lanes and n_extent % lanes != 0
    if pad_n:
        nr = 2 * lanes if n_extent >= 4 * lanes else lanes
    pad_m = m_extent is not None and m_extent > 2 and mr == 1
    if pad_m:  # the last M tile is partial (a predicate on its rows)
        vectors = max(nr // lanes, 1)
        mr = next((rows for rows in (8, 6, 4, 2) if rows * vectors <= budget and rows < m_extent), 1)
    return mr, nr, pad_m, pad_n


class Matmul(ScheduleRule):
    """Dense and batched matmul (+ fused injective prologue/epilogue) on CPU."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        found = one_reduction(func, target)
        if found is None:
            return None
        sch, infos, reduction = found
        matmul = analyze_matmul(sch, reduction)
        if matmul is None:
            return None
        # Fold everything injective into its neighbours: prologues into the matmul's reads,
        # the epilogue chain into one block after it.
        rest = try_inline(sch, [info for info in infos if info.is_injective()])
        if len(rest) > 1:
            return None
        epilogue = rest[0].block_rv if rest else None
        if epilogue is not None and not consumes(sch, epilogue, matmul.block):
            return None
        _schedule(sch, matmul, epilogue, target)
        return sch


def consumes(sch: s_tir.Schedule, consumer, producer) -> bool:
    return any(sch.get(p).same_as(sch.get(producer)) for p in sch.get_producers(consumer))


def _schedule(sch: s_tir.Schedule, mm: MatmulBlock, epilogue, target: Target) -> None:
    block = mm.block
    stmt = sch.get(block)
    acc_dtype = str(stmt.body.buffer.dtype)
    lanes = vector_lanes(target, acc_dtype)
    loops = sch.get_loops(block)
    extents = [static_extent(sch, loop) for loop in loops]
    # Leading M axes (A's own batch, e.g. [b, s, k] x [k, n]) are scheduled like batch axes: fusing
    # them into M and tiling across the boundary gave wrong results (every b read row 0).
    batch_axes, m_axes = mm.batch + mm.m[:-1], mm.m[-1:]
    m_extent = _product(extents[i] for i in m_axes)
    n_extent = _product(extents[i] for i in mm.n)
    mr, nr, pad_m, pad_n = ragged_tile(target, acc_dtype, m_extent, n_extent)
    pads = []
    if pad_n:  # whole vectors along N; a ragged M only costs a row predicate in the unrolled tile
        try:
            epilogue, pads = _pad_n_to_tile(sch, mm, epilogue, nr)
            loops = sch.get_loops(block)
        except s_tir.ScheduleError:  # not an einsum (B pre-packed, a fused prologue): scalar tile
            nr = tile_shape(target, acc_dtype, m_extent, n_extent)[1]

    def fused(positions):
        if not positions:
            return None
        return sch.fuse(*[loops[i] for i in positions]) if len(positions) > 1 else loops[positions[0]]

    sch.reorder(*[loops[i] for i in batch_axes + m_axes + mm.n + [mm.k]])
    batch, m, n, k = fused(batch_axes), fused(m_axes), fused(mm.n), loops[mm.k]
    if m is None:  # GEMV-like: give M a unit loop so the nest has one shape
        m = sch.add_unit_loop(n)
    mo, mi = sch.split(m, factors=[None, mr])
    no, ni = sch.split(n, factors=[None, nr])
    sch.reorder(*([batch] if batch is not None else []), no, mo, k, mi, ni)
    outer = sch.fuse(batch, no) if batch is not None else no
    if num_cores(target) > 1:
        sch.parallel(outer)

    # Accumulate in a register tile; write it back through the epilogue while it is hot.
    if epilogue is not None:
        sch.set_scope(block, 0, "local")
        sch.reverse_compute_at(epilogue, mo, preserve_unit_loops=True)
        writeback = epilogue
    else:
        writeback = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(writeback, mo, preserve_unit_loops=True)

    b_bytes = _buffer_bytes(mm.b_buffer)
    if not _is_prepacked(mm, nr) and (b_bytes is None or b_bytes >= PANEL_COPY_BYTES):
        panel = sch.cache_read(block, mm.b_read, "global")
        sch.compute_at(panel, outer, preserve_unit_loops=True)
        vectorize_innermost(sch, panel, lanes)

    # vectorize before decompose_reduction: the update block alone no longer passes the dataflow check
    nvo, nv = sch.split(ni, factors=[None, min(lanes, nr)])
    sch.unroll(mi)
    sch.unroll(nvo)
    sch.vectorize(nv)
    init = sch.decompose_reduction(block, k)
    vectorize_innermost(sch, init, lanes)
    vectorize_innermost(sch, writeback, lanes)
    for pad in pads:
        parallel_vectorize(sch, pad, lanes, num_cores(target))


def _pad_n_to_tile(sch: s_tir.Schedule, mm: MatmulBlock, epilogue, nr: int):
    """Pad the matmul's N iteration space to whole register tiles. Returns (the block that now
    writes the result back, the new padding stages of the operands)."""
    padding = [1] * len(sch.get(mm.block).iter_vars)
    padding[mm.n[0]] = nr
    sch.pad_einsum(mm.block, padding)
    pads = list(sch.get_producers(mm.block))
    (unpad,) = sch.get_consumers(mm.block)
    if epilogue is None:
        return unpad, pads
    sch.compute_inline(unpad)  # a plain copy: the epilogue reads the padded result directly
    return epilogue, pads


def _buffer_bytes(buffer: tirx.Buffer) -> int | None:
    size = 1
    for dim in buffer.shape:
        if not isinstance(dim, tirx.IntImm):
            return None
        size *= int(dim)
    return size * max(buffer.dtype.bits // 8, 1)


def _is_prepacked(mm: MatmulBlock, nr: int) -> bool:
    """B laid out ``[..., N/nr, K, nr]`` (see prepack_matmul_weights.py): panels are already contiguous."""
    shape = [int(d) if isinstance(d, tirx.IntImm) else None for d in mm.b_buffer.shape]
    return len(shape) >= 3 and shape[-1] == nr and isinstance(mm.b_indices[-1], tirx.FloorMod)


def vectorize_innermost(sch: s_tir.Schedule, block, lanes: int) -> None:
    """Split the block's innermost loop by the vector width (when it divides) and vectorize it."""
    loops = sch.get_loops(block)
    if not loops:
        return
    inner = loops[-1]
    extent = static_extent(sch, inner)
    if extent is None or extent < 2:
        return
    width = lanes
    while width > 1 and extent % width:
        width //= 2
    if width < 2:
        return
    if extent > width:
        _, inner = sch.split(inner, factors=[None, width])
    sch.vectorize(inner)
