"""The maths of ``int8-linear`` (numpy only): weight quantization, bias at the accumulator's scale,
SmoothQuant factors, and the integer-range limits the rules check. See ``docs/int8-linear.md``."""

from __future__ import annotations

import numpy as np

from graphopt.calibrate import Calibration, CalibrationOptions, Scales

__all__ = ["ACC_LIMIT", "AFFINE_STEP_RATIO", "BIAS_LIMIT", "QMAX", "UQMAX", "affine_uint8", "bias_vector", "quantize_weight",
           "smoothed_scale", "smoothing_factors"]

QMAX = 127  # int8 symmetric: weights in [-127, 127]; activations saturate to [-128, 127]
UQMAX = 255  # uint8: a never-negative operand of an activation MatMul (softmax probabilities)
BIAS_LIMIT = 2**30  # |b_q| <= 2^30 leaves 2^30 of accumulator headroom
ACC_LIMIT = 2**31 - 1
AFFINE_STEP_RATIO = 0.8  # uint8 + zero point only where its step is at most 0.8x int8's (>= 1.9 dB finer)


def smoothing_factors(x_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's per-input-channel t = max|x|^α / max|w|^(1-α), normalized to max(t) = 1.

    Quantizing ``X / t`` per tensor and ``diag(t)·W`` per output column computes the same product;
    ``t`` moves activation outliers (BERT's GELU outputs, LayerNorm outlier channels) into the
    weights, which have per-column scales. t is floored at 2^-20 so the per-axis QuantizeLinear
    scale ``s·t`` stays a normal float32. A zero weight row gets t = 1 (its input channel is not
    needed, so X/t is kept small); an input channel that was always 0 in calibration gets the
    floor (its weight row shrinks out of the column scales; values it takes later saturate near 0).
    """
    x_max, w_max = np.asarray(x_max, np.float64), np.asarray(w_max, np.float64)
    ok = (x_max > 0) & (w_max > 0)
    t = np.ones_like(x_max)  # a zero weight row: X's channel is not needed, keep X/t small
    t[ok] = x_max[ok] ** alpha / w_max[ok] ** (1.0 - alpha)
    if ok.any():
        t[ok] /= t[ok].max()
    t[x_max <= 0] = 0.0  # a channel that is always 0: shrink its weight row instead
    return np.clip(t, 2.0**-20, 1.0)


def smoothed_scale(calibration: Calibration, name: str, w_kn: np.ndarray,
                   options: CalibrationOptions, alpha: float) -> tuple[float | None, np.ndarray | None, str]:
    """(s, t, "") for SmoothQuant on activation ``name`` read by weight ``w_kn`` [K, N]: ``t`` the
    per-input-channel factors, ``s`` the per-tensor scale of ``X / t``; else (None, None, why not)."""
    k = w_kn.shape[0]
    arrays = calibration.arrays.get(name) or []
    if not arrays or any(np.ndim(a) == 0 or np.shape(a)[-1] != k for a in arrays):
        return None, None, f"its calibration values do not have {k} channels on the last axis"
    rows = [np.asarray(a, np.float32).reshape(-1, k) for a in arrays]
    x_max = np.max([np.where(np.isfinite(r), np.abs(r), 0.0).max(0, initial=0.0) for r in rows], axis=0)
    t = smoothing_factors(x_max, np.abs(w_kn).max(1), alpha)
    smoothed = Calibration({name: [r / t.astype(np.float32) for r in rows]})
    scales: Scales[float] = smoothed.symmetric_scales([name], options, qmax=lambda _: QMAX)
    return scales.get(name), t, scales.reason(name)


def affine_uint8(values: np.ndarray, options: CalibrationOptions, symmetric_scale: float) -> tuple[float, int] | None:
    """(scale, zero point) of uint8 ``q = round(x / s) + z`` over the calibrated [lo, hi] of ``values``
    (both ends of ``x``, not of ``|x|``; ``lo <= 0 <= hi``), when its step ``s = (hi - lo) / 255`` is at
    most ``AFFINE_STEP_RATIO`` of ``symmetric_scale``; else None (a range about symmetric around 0 gains
    nothing). SiLU outputs (>= -0.28) and ReLU outputs (>= 0) nearly halve their step: +6 dB.
    ``minmax`` takes min and max; ``percentile`` and ``histogram`` the ``percentile``-th and
    ``(100 - percentile)``-th percentiles of x."""
    values = np.asarray(values, np.float64)
    if not values.size:
        return None
    if options.calibration == "minmax":
        lo, hi = float(values.min()), float(values.max())
    else:
        lo, hi = (float(v) for v in np.percentile(values, [100.0 - options.percentile, options.percentile]))
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = float(np.float32((hi - lo) / UQMAX))
    if not (scale > 0.0 and np.isfinite(scale)) or scale > AFFINE_STEP_RATIO * symmetric_scale:
        return None
    return scale, int(np.clip(np.rint(-lo / scale), 0, UQMAX))


def quantize_weight(
    w: np.ndarray, s_x: float, bias: np.ndarray | None, *, per_channel: bool, axis: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(Wq int8, b_q int32 or None, s_out float32) for weight ``w`` with output channels on ``axis``.

    ``s_out = float32(s_x · s_w)`` is the accumulator's scale ([channels], or a scalar when not
    ``per_channel``); ``b_q = round(b / s_out)``; ``Wq = clip(round(w / s_w), -127, 127)``.
    """
    w64 = np.asarray(w, np.float64)
    moved = np.moveaxis(w64, axis, 0).reshape(w64.shape[axis], -1)
    channels = moved.shape[0]
    if per_channel:
        s_w = np.abs(moved).max(axis=1) / QMAX if moved.size else np.zeros(channels)
    else:
        s_w = np.full(channels, np.abs(moved).max() / QMAX if moved.size else 0.0)
    if bias is not None:  # the bias must fit in ±2^30 at scale s_x·s_w: raise tiny scales
        need = np.abs(np.asarray(bias, np.float64)) / (s_x * BIAS_LIMIT)
        s_w = np.maximum(s_w, need if per_channel else np.full(channels, need.max(initial=0.0)))
    s_w = np.where(s_w > 0.0, s_w, 1.0)  # all-zero channels: any scale is exact
    shape = [1] * w64.ndim
    shape[axis] = channels
    wq = np.clip(np.rint(w64 / s_w.reshape(shape)), -QMAX, QMAX).astype(np.int8)
    s_out = (np.float64(np.float32(s_x)) * s_w).astype(np.float32)
    s_out = np.where(s_out > 0, s_out, np.float32(np.finfo(np.float32).tiny))
    b_q = None
    if bias is not None:
        b_q = np.clip(np.rint(np.asarray(bias, np.float64) / s_out.astype(np.float64)), -BIAS_LIMIT, BIAS_LIMIT)
        b_q = b_q.astype(np.int32)
    if not per_channel:
        s_out = s_out[:1].reshape(())
    return wq, b_q, s_out


def bias_vector(array: np.ndarray, channels: int, out_rank: int | None) -> np.ndarray | None:
    """``array`` as a per-channel [channels] vector when it broadcasts as one over the output; else None."""
    if array.size == 1 and array.ndim <= max(out_rank or 1, 1):
        return np.full(channels, float(array.ravel()[0]), np.float64)
    if array.ndim == 0 or array.shape[-1] != channels or any(d != 1 for d in array.shape[:-1]):
        return None
    if array.ndim > 1 and (out_rank is None or array.ndim > out_rank):
        return None  # [1, ..., N] would broadcast the output up to a higher rank
    return array.reshape(channels).astype(np.float64)
