"""What a backend is and what its artifact can do: typed, so nothing is probed with ``getattr``.

    Backend  = preflight(model, target) -> problems;  compile(model, *, target, options) -> Artifact
    Artifact = run(feeds) -> outputs;  time(feeds, runs) -> Timing;  save(folder) -> files
               target, details (for the report), can_time (runs natively here)

Each backend declares its own ``Options`` dataclass (``BuildOptions`` plus what only it reads),
built from the run's settings by ``Options.from_settings``; an option a backend does not have is
a TypeError at the call, never dropped. Backend modules (``graphopt.backends.ort``,
``graphopt.backends.tvm``) satisfy ``Backend`` as modules; ``tests/core/test_backend_protocol.py``
checks both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # the CLI imports backends at start-up: annotations only, no numpy there
    import numpy as np
    import onnx_ir as ir

__all__ = ["Artifact", "Backend", "BuildOptions", "Timing"]


@dataclasses.dataclass
class Timing:
    """Latency of one artifact on one input: median and spread over ``runs`` timed calls."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    threads: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """What every backend's compile takes."""

    threads: int = 2
    example_inputs: Mapping[str, np.ndarray] | None = None  # fixes static shapes where a backend needs them
    progress: bool = False

    @classmethod
    def from_settings(cls, settings: Any, example_inputs: Mapping[str, np.ndarray] | None = None) -> BuildOptions:
        """This backend's options from a compile's ``stages.Settings``."""
        return cls(threads=settings.threads, example_inputs=example_inputs, progress=settings.progress is not None)


@runtime_checkable
class Artifact(Protocol):
    target: str
    details: dict

    @property
    def can_time(self) -> bool: ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def time(self, feeds: Mapping[str, np.ndarray], runs: int = 20) -> Timing: ...

    def save(self, folder: str) -> list[str]: ...


@runtime_checkable
class Backend(Protocol):
    Options: type[BuildOptions]

    def preflight(self, model: ir.Model, target: str) -> list[str]: ...

    def compile(self, model: ir.Model, *, target: str, options: BuildOptions | None = None) -> Artifact: ...
