"""The calibration engine: run the model in ONNX Runtime on samples and collect tensor statistics.

Any pass that needs statistics asks for value names; the engine exposes those intermediate values
as extra graph outputs of a copy of the model, runs every sample (ORT optimizations off, so the
values are the graph's own), and reduces them to ``TensorStats``: min/max, percentiles, a histogram
and per-channel min/max. Values are captured in chunks so memory stays bounded on big models.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from graphopt.shapes import infer_shapes

__all__ = ["Calibrator", "TensorStats", "tensor_stats"]

logger = logging.getLogger(__name__)

DEFAULT_PERCENTILES = (0.01, 0.1, 1.0, 50.0, 99.0, 99.9, 99.99)


@dataclasses.dataclass
class TensorStats:
    min: float
    max: float
    abs_max: float
    mean: float
    std: float
    percentiles: dict[float, float]
    histogram: tuple[np.ndarray, np.ndarray]  # counts, bin edges
    channel_min: np.ndarray | None = None
    channel_max: np.ndarray | None = None

    def symmetric_range(self, percentile: float | None = None) -> float:
        """The range a symmetric quantizer covers: max|x|, or with ``percentile`` p the larger magnitude
        of the (100-p)-th and p-th percentiles (both must have been collected)."""
        if percentile is None:
            return self.abs_max
        return max(abs(self.percentiles[100.0 - percentile]), abs(self.percentiles[percentile]))

    def as_dict(self) -> dict:
        return {
            "min": self.min, "max": self.max, "abs_max": self.abs_max, "mean": self.mean, "std": self.std,
            "percentiles": {str(k): v for k, v in self.percentiles.items()},
        }


def tensor_stats(
    arrays: Sequence[np.ndarray], *, percentiles: Sequence[float] = DEFAULT_PERCENTILES, bins: int = 2048, channel_axis: int | None = None
) -> TensorStats:
    flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        flat = np.zeros(1)
    low, high = float(flat.min()), float(flat.max())
    counts, edges = np.histogram(flat, bins=bins, range=(low, high if high > low else low + 1.0))
    stats = TensorStats(
        min=low, max=high, abs_max=float(np.abs(flat).max()), mean=float(flat.mean()), std=float(flat.std()),
        percentiles={p: float(v) for p, v in zip(percentiles, np.percentile(flat, list(percentiles)))},
        histogram=(counts, edges),
    )
    if channel_axis is not None:
        moved = [np.moveaxis(np.asarray(a), channel_axis, -1).reshape(-1, np.shape(a)[channel_axis]) for a in arrays]
        stacked = np.concatenate(moved)
        stats.channel_min, stats.channel_max = stacked.min(0), stacked.max(0)
    return stats


class Calibrator:
    """Runs ``model`` on ``samples`` and captures the intermediate values passes ask for."""

    def __init__(self, model: ir.Model, samples: Sequence[Mapping[str, np.ndarray]], *, threads: int = 2, chunk: int = 256,
                 progress: Callable[[Iterable], Iterable] | None = None) -> None:
        self.model = model
        self.samples = list(samples)
        self.threads = threads
        self.chunk = chunk
        self.progress = progress
        self._typed: set[str] | None = None
        self._known: set[str] = set()

    def capture(self, names: Sequence[str]) -> dict[str, list[np.ndarray]]:
        """Each requested value, once per sample."""
        from graphopt.backends import ort as ort_backend  # noqa: PLC0415 — ORT only when calibrating

        names = [n for n in names if self._capturable(n)]  # untyped values (after custom-domain ops) are left out
        captured: dict[str, list[np.ndarray]] = {n: [] for n in names}
        chunks = [list(names[i:i + self.chunk]) for i in range(0, len(names), self.chunk)]
        for chunk in self.progress(chunks) if self.progress else chunks:
            probe = self._with_outputs(chunk)
            session = ort_backend.make_session(probe, optimization="disable", threads=self.threads)
            for sample in self.samples:
                outputs = ort_backend.run(session, sample)
                for name in chunk:
                    captured[name].append(outputs[name])
        return captured

    def stats(self, names: Sequence[str], **kwargs) -> dict[str, TensorStats]:
        return {name: tensor_stats(arrays, **kwargs) for name, arrays in self.capture(names).items()}

    def _capturable(self, name: str) -> bool:
        """Whether ``name`` gets a type from shape inference (ORT needs one on a graph output); a value
        computed by an op inference does not know (``com.microsoft`` fused ops) is left out, and the
        pass that asked says it has no statistics for it."""
        if self._typed is None:
            probe = self.model.clone()
            infer_shapes(probe)
            self._typed = {v.name for node in probe.graph for v in node.outputs if v.type is not None}
            self._typed |= {v.name for v in probe.graph.inputs} | {v.name for v in probe.graph.outputs}
            self._known = {v.name for node in probe.graph for v in node.outputs} | {v.name for v in probe.graph.inputs}
        if name not in self._known:
            raise KeyError(f"calibration asked for value {name!r}, which the model does not have")
        if name not in self._typed:
            logger.info("not capturing %s: shape inference gives it no type", name)
            return False
        return True

    def _with_outputs(self, names: Sequence[str]) -> ir.Model:
        probe = self.model.clone()
        infer_shapes(probe)  # ORT needs a type on every graph output
        values = {v.name: v for node in probe.graph for v in node.outputs}
        values.update({v.name: v for v in probe.graph.inputs})
        existing = {v.name for v in probe.graph.outputs}
        for name in names:
            if name not in values:
                raise KeyError(f"calibration asked for value {name!r}, which the model does not have")
            if name not in existing:
                value = values[name]
                if value.type is None:
                    raise ValueError(f"value {name!r} has no inferred type; cannot capture it")
                probe.graph.outputs.append(value)
        return probe
