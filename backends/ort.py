"""The ONNX Runtime backend (target ``onnx``): sessions, running, timing, saved artifacts.

The rewritten model is portable ONNX: graphopt ops travel as model-local functions in the
``pkg.graphopt`` domain (attached by ``graphopt.ops.attach_functions``), so any ONNX runtime can
run it. Reference runs use ``optimization="disable"`` so ORT's own fusions cannot hide or cause
differences; timing runs default to ``"all"``, the way users deploy.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from graphopt import ops, storage
from graphopt.backends import ort_kernels
from graphopt.backends.protocol import BuildOptions, Timing
from graphopt.errors import ModelError, UsageError

__all__ = ["OPTIMIZATION_LEVELS", "OnnxArtifact", "Options", "Timing", "compile", "make_session", "preflight", "run", "time_session"]

TARGET = "onnx"
OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_STATE = ort.capi.onnxruntime_pybind11_state
RUN_ERRORS = (_STATE.Fail, _STATE.InvalidArgument, _STATE.RuntimeException, _STATE.NotImplemented, _STATE.InvalidGraph)
_INLINE_LIMIT = 1 << 30  # bytes of weights above which the session is built from a file


def make_session(model: ir.Model, *, optimization: str = "disable", threads: int = 2) -> ort.InferenceSession:
    """An ORT CPU session for ``model`` with a fixed thread count and optimization level."""
    if optimization not in OPTIMIZATION_LEVELS:
        raise UsageError(f"unknown ORT optimization level '{optimization}' (valid: {', '.join(OPTIMIZATION_LEVELS)})")
    options = ort.SessionOptions()
    options.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    ops.attach_functions(model)
    try:
        if storage._weights_bytes(model) > _INLINE_LIMIT:
            with tempfile.TemporaryDirectory(prefix="graphopt-ort-") as folder:
                path = os.path.join(folder, "model.onnx")
                storage.save_model(model, path, external_data=True)
                return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return ort.InferenceSession(storage.inline_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidGraph,
            ort.capi.onnxruntime_pybind11_state.NotImplemented, ort.capi.onnxruntime_pybind11_state.InvalidArgument) as e:
        raise ModelError(f"ONNX Runtime cannot load the model: {str(e).strip().splitlines()[0]}") from e


def run(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds))))


def time_session(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray], *, runs: int = 20, warmup: int = 3, threads: int = 2) -> Timing:
    """Median latency over ``runs`` after ``warmup`` runs (a fixed thread count, one feed)."""
    for _ in range(warmup):
        session.run(None, dict(feeds))
    samples = []
    for _ in range(max(runs, 1)):
        start = time.perf_counter()
        session.run(None, dict(feeds))
        samples.append((time.perf_counter() - start) * 1e3)
    deciles = statistics.quantiles(samples, n=10) if len(samples) >= 2 else [samples[0]] * 9
    return Timing(statistics.median(samples), deciles[0], deciles[-1], len(samples), threads)


@dataclasses.dataclass
class OnnxArtifact:
    """The runnable result for target ``onnx``: the portable model and an ORT session on demand."""

    model: ir.Model
    threads: int = 2
    optimization: str = "all"
    target: str = TARGET
    details: dict = dataclasses.field(default_factory=dict)
    _session: ort.InferenceSession | None = dataclasses.field(default=None, repr=False)

    @property
    def can_time(self) -> bool:
        return True

    @property
    def session(self) -> ort.InferenceSession:
        if self._session is None:
            self._session = make_session(self.model, optimization=self.optimization, threads=self.threads)
        return self._session

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return run(self.session, feeds)

    def time(self, feeds: Mapping[str, np.ndarray], runs: int = 20) -> Timing:
        return time_session(self.session, feeds, runs=runs, threads=self.threads)

    def save(self, folder: str) -> list[str]:
        return storage.save_model(self.model, os.path.join(folder, "model.onnx"))

    @classmethod
    def load(cls, folder: str, **kwargs) -> OnnxArtifact:
        from graphopt.capture import load_path  # noqa: PLC0415 — keeps backends free of import cycles

        return cls(load_path(os.path.join(folder, "model.onnx")), **kwargs)


@dataclasses.dataclass(frozen=True)
class Options(BuildOptions):
    optimization: str = "all"  # ORT graph optimization level of the session (OPTIMIZATION_LEVELS)

    @classmethod
    def from_settings(cls, settings, example_inputs=None) -> Options:
        return cls(threads=settings.threads, example_inputs=example_inputs, progress=settings.progress is not None,
                   optimization=settings.ort_optimization)


def compile(model: ir.Model, *, target: str = TARGET, options: Options | None = None, **values) -> OnnxArtifact:  # noqa: A001
    """Nothing to compile for ORT: attach graphopt function bodies and wrap the model.

    ``options`` or its fields as keywords (``threads=1``); a name ``Options`` lacks is a TypeError.
    """
    options = options or Options(**values)
    ops.attach_functions(model)
    return OnnxArtifact(model, threads=options.threads, optimization=options.optimization, target=target)


def preflight(model: ir.Model, target: str = TARGET) -> list[str]:
    """Ops ORT's CPU provider cannot run (custom domains without a body, input types without a
    kernel: ``ort_kernels``), after attaching graphopt ops' function bodies."""
    ops.attach_functions(model)
    return ort_kernels.unsupported_ops(model)
