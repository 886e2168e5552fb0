"""Elementwise / injective rule and the catch-all fallback rule.

``Elementwise`` matches PrimFuncs whose blocks are all spatial (adds, casts, broadcasts, transposes,
reshapes, gathers, where/select, integer shifts and clips, any dtype): it inlines the chain into as
few blocks as possible, then parallelizes the outer loops and vectorizes the innermost one of each.

``Fallback`` runs last and takes anything still unscheduled (scans, odd reductions, functions the
other rules declined): it parallelizes the leading spatial loops of every block and vectorizes
the innermost loop of the injective ones, so no PrimFunc stays a serial scalar loop nest.
"""

from __future__ import annotations

import math

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule, try_inline
from tvm.target import Target

from .common import is_cpu_target, num_cores, output_dtype, parallel_vectorize, vector_lanes


def index_safe_lanes(sch: s_tir.Schedule, block, lanes: int) -> int:
    """``lanes`` cut down to divide every constant ``floordiv``/``floormod`` divisor applied to the
    block's innermost axis (the one that gets vectorized).

    TVM's loop vectorizer computed wrong values when a vector straddled the period of such an
    index (16 lanes over ``v % 8``: a Concat + Reshape of rotary halves, where the inlined chain
    indexes ``v % 8`` and ``v // 8``, max abs error 3e34); a width that divides every period never
    straddles one. Divisions of outer axes do not matter and are not counted.
    """
    stmt = sch.get(block)
    if not stmt.iter_vars:
        return lanes
    inner = stmt.iter_vars[-1].var
    for divisor in _index_divisors(stmt.body, inner):
        lanes = math.gcd(lanes, divisor)
    return lanes


_CHILDREN = ("a", "b", "args", "indices", "value", "condition", "true_value", "false_value")


def _walk(node):
    """Every sub-node of a statement or expression (TVM 0.27 has no Python TIR visitor)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)) or type(item).__name__ == "Array":
            stack.extend(item)
            continue
        yield item
        for name in _CHILDREN:
            child = getattr(item, name, None)
            if child is not None and not isinstance(child, (int, float, str)):
                stack.append(child)


def _index_divisors(node, var) -> set[int]:
    """Constant divisors of the floordiv/floormod whose dividend depends on ``var``."""
    found = set()
    for item in _walk(node):
        if isinstance(item, (tirx.FloorMod, tirx.FloorDiv)) and isinstance(item.b, tirx.IntImm) and item.b.value > 0:
            if any(isinstance(sub, tirx.Var) and sub.same_as(var) for sub in _walk(item.a)):
                found.add(int(item.b.value))
    return found


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
            lanes = index_safe_lanes(sch, info.block_rv, vector_lanes(target, output_dtype(sch, info.block_rv)))
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
            lanes = index_safe_lanes(sch, info.block_rv, vector_lanes(target, output_dtype(sch, info.block_rv)))
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
