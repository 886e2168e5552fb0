"""The TVM backend (targets ``tvm-llvm``, ``tvm-aarch64``, ``tvm-cuda`` and JSON target dicts).

    model (onnx_ir, rewritten) --prepare--> registered passes (category "backend"): static shapes,
        folded shape arithmetic, forms TVM's frontend reads right
        --importer--> Relax (graphopt ops as native TE kernels, int8 matmuls per target)
        --build--> graphopt's pipeline for the target (own CPU schedule rules / dlight on CUDA)
        --> TvmArtifact (run, time, save .so + metadata, load)

``preflight`` lists every op the importer cannot convert before anything is compiled (exit code 4).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Mapping

# TVM's thread pool pins its workers *and the calling thread* to cores (thread 0 to core 0); every
# thread started later from the caller inherits the pin: ONNX Runtime sessions made after a TVM run
# got two threads on one core (ORT FP32 MiniLM 42 ms instead of ~24 ms). Read when the pool starts;
# set TVM_BIND_THREADS=1 to opt back in.
os.environ.setdefault("TVM_BIND_THREADS", "0")

import numpy as np
import onnx_ir as ir

from graphopt.backends.protocol import BuildOptions
from graphopt.backends.tvm import importer, targets
from graphopt.backends.tvm._log import tvm_log_to_debug
from graphopt.backends.tvm.artifact import TensorInfo, TvmArtifact
from graphopt.errors import UnsupportedError

__all__ = ["Options", "TvmArtifact", "compile", "load", "preflight"]


def preflight(model: ir.Model, target: str = "tvm-llvm") -> list[str]:
    """Problems that stop ``target`` before compiling: an unusable target or ops without a converter."""
    try:
        targets.resolve(target)
    except UnsupportedError as e:
        return [str(e)]
    return [f"{target}: {p}" for p in importer.preflight(model)]


@dataclasses.dataclass(frozen=True)
class Options(BuildOptions):
    tune_budget: int = 0  # MetaSchedule trials before the build (host targets only, minutes)
    tune_database: str | None = None  # a folder of tuning records (an earlier run's tuning/) to apply and extend

    @classmethod
    def from_settings(cls, settings, example_inputs=None) -> Options:
        return cls(threads=settings.threads, example_inputs=example_inputs, progress=settings.progress is not None,
                   tune_budget=settings.tune_budget, tune_database=settings.tune_database)


def compile(model: ir.Model, *, target: str = "tvm-llvm", options: Options | None = None, **values) -> TvmArtifact:  # noqa: A001
    """Import, schedule and compile ``model`` for ``target``; shapes come from ``example_inputs``
    (or the model's static input shapes).

    ``options`` or its fields as keywords (``threads=1, example_inputs=feeds``); a name ``Options``
    lacks is a TypeError. ``tune_budget`` > 0 runs that many MetaSchedule trials first;
    ``tune_database`` applies (and extends) earlier records. Without either, graphopt's schedule
    rules alone schedule every kernel.
    """
    options = options or Options(**values)
    spec = targets.resolve(target)
    with tvm_log_to_debug():  # TVM's C++ warnings ("Fast mode segfaults ...") are not the user's to read
        return _compile(model, spec, options)


def _compile(model: ir.Model, spec: targets.TargetSpec, options: Options) -> TvmArtifact:
    start = time.perf_counter()
    shapes = importer.static_shapes(model, options.example_inputs)
    prepared, preparation = importer.prepare(model, shapes)
    mod = importer.to_relax(prepared, shapes, spec.tvm_target())
    imported = time.perf_counter()
    from graphopt.backends.tvm.build import build  # noqa: PLC0415

    database = None
    if options.tune_budget > 0 or options.tune_database:
        from graphopt.backends.tvm import tune  # noqa: PLC0415

        database = options.tune_database or tempfile.mkdtemp(prefix="graphopt-tuning-")
        if options.tune_budget > 0:
            tune.tune(tune.fused_module(mod, spec), spec, database, options.tune_budget, progress=options.progress)
    tuned = time.perf_counter()
    kernel_rules: dict[str, str] = {}
    executable = build(mod, spec, database=database, record=kernel_rules)
    done = time.perf_counter()
    inputs = [TensorInfo(v.name, v.dtype.numpy().name, tuple(shapes[v.name])) for v in prepared.graph.inputs]
    outputs = [
        TensorInfo(v.name, v.dtype.numpy().name, tuple(v.shape) if v.shape is not None and all(isinstance(d, int) for d in v.shape) else ())
        for v in prepared.graph.outputs
    ]
    details = {"import_seconds": round(imported - start, 3), "build_seconds": round(done - tuned, 3),
               "prepare": [{"pass": r.name, "rewrites": r.rewrites, "notes": r.notes} for r in preparation if r.modified]}
    if database is not None:
        details.update(tune_seconds=round(tuned - imported, 3), tune_trials=options.tune_budget)
    return TvmArtifact(spec, inputs, outputs, executable=executable, threads=options.threads, details=details, tuning_dir=database,
                       kernel_rules=kernel_rules)


def load(folder: str, threads: int = 2) -> TvmArtifact:
    """A saved TVM artifact (``model.so`` + ``metadata.json``), ready to run."""
    return TvmArtifact.load(folder, threads=threads)
