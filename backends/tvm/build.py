"""Relax IRModule -> TVM executable for one target, with graphopt's pipeline for that target.

CPU targets (host x86-64 and aarch64) use graphopt's CPU pipeline (``backends/tvm/cpu``): TVM's own
legalization and fusion plus graphopt's schedule rules for every kernel, because TVM's CPU pipeline
schedules nothing. CUDA uses ``backends/tvm/cuda`` (dlight GPU rules + graphopt's rules for its own
kernels). A MetaSchedule database (``tune.py``), when given, schedules the kernels it holds records
for, before graphopt's rules see the rest.
"""

from __future__ import annotations

from graphopt.backends.tvm.targets import TargetSpec

__all__ = ["build", "relax_pipeline"]


def relax_pipeline(spec: TargetSpec, database: str | None = None, record: dict | None = None):
    """The Relax pipeline for ``spec`` (a tvm.transform.Pass); ``database`` is a tuning work dir;
    ``record`` collects kernel name -> the CPU schedule rule that scheduled it."""
    target = spec.tvm_target()
    if spec.is_cuda:
        from graphopt.backends.tvm.cuda import gpu_pipeline  # noqa: PLC0415

        return gpu_pipeline(target, database=database)
    from graphopt.backends.tvm import cpu  # noqa: PLC0415

    if database is None:
        return cpu.cpu_pipeline(target, record=record)
    import tvm  # noqa: PLC0415

    from graphopt.backends.tvm.tune import apply_database_pass  # noqa: PLC0415

    @tvm.transform.module_pass(opt_level=0, name="GraphoptTunedCpuPipeline")
    def _pipeline(mod, _ctx):
        passes = [*cpu.legalize_passes(target), apply_database_pass(database), *cpu.schedule_passes(target, record=record), *cpu.lower_passes()]
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def build(mod, spec: TargetSpec, database: str | None = None, record: dict | None = None):
    """Compile ``mod`` for ``spec``; returns a ``tvm.relax.VMExecutable``."""
    import tvm  # noqa: PLC0415

    target = spec.tvm_target()
    with target:
        return tvm.compile(mod, target=target, relax_pipeline=relax_pipeline(spec, database, record))
