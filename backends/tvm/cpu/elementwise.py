"""Elementwise / injective rule and the catch-all fallback rule.

``Elementwise`` matches PrimFuncs whose blocks are all spatial (adds, casts, broadcasts, transposes,
reshapes, gathers, where/select, integer shifts and clips, any dtype): it inlines the chain into as
few blocks as possible, then parallelizes the outer loops and vectorizes the innermost one of each.

``Fallback`` runs last and takes anything still unscheduled (scans, odd reductions, functions the
other rules declined): it parallelizes the leading spatial loops of every block and vectorizes
the innermost loop of the injective ones, so no PrimFunc stays a serial scalar loop nest.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule, try_inline
from tvm.target import Target

from .common import is_cpu_target, num_cores, output_dtype, parallel_vectorize, vector_lanes


class Elementwise(ScheduleRule):
    """Injective loop nests: inline, then parallel outer loops + vectorized inner loop."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not is_cpu_target(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos or not all(info.is_injective() for info in infos):
            return None
        cores = num_cores(target)
        for info in try_inline(sch, infos):
            lanes = vector_lanes(target, output_dtype(sch, info.block_rv))
            parallel_vectorize(sch, info.block_rv, lanes, cores)
        return sch


class Fallback(ScheduleRule):
    """Anything else: parallel leading spatial loops per block, vectorized inner loop when injective."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not is_cpu_target(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:  # opaque blocks / no block structure: nothing safe to do
            return None
        cores = num_cores(target)
        infos = try_inline(sch, infos)
        touched = False
        for info in infos:
            kinds = info.dom_kind()
            lanes = vector_lanes(target, output_dtype(sch, info.block_rv))
            if info.is_injective():
                parallel_vectorize(sch, info.block_rv, lanes, cores)
                touched = True
                continue
            leading = len(kinds) - len(kinds.lstrip("S"))
            if leading:
                touched |= parallel_vectorize(
                    sch, info.block_rv, lanes, cores, serial_inner=len(kinds) - leading
                ) is not None
        return sch if touched else None
