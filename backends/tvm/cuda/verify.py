"""A pass that fails early, by name, when a PrimFunc reached codegen without a GPU schedule.

Unscheduled TIR on CUDA would run on one thread of the host -- TVM refuses it late, in
``VerifyMemory``, with "Did you forget to bind?" and no hint which of dozens of kernels is meant.
"""

from __future__ import annotations

import tvm
from tvm import tirx

from graphopt.errors import UnsupportedError

__all__ = ["check_scheduled", "unscheduled_functions"]

SCHEDULED_ATTRS = ("tirx.is_scheduled", "tir.is_scheduled")


def _is_scheduled(func: tirx.PrimFunc) -> bool:
    attrs = func.attrs
    return attrs is not None and any(key in attrs and bool(attrs[key]) for key in SCHEDULED_ATTRS)


def _binds_threads(func: tirx.PrimFunc) -> bool:
    # TVM 0.27 has no Python TIR visitor; the printed form shows every thread binding.
    return "T.thread_binding(" in func.script() or '"blockIdx.' in func.script()


def unscheduled_functions(mod: tvm.ir.IRModule) -> list[str]:
    """Names of the PrimFuncs in ``mod`` that no rule scheduled and that bind no GPU thread."""
    return sorted(
        gv.name_hint
        for gv, func in mod.functions_items()
        if isinstance(func, tirx.PrimFunc) and not _is_scheduled(func) and not _binds_threads(func)
    )


def check_scheduled() -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name="GraphoptCheckScheduled")
    def check(mod: tvm.ir.IRModule, _ctx) -> tvm.ir.IRModule:
        missing = unscheduled_functions(mod)
        if missing:
            raise UnsupportedError(
                f"{len(missing)} kernel(s) got no GPU schedule (no graphopt or dlight rule matched): " + ", ".join(missing[:8])
            )
        return mod

    return check
