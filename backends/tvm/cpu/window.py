"""Window reduction rule: convolutions (dense, grouped, depthwise) and pooling in channels-last layout.

graphopt's CPU pipeline converts ``conv2d`` to NHWC/HWIO before legalization (``pipeline.py``) and
Relax propagates that layout through pooling and elementwise ops, so the reductions that remain look
like ``out[h, w, c] (+)= f(in[h*s + kh, w*s + kw, ...], weight[kh, kw, ..., c])``: the output's
innermost axis ``c`` is a spatial axis along which the weights (and for depthwise conv and pooling,
the input too) are contiguous. That is an implicit GEMM with M = output pixels, N = channels and
K = the window (kh, kw, input channels), whatever the reduction's body (multiply-add, max, sum).

Schedule (the matmul rule's register tile, with several reduction axes and no packing):

    parallel (channel panel, outer output rows) -> pixel tile -> kh -> kw -> ci -> mr pixels (unrolled)
        -> nr channels (vectorized)

Accumulators live in a ``local`` tile written back through the fused epilogue (bias, BatchNorm,
activation, residual add). The zero-padding stage is kept as its own parallel, vectorized loop: inlined
into the reduction it would put a bounds test on every multiply-add.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import collect_vars_used_in_prim_expr
from tvm.s_tir.dlight.base import ScheduleRule, try_inline
from tvm.target import Target

from .common import num_cores, one_reduction, output_dtype, parallel_vectorize, static_extent, vector_bits, vector_lanes, vector_split
from .matmul import ACCUMULATOR_BUDGET, consumes, vectorize_innermost

# Most output pixels one register tile holds (with AVX-512: 8 pixels x 2 vectors of 16 channels).
MAX_TILE_ROWS = 8


@dataclass
class WindowBlock:
    """A reduction block sorted into roles: loop positions of the outer spatial axes, M, N and K."""

    block: s_tir.schedule.SBlockRV
    outer: list[int]
    m: int | None
    n: int
    k: list[int]


def analyze_window(sch: s_tir.Schedule, block) -> WindowBlock | None:
    """Roles of ``block``'s loops when it is a reduction whose output's innermost index is a spatial
    loop variable (the vectorized channel axis) and whose loops are ordered spatial, then reduction."""
    stmt = sch.get(block)
    if not isinstance(stmt.body, tirx.BufferStore) or stmt.init is None:
        return None
    kinds = [iv.iter_type for iv in stmt.iter_vars]
    if any(kind not in (tirx.IterVar.DataPar, tirx.IterVar.CommReduce) for kind in kinds):
        return None
    spatial = [i for i, kind in enumerate(kinds) if kind == tirx.IterVar.DataPar]
    reduce = [i for i, kind in enumerate(kinds) if kind == tirx.IterVar.CommReduce]
    if not reduce or not spatial or max(spatial) > min(reduce):
        return None
    out_index = list(stmt.body.indices)
    if not out_index or not all(isinstance(i, (tirx.Var, tirx.IntImm)) for i in out_index):
        return None
    position = {iv.var: i for i, iv in enumerate(stmt.iter_vars)}
    out_vars = [position.get(i) for i in out_index if isinstance(i, tirx.Var)]
    if not out_vars or out_vars[-1] is None or out_vars != sorted(out_vars) or len(out_vars) != len(spatial):
        return None
    n = out_vars[-1]
    if not any(region.region and _contiguous_in(region.region[-1].min, stmt.iter_vars[n].var) for region in stmt.reads):
        return None  # a row reduction (softmax, layer norm): channels would be gathered, not loaded
    m = out_vars[-2] if len(out_vars) > 1 else None
    outer = [i for i in spatial if i not in (n, m)]
    return WindowBlock(block, outer, m, n, reduce)


def _contiguous_in(index, var) -> bool:
    """``index`` is ``var`` or ``var + (terms without var)``: consecutive ``var`` load consecutive elements."""
    if isinstance(index, tirx.Var):
        return index.same_as(var)
    if isinstance(index, tirx.Add):
        a_has = var in collect_vars_used_in_prim_expr(index.a)
        b_has = var in collect_vars_used_in_prim_expr(index.b)
        return (a_has != b_has) and _contiguous_in(index.a if a_has else index.b, var)
    return False


def tile_shape(target: Target, dtype: str, m_extent: int | None, n_extent: int | None) -> tuple[int, int, int]:
    """(mr, nr, vector width) of the register tile for an accumulator ``dtype`` on ``target``."""
    lanes = vector_lanes(target, dtype)
    budget = ACCUMULATOR_BUDGET.get(vector_bits(target), 12)
    nr = width = vector_split(n_extent, lanes)
    for vectors in (3, 2):
        if n_extent is not None and width == lanes and n_extent % (vectors * lanes) == 0 and vectors * 4 <= budget:
            nr = vectors * lanes
            break
    vectors = max(nr // max(width, 1), 1)
    fits = [rows for rows in range(MAX_TILE_ROWS, 0, -1) if rows * vectors <= budget]
    mr = next((rows for rows in fits if m_extent is None or m_extent % rows == 0), 1)
    if mr < 4 and m_extent is not None and m_extent > mr:
        mr = min(fits[0], m_extent)  # ragged width (a prime like 197): full tiles + one predicated tail
    return mr, nr, width


class WindowReduction(ScheduleRule):
    """Channels-last convolution and pooling (+ fused prologue padding and epilogue) on CPU."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        found = one_reduction(func, target)
        if found is None:
            return None
        sch, infos, reduction = found
        window = analyze_window(sch, reduction)
        if window is None:
            return None
        padding = list(sch.get_producers(window.block))
        feeding = [sch.get(p) for p in padding]
        # Inline everything injective except the stage that feeds the window (padding): the epilogue
        # chain collapses into one block after the reduction.
        others = [
            info for info in infos
            if info.is_injective() and not any(sch.get(info.block_rv).same_as(f) for f in feeding)
        ]
        rest = try_inline(sch, others)
        epilogues = [info.block_rv for info in rest if consumes(sch, info.block_rv, window.block)]
        if len(rest) != len(epilogues) or len(epilogues) > 1:
            return None
        _schedule(sch, window, epilogues[0] if epilogues else None, target)
        for producer in padding:
            parallel_vectorize(sch, producer, vector_lanes(target, output_dtype(sch, producer)), num_cores(target))
        return sch


