"""Relax IRModule -> TVM executable for one target, with graphopt's pipeline for that target.

CPU targets (host x86-64 and aarch64) use graphopt's CPU pipeline (``backends/tvm/cpu``): TVM's own
legalization and fusion plus graphopt's schedule rules for every kernel, because TVM's CPU pipeline
schedules nothing. CUDA uses ``backends/tvm/cuda`` (dlight GPU rules + graphopt's rules for its own
kernels). A MetaSchedule database (``tune.py``), when given, takes precedence for the kernels it holds.
"""

from __future__ import annotations

import importlib

from graphopt.backends.tvm.targets import TargetSpec

__all__ = ["build", "relax_pipeline"]


def relax_pipeline(spec: TargetSpec, database=None):
    """The Relax pipeline for ``spec`` (a tvm.transform.Pass)."""
    target = spec.tvm_target()
    if spec.is_cuda:
        return importlib.import_module("graphopt.backends.tvm.cuda").gpu_pipeline(target, database=database)
    try:  # TODO(lead): drop the fallback once the CPU rules land
        return importlib.import_module("graphopt.backends.tvm.cpu").cpu_pipeline(target)
    except (ModuleNotFoundError, AttributeError):
        return "default"


def build(mod, spec: TargetSpec, database=None):
    """Compile ``mod`` for ``spec``; returns a ``tvm.relax.VMExecutable``."""
    import tvm  # noqa: PLC0415

    target = spec.tvm_target()
    with target:
        return tvm.compile(mod, target=target, relax_pipeline=relax_pipeline(spec, database))
