"""Comparison metrics between original and rewritten outputs, and the tolerances that gate them.

Per output: max/mean absolute error, cosine similarity, SQNR (dB) and, when the output looks like
logits (float, last axis > 1), top-1 agreement. Metrics aggregate over samples (max error is the
max, cosine/SQNR are computed on all samples concatenated).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["OutputMetrics", "Tolerances", "apply_mask", "compare_outputs", "cosine", "detect_mask_input", "sqnr_db"]

MASK_NAMES = ("attention_mask", "input_mask", "mask")  # integer/bool [batch, seq] inputs that mark real tokens


AUTO = "auto"
# The default cosine floor: exact rewrites (canonicalize, cleanup) must keep the outputs; pipelines
# with an approximating pass (category "rewrite": int8, shift, integer-only ops) are held to the
# bar the papers and the brief set for them (integer-only MiniLM >= 0.99 of FP32).
MIN_COSINE_EXACT = 0.999
MIN_COSINE_APPROXIMATE = 0.99


@dataclasses.dataclass(frozen=True)
class Tolerances:
    atol: float | None = None
    rtol: float | None = None
    min_cosine: float | str | None = AUTO  # AUTO: MIN_COSINE_EXACT, or MIN_COSINE_APPROXIMATE (see resolved)
    min_sqnr: float | None = None
    min_top1: float | None = None
    allow_nonfinite: bool = False  # NaN/Inf pass only when allowed and at the same places on both sides

    def resolved(self, approximating: bool) -> Tolerances:
        """These tolerances with the AUTO cosine floor made a number for a pipeline that
        approximates (or does not)."""
        if self.min_cosine != AUTO:
            return self
        return dataclasses.replace(self, min_cosine=MIN_COSINE_APPROXIMATE if approximating else MIN_COSINE_EXACT)

    def violations(self, name: str, m: OutputMetrics) -> list[str]:
        problems = []
        if m.shape_mismatch:
            return [f"{name}: {m.shape_mismatch}"]
        if m.nonfinite_original or m.nonfinite_rewritten:
            counts = f"{m.nonfinite_original} NaN/Inf value(s) in the original, {m.nonfinite_rewritten} in the rewritten output"
            if not self.allow_nonfinite:
                problems.append(f"{name}: {counts} (check the data; --allow-nonfinite accepts them where both sides agree)")
            elif not m.nonfinite_agree:
                problems.append(f"{name}: {counts}, at different places")
        if self.atol is not None or self.rtol is not None:
            atol = self.atol or 0.0
            rtol = self.rtol or 0.0
            if m.max_abs > atol + rtol * m.ref_max_abs:
                problems.append(f"{name}: max abs error {m.max_abs:.3g} > atol {atol:g} + rtol {rtol:g} x {m.ref_max_abs:.3g}")
        if self.min_cosine is not None and m.cosine < self.resolved(approximating=False).min_cosine:
            problems.append(f"{name}: cosine {m.cosine:.6f} < {self.min_cosine}")
        if self.min_sqnr is not None and m.sqnr_db < self.min_sqnr:
            problems.append(f"{name}: SQNR {m.sqnr_db:.1f} dB < {self.min_sqnr} dB")
        if self.min_top1 is not None and m.top1 is not None and m.top1 < self.min_top1:
            problems.append(f"{name}: top-1 agreement {m.top1:.4f} < {self.min_top1}")
        return problems


@dataclasses.dataclass
class OutputMetrics:
    max_abs: float
    mean_abs: float
    cosine: float
    sqnr_db: float
    ref_max_abs: float
    top1: float | None = None
    shape_mismatch: str | None = None
    nonfinite_original: int = 0
    nonfinite_rewritten: int = 0
    nonfinite_agree: bool = True  # every NaN/Inf has the same special value on the other side

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) and k != "sqnr_db" else v) for k, v in dataclasses.asdict(self).items()}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    ref = reference.astype(np.float64)
    noise = np.sum((ref - test.astype(np.float64)) ** 2)
    signal = np.sum(ref**2)
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return float(10 * np.log10(signal / noise))


def _looks_like_logits(name: str, sample: np.ndarray) -> bool:
    return sample.dtype.kind == "f" and sample.ndim >= 1 and sample.shape[-1] > 1 and (sample.ndim == 2 or "logit" in name.lower())


def _compare_one(name: str, refs: Sequence[np.ndarray], tests: Sequence[np.ndarray]) -> OutputMetrics:
    for r, t in zip(refs, tests):
        if r.shape != t.shape:
            return OutputMetrics(math.inf, math.inf, 0.0, -math.inf, 0.0, shape_mismatch=f"shape {t.shape} != original {r.shape}")
    if refs and refs[0].dtype.kind not in "fciub":
        equal = all(np.array_equal(r, t) for r, t in zip(refs, tests))
        return OutputMetrics(0.0 if equal else math.inf, 0.0 if equal else math.inf, 1.0 if equal else 0.0, math.inf, 0.0)
    ref = np.concatenate([r.astype(np.float64).ravel() for r in refs]) if refs else np.zeros(0)
    test = np.concatenate([t.astype(np.float64).ravel() for t in tests]) if tests else np.zeros(0)
    finite = np.isfinite(ref) & np.isfinite(test)
    same_special = (~np.isfinite(ref)) & (~np.isfinite(test)) & ((ref == test) | (np.isnan(ref) & np.isnan(test)))
    diff = np.where(finite, np.abs(ref - test), np.where(same_special, 0.0, np.inf))
    metrics = OutputMetrics(
        max_abs=float(diff.max()) if diff.size else 0.0,
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        cosine=cosine(np.where(finite, ref, 0), np.where(finite, test, 0)),
        sqnr_db=sqnr_db(np.where(finite, ref, 0), np.where(finite, test, 0)),
        ref_max_abs=float(np.abs(ref[finite]).max()) if finite.any() else 0.0,
        nonfinite_original=int((~np.isfinite(ref)).sum()),
        nonfinite_rewritten=int((~np.isfinite(test)).sum()),
        nonfinite_agree=bool(np.all(finite | same_special)),
    )
    if _looks_like_logits(name, refs[0]):
        agree = [np.mean(np.argmax(r, -1) == np.argmax(t, -1)) for r, t in zip(refs, tests)]
        metrics.top1 = float(np.mean(agree))
    return metrics


def compare_outputs(
    reference: Sequence[Mapping[str, np.ndarray]], test: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, OutputMetrics]:
    """Metrics per output name over all samples (lists of per-sample output dicts)."""
    names = list(reference[0]) if reference else []
    return {name: _compare_one(name, [r[name] for r in reference], [t[name] for t in test]) for name in names}


def detect_mask_input(inputs: Mapping[str, tuple[np.dtype, int | None]]) -> str | None:
    """The model input that marks real tokens (``attention_mask``-like: integer or bool, rank 2), if any.

    ``inputs`` maps input name -> (dtype, rank)."""
    for wanted in MASK_NAMES:
        for name, (dtype, rank) in inputs.items():
            if name.lower().endswith(wanted) and np.dtype(dtype).kind in "iub" and rank in (2, None):
                return name
    return None


def apply_mask(outputs: Sequence[Mapping[str, np.ndarray]], samples: Sequence[Mapping[str, np.ndarray]], mask: str) -> list[dict[str, np.ndarray]]:
    """Outputs restricted to the positions the mask input marks as real (padding left out).

    An output whose leading axes are the mask's shape ([batch, seq, ...]) keeps only the rows where
    the mask is non-zero; other outputs (a pooled [batch, hidden]) are kept whole."""
    restricted = []
    for out, sample in zip(outputs, samples):
        keep = np.asarray(sample[mask]).astype(bool)
        restricted.append({
            name: value[keep] if value.ndim >= keep.ndim and value.shape[: keep.ndim] == keep.shape else value
            for name, value in out.items()
        })
    return restricted
