"""graphopt's Relax pipeline for CUDA: TVM's CUDA pipeline with graphopt's schedule rules in front.

TVM's own pipeline (``tvm/relax/backend/cuda/pipeline.py``) is: library dispatch, legalize + fuse,
dlight's default GPU rules (Matmul, GEMV, Reduction, GeneralReduction, Fallback), dataflow lowering,
memory planning. graphopt keeps all of it and changes the scheduling step only:

1. a MetaSchedule database, when given, schedules the kernels it has records for;
2. graphopt's rules (``rules.py``) take the kernels dlight schedules badly or not at all;
3. dlight's rules take the rest (a rule that fails on a kernel hands it to the next one);
4. ``check_scheduled`` fails with the names of any PrimFunc still without a GPU schedule (instead
   of the anonymous "did you forget to bind?" that ``VerifyMemory`` raises much later).
"""

from __future__ import annotations

import os

import tvm
from tvm import relax
from tvm.s_tir import dlight as dl

from graphopt.backends.tvm.cuda.rules import GRAPHOPT_GPU_RULES
from graphopt.backends.tvm.cuda.verify import check_scheduled

__all__ = ["gpu_pipeline", "schedule_passes"]


def schedule_passes(target: tvm.target.Target, database=None) -> list:
    """Legalize, fuse and give every PrimFunc a GPU schedule (database, graphopt rules, dlight)."""
    passes = [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]
    if isinstance(database, (str, os.PathLike)):  # a tuning work dir (--tune-database), as on CPU
        from graphopt.backends.tvm.tune import apply_database_pass  # noqa: PLC0415

        passes.append(apply_database_pass(os.fspath(database)))
    elif database is not None:
        passes.append(_apply_database(database))
    passes += [
        dl.ApplyDefaultSchedule(
            *GRAPHOPT_GPU_RULES,
            *(Tolerant(rule) for rule in (dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction())),
            dl.gpu.Fallback(),
        ),
        check_scheduled(),
    ]
    return passes


class Tolerant(dl.ScheduleRule):
    """A dlight rule whose failure on a kernel passes the kernel to the next rule.

    dlight's rules assert their own assumptions (GEMV's ``normalize`` asserts spatial loops and
    failed on a MobileNetV2 kernel), and one assertion would stop the whole build.
    """

    def __init__(self, rule: dl.ScheduleRule):
        self.rule = rule

    def apply(self, func, target, tunable):
        try:
            return self.rule.apply(func, target, tunable)
        except Exception:  # noqa: BLE001 — assertions, ScheduleErrors, TVM internal errors alike
            return None


def _apply_database(database) -> tvm.transform.Pass:
    """MetaScheduleApplyDatabase with ``database`` as the current one (it reads Database.current())."""

    @tvm.transform.module_pass(opt_level=0, name="GraphoptApplyDatabase")
    def apply(mod: tvm.ir.IRModule, _ctx) -> tvm.ir.IRModule:
        with database:
            return relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)

    return apply


def gpu_pipeline(target: tvm.target.Target, database=None) -> tvm.transform.Pass:
    """The whole Relax -> VM pipeline for a CUDA ``target`` (give it to ``tvm.compile(relax_pipeline=...)``)."""
    from tvm.relax.backend.cuda import pipeline as cuda  # noqa: PLC0415

    @tvm.transform.module_pass(opt_level=0, name="GraphoptGpuPipeline")
    def pipeline(mod: tvm.ir.IRModule, _ctx) -> tvm.ir.IRModule:
        with target:
            return tvm.transform.Sequential(
                cuda.library_dispatch_passes(target)
                + schedule_passes(target, database)
                + cuda.dataflow_lower_passes(target)
                + cuda.finalize_passes(target)
            )(mod)

    return pipeline