def _schedule(sch: s_tir.Schedule, window: WindowBlock, epilogue, target: Target) -> None:
    block = window.block
    acc_dtype = str(sch.get(block).body.buffer.dtype)
    loops = sch.get_loops(block)
    extents = [static_extent(sch, loop) for loop in loops]
    m_extent = extents[window.m] if window.m is not None else 1
    mr, nr, width = tile_shape(target, acc_dtype, m_extent, extents[window.n])

    n = loops[window.n]
    m = loops[window.m] if window.m is not None else sch.add_unit_loop(n)
    outer = [loops[i] for i in window.outer]
    ks = [loops[i] for i in window.k]
    mo, mi = sch.split(m, factors=[None, mr])
    no, ni = sch.split(n, factors=[None, nr])
    sch.reorder(no, *outer, mo, *ks, mi, ni)
    parallel = sch.fuse(no, *outer) if outer else no
    if num_cores(target) > 1:
        sch.parallel(parallel)

    if epilogue is not None:
        sch.set_scope(block, 0, "local")
        sch.reverse_compute_at(epilogue, mo, preserve_unit_loops=True)
        writeback = epilogue
    else:
        writeback = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(writeback, mo, preserve_unit_loops=True)

    if width > 1:
        nvo, nv = sch.split(ni, factors=[None, width])
        sch.unroll(nvo)
        sch.vectorize(nv)
    sch.unroll(mi)
    init = sch.decompose_reduction(block, ks[0])
    vectorize_innermost(sch, init, width)
    vectorize_innermost(sch, writeback, width)
