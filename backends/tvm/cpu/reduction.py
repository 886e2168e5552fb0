"""Row-reduction rule: softmax, layer norm, mean/var/max/sum over the trailing axes, any dtype.

Matches PrimFuncs whose blocks all start with the same leading spatial axes (the "rows") and whose
reduction blocks reduce only trailing axes, e.g. softmax = max (SR) -> exp (SS) -> sum (SR) ->
normalize (SS), layer norm = sum (SR) -> mean (S) -> var (SR) -> out (SS), and the integer versions
of both (int32/int64 sums and maxima in the integer-only graphs).

Schedule: rows are parallel; every block is computed at the row loop, so a row's intermediates
stay in cache; injective blocks are vectorized along the row; each reduction is rfactor-ed into
``lanes`` partial results so the reduction itself runs on full vectors (LLVM does not reassociate
floating-point sums on its own), then the partials are folded.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from .common import (
    MIN_PARALLEL_ELEMENTS,
    is_cpu_target,
    num_cores,
    output_dtype,
    static_extent,
    vector_lanes,
    vector_split,
)


def _leading_spatial(kinds: str) -> int:
    return len(kinds) - len(kinds.lstrip("S"))


class RowReduction(ScheduleRule):
    """Reductions over trailing axes, with injective blocks before/after them, rows in parallel."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not is_cpu_target(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos or all(info.is_injective() for info in infos):
            return None
        rows = None
        for info in infos:
            kinds = info.dom_kind()
            leading = _leading_spatial(kinds)
            # a reduction block must be S...S R...R: nothing spatial after its reduced axes
            if not leading or set(kinds[leading:]) - {"R"}:
                return None
            rows = leading if rows is None else min(rows, leading)
        try:
            return _schedule(sch, infos, rows, target)
        except s_tir.ScheduleError:  # a block whose rows do not line up with the others
            return None


def _schedule(sch: s_tir.Schedule, infos, rows: int, target: Target) -> s_tir.Schedule:
    cores = num_cores(target)
    # 1. rfactor every reduction while it still owns its loop nest (rfactor needs that).
    reductions = []  # (partial block or None, final block, lanes)
    for info in infos:
        if info.is_injective():
            continue
        block = info.block_rv
        loops = sch.get_loops(block)
        reduce_loops = loops[rows:]
        lanes = vector_lanes(target, output_dtype(sch, block))
        reduced = sch.fuse(*reduce_loops) if len(reduce_loops) > 1 else reduce_loops[0]
        width = vector_split(static_extent(sch, reduced), lanes)
        partial = None
        if width > 1 and static_extent(sch, reduced) != width:
            _, inner = sch.split(reduced, factors=[None, width])
            partial = sch.rfactor(inner, factor_axis=0)
        reductions.append((partial, block))

    # 2. rows in parallel on the last block; everything else computed per row under it.
    blocks = [info.block_rv for info in infos]
    last = blocks[-1]
    loops = sch.get_loops(last)
    row = sch.fuse(*loops[:rows]) if rows > 1 else loops[0]
    row_count = static_extent(sch, row)
    row_len = 1
    for loop in sch.get_loops(last)[1:]:
        extent = static_extent(sch, loop)
        row_len = row_len * extent if extent is not None else MIN_PARALLEL_ELEMENTS
    if cores > 1 and (row_count is None or row_count * row_len >= MIN_PARALLEL_ELEMENTS) and row_count != 1:
        sch.parallel(row)
    # reverse topological order: each block's consumers are already under the row loop
    partial_of = {sch.get(block).name_hint: partial for partial, block in reductions}
    for block in reversed(blocks):
        if block is not last:
            sch.compute_at(block, row, preserve_unit_loops=True)
        partial = partial_of.get(sch.get(block).name_hint)
        if partial is not None:
            sch.compute_at(partial, row, preserve_unit_loops=True)

    # 3. vectorize: injective blocks along the row, partial reductions across their lanes.
    for info in infos:
        if info.is_injective():
            _vectorize_inner(sch, info.block_rv, vector_lanes(target, output_dtype(sch, info.block_rv)), row)
    for partial, _block in reductions:
        if partial is not None:
            _vectorize_partial(sch, partial)
    return sch


def _vectorize_partial(sch: s_tir.Schedule, partial) -> None:
    """Move the rfactor lane axis below the reduction loop(s), vectorize it, hoist the init."""
    stmt = sch.get(partial)
    iter_vars = list(stmt.iter_vars)
    lane_var = stmt.body.indices[0]  # rfactor(factor_axis=0) put the lane index first
    loops = sch.get_loops(partial)[-len(iter_vars):]  # compute_at made one loop per iter, in order
    lane = [loop for loop, iv in zip(loops, iter_vars) if iv.var.same_as(lane_var)]
    reduce = [loop for loop, iv in zip(loops, iter_vars) if iv.iter_type == tirx.IterVar.CommReduce]
    if len(lane) != 1 or not reduce:
        return
    sch.reorder(*reduce, lane[0])
    sch.vectorize(lane[0])
    sch.decompose_reduction(partial, reduce[0])


def _vectorize_inner(sch: s_tir.Schedule, block, lanes: int, row) -> None:
    loops = sch.get_loops(block)
    if not loops or sch.get(loops[-1]).same_as(sch.get(row)):
        return
    inner = loops[-1]
    extent = static_extent(sch, inner)
    width = vector_split(extent, lanes)
    if width < 2:
        return
    if extent is None or extent > width:
        _, inner = sch.split(inner, factors=[None, width])
    sch.vectorize(inner)
