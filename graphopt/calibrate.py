"""The calibration engine: run the model in ONNX Runtime on samples and collect tensor statistics.

Any pass that needs statistics asks for value names; the engine exposes those intermediate values
as extra graph outputs of a copy of the model, runs every sample (ORT optimizations off, so the
values are the graph's own) and hands back a ``Calibration``: each value over the samples, with
its quantiles, histograms and the symmetric quantization range a pass's ``CalibrationOptions``
ask for (``TensorStats`` reduces a value to min/max, percentiles, a histogram and per-channel
min/max). Values are captured in chunks so memory stays bounded on big models.

A pass declares ``needs_calibration = True`` (the pipeline then gives it the run's samples),
inherits its options from ``CalibrationOptions`` and calls ``GraphoptPass.calibrate(model,
names)``, which is ``calibrate`` below: the one place that asks for samples.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Generic, Literal, TypeVar

import numpy as np
import onnx_ir as ir

from graphopt import registry
from graphopt.errors import UsageError
from graphopt.shapes import infer_shapes

__all__ = [
    "HISTOGRAM_BINS",
    "Calibration",
    "CalibrationOptions",
    "Calibrator",
    "Scales",
    "TensorStats",
    "bits_option",
    "calibrate",
    "needs_samples_message",
    "tensor_stats",
]

logger = logging.getLogger(__name__)

DEFAULT_PERCENTILES = (0.01, 0.1, 1.0, 50.0, 99.0, 99.9, 99.99)
HISTOGRAM_BINS = 2048  # calibration="histogram": the range is read off this many bins of |x|


def bits_option(default: int, choices: tuple[int, ...] | None = None) -> Any:
    """The ``input_bits`` field of a pass's options: its default, and the widths its island takes
    (``choices``, e.g. the int8 and int16 QuantizeLinear containers; otherwise 2..16)."""
    return dataclasses.field(default=default, metadata={"choices": choices} if choices else {"range": (2, 16)})


@dataclasses.dataclass(frozen=True)
class CalibrationOptions:
    """The options every calibrated pass's options inherit: how activations become a symmetric range.

    ``calibration``: ``minmax`` takes max|x| over the samples; ``percentile`` the ``percentile``-th
    percentile of |x| (numpy's, exact); ``histogram`` reads that percentile off a
    ``HISTOGRAM_BINS``-bin histogram of |x| over [0, max|x|]: the upper edge of the first bin where
    the cumulative count reaches ``percentile``% of the values. ``input_bits`` is the
    width the activation is quantized to, ``scale = range / (2^(input_bits-1) - 1)``; a pass
    redeclares it with ``bits_option`` for its own default and supported widths.

    Every field (a subclass's too) is checked against its type and ``metadata`` range or choices
    by ``registry``, once: a bad value is a ``UsageError`` (exit 2) when the pipeline is parsed,
    or when the options are built in Python.
    """

    calibration: Literal["minmax", "percentile", "histogram"] = "minmax"
    percentile: float = dataclasses.field(default=99.99, metadata={"range": (50.0, 100.0)})
    input_bits: int = bits_option(8)

    def __post_init__(self) -> None:
        registry.check_options(self)


T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Scales(Generic[T]):
    """What a pass computed per calibrated value before building its rules (a scale, or a site's
    constants), read-only, and why a value got none. Rules take it as a constructor argument."""

    found: Mapping[str, T] = dataclasses.field(default_factory=dict)
    reasons: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "found", MappingProxyType(dict(self.found)))
        object.__setattr__(self, "reasons", MappingProxyType(dict(self.reasons)))

    def get(self, name: str) -> T | None:
        return self.found.get(name)

    def reason(self, name: str) -> str:
        """Why ``name`` has no scale (the decline message)."""
        return self.reasons.get(name, f"no calibration statistics for {name}")


def needs_samples_message(pass_name: str) -> str:
    return (f"pass '{pass_name}' needs calibration samples and got none: run it through graphopt.compile or "
            "run_pipeline (calibration data, or synthetic inputs), or set the pass's .samples")


def calibrate(model: ir.Model, samples: Sequence[Mapping[str, np.ndarray]] | None, names: Iterable[str], *,
              pass_name: str, ignore_below: float = -math.inf) -> Calibration:
    """Run ``model`` once on ``samples``, capturing ``names``: the one place a pass asks for samples."""
    if not samples:
        raise UsageError(needs_samples_message(pass_name))
    return Calibration(Calibrator(model, samples).capture(list(names)), ignore_below=ignore_below)


class Calibration:
    """One calibration run: each captured value over the samples, and what passes read off it.

    ``ignore_below`` leaves values at or below it out of every statistic (``shiftmax``: additive
    attention-mask fills, which would otherwise set the range). Non-finite values are always left
    out. A name that was not captured (no inferred type) has no values: its ranges are None.
    """

    def __init__(self, captured: Mapping[str, Sequence[np.ndarray]], *, ignore_below: float = -math.inf) -> None:
        self.arrays: Mapping[str, Sequence[np.ndarray]] = MappingProxyType(dict(captured))  # per sample, as run
        self.ignore_below = ignore_below

    def values(self, name: str) -> np.ndarray:
        """``name``'s kept values over all samples, flat float64 (empty when none or not captured)."""
        arrays = self.arrays.get(name) or []
        if not arrays:
            return np.zeros(0)
        flat = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])
        return flat[np.isfinite(flat) & (flat > self.ignore_below)]

    def quantile(self, name: str, q: float, *, absolute: bool = False) -> float | None:
        """The ``q``-quantile (0 <= q <= 1, numpy's linear interpolation) of the values, or of |values|."""
        flat = np.abs(self.values(name)) if absolute else self.values(name)
        return float(np.quantile(flat, q)) if flat.size else None

    def histogram(self, name: str, bins: int = HISTOGRAM_BINS, *,
                  absolute: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
        """(counts, edges) of ``bins`` equal bins over [min, max] of the values ([0, max] of |values|)."""
        flat = np.abs(self.values(name)) if absolute else self.values(name)
        if not flat.size:
            return None
        low = 0.0 if absolute else float(flat.min())
        high = float(flat.max())
        return np.histogram(flat, bins=bins, range=(low, high if high > low else low + 1.0))

    def symmetric_range(self, name: str, options: CalibrationOptions) -> float | None:
        """The range a symmetric quantizer covers, by ``options.calibration``; None without values."""
        flat = np.abs(self.values(name))
        if not flat.size:
            return None
        if options.calibration == "minmax":
            return float(flat.max())
        if options.calibration == "percentile":
            return float(np.percentile(flat, options.percentile))
        counts, edges = self.histogram(name, absolute=True)
        reached = int(np.searchsorted(np.cumsum(counts), options.percentile / 100.0 * flat.size))
        return float(edges[min(reached + 1, len(edges) - 1)])

    def symmetric_scales(self, names: Iterable[str], options: CalibrationOptions, *,
                         qmax: Callable[[str], int] | None = None) -> Scales[float]:
        """Per-tensor scales ``range / qmax`` (float32-representable; qmax ``2^(input_bits-1) - 1``
        unless ``qmax(name)`` says otherwise), and why a name got none."""
        scales, reasons = {}, {}
        for name in names:
            bound = self.symmetric_range(name, options)
            if bound is None:
                reasons[name] = f"no calibration statistics for {name}"
                continue
            if not math.isfinite(bound) or bound <= 0.0:
                reasons[name] = f"calibrated range of {name} is {bound!r}; cannot pick a scale"
                continue
            top = qmax(name) if qmax is not None else 2 ** (options.input_bits - 1) - 1
            scale = float(np.float32(bound / top))
            if not scale > 0.0:
                reasons[name] = f"calibrated range of {name} ({bound:g}) underflows a float32 scale"
                continue
            scales[name] = scale
        return Scales(scales, reasons)

    def stats(self, **kwargs) -> dict[str, TensorStats]:
        return {name: tensor_stats(arrays, **kwargs) for name, arrays in self.arrays.items()}


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
