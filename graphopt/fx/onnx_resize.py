"""Torch version of ONNX ``Resize``.

- ``nearest``: computed here as ONNX defines it, axis by axis: the source index of every output
  position from the coordinate transform and ``nearest_mode``, then an index_select (exact).
- ``linear`` / ``cubic`` (a = -0.75, 2-D) with ``half_pixel`` or ``align_corners``: ``F.interpolate``
  (``align_corners=False`` / ``True``).
- ``linear`` with the other transforms (``asymmetric``, ``pytorch_half_pixel``,
  ``half_pixel_symmetric``): separable linear interpolation here, coordinates clamped to the input.

Every other combination (antialias, exclude_outside, tf_crop_and_resize, cubic off half_pixel /
align_corners, keep_aspect_ratio_policy, resizing the batch or channel axis) raises
UnsupportedError naming it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from graphopt.errors import UnsupportedError

__all__ = ["CONVERTERS"]

_INTERPOLATE = {("linear", 1): "linear", ("linear", 2): "bilinear", ("linear", 3): "trilinear", ("cubic", 2): "bicubic"}
_TRANSFORMS = {
    "half_pixel": lambda d, scale, size, out: (d + 0.5) / scale - 0.5,
    "pytorch_half_pixel": lambda d, scale, size, out: (d + 0.5) / scale - 0.5 if out > 1 else d * 0.0,
    "asymmetric": lambda d, scale, size, out: d / scale,
    "align_corners": lambda d, scale, size, out: d * (size - 1) / (out - 1) if out > 1 else d * 0.0,
    "half_pixel_symmetric": lambda d, scale, size, out: size / 2 * (1 - out / (size * scale)) + (d + 0.5) / scale - 0.5,
}
_ROUNDING = {
    "round_prefer_floor": lambda x: torch.ceil(x - 0.5), "round_prefer_ceil": lambda x: torch.floor(x + 0.5),
    "floor": torch.floor, "ceil": torch.ceil,
}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _targets(x, scales, sizes, axes):
    """(scale, output size) of every axis; only spatial axes may change."""
    given = sizes if sizes is not None and sizes.numel() else scales
    values = [float(v) for v in given.reshape(-1).tolist()]
    by_axis = dict(zip((a % x.dim() for a in axes), values)) if axes is not None else dict(enumerate(values))
    targets = []
    for axis, size in enumerate(x.shape):
        if given is scales:
            scale = by_axis.get(axis, 1.0)
            targets.append((scale, math.floor(size * scale)))
        else:
            out = int(by_axis.get(axis, size))
            targets.append((out / size, out))
    if any(out != size for (_, out), size in zip(targets[:2], x.shape[:2])):
        raise UnsupportedError("Resize of the batch or channel axis has no torch converter in graphopt.fx")
    return targets


def _nearest(x, targets, transform, nearest_mode):
    for axis, (scale, out) in enumerate(targets):
        size = x.shape[axis]
        if out == size and scale == 1.0:
            continue
        source = _TRANSFORMS[transform](torch.arange(out, dtype=torch.float64), scale, size, out)
        index = _ROUNDING[nearest_mode](source).clamp(0, size - 1).to(torch.int64)
        x = torch.index_select(x, axis, index)
    return x


def _linear(x, targets, transform):
    """Separable linear interpolation, ONNX's coordinates clamped to the input (as ONNX Runtime)."""
    for axis, (scale, out) in enumerate(targets):
        size = x.shape[axis]
        if out == size and scale == 1.0:
            continue
        source = _TRANSFORMS[transform](torch.arange(out, dtype=torch.float64), scale, size, out).clamp(0, size - 1)
        low = source.floor().to(torch.int64)
        high = (low + 1).clamp(max=size - 1)
        shape = [1] * x.dim()
        shape[axis] = out
        weight = (source - low).to(x.dtype).reshape(shape)
        x = torch.index_select(x, axis, low) * (1 - weight) + torch.index_select(x, axis, high) * weight
    return x


def _refuse(mode, transform, nearest_mode, details):
    raise UnsupportedError(f"Resize mode={mode} coordinate_transformation_mode={transform} nearest_mode={nearest_mode} "
                           f"{details} has no torch converter in graphopt.fx")


def resize(x, roi=None, scales=None, sizes=None, antialias=0, axes=None, coordinate_transformation_mode="half_pixel",
           cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0, keep_aspect_ratio_policy="stretch",
           mode="nearest", nearest_mode="round_prefer_floor"):
    mode, transform, nearest_mode = _text(mode), _text(coordinate_transformation_mode), _text(nearest_mode)
    if antialias or exclude_outside or _text(keep_aspect_ratio_policy) != "stretch" or transform not in _TRANSFORMS:
        _refuse(mode, transform, nearest_mode, f"antialias={antialias} exclude_outside={exclude_outside} "
                f"keep_aspect_ratio_policy={_text(keep_aspect_ratio_policy)}")
    targets = _targets(x, scales, sizes, axes)
    if mode == "nearest":
        return _nearest(x, targets, transform, nearest_mode)
    torch_mode = _INTERPOLATE.get((mode, x.dim() - 2))
    if mode == "linear" and transform not in ("half_pixel", "align_corners"):
        return _linear(x, targets, transform)  # F.interpolate has no such coordinate transform
    if torch_mode is None or transform not in ("half_pixel", "align_corners") or (mode == "cubic" and cubic_coeff_a != -0.75):
        _refuse(mode, transform, nearest_mode, f"cubic_coeff_a={cubic_coeff_a} on a rank-{x.dim()} input")
    out_sizes = [out for _, out in targets[2:]]
    if transform == "align_corners" or scales is None or not scales.numel():
        return F.interpolate(x, size=out_sizes, mode=torch_mode, align_corners=transform == "align_corners")
    # half_pixel from scales: the transform uses the scale, not in/out (they differ when in·scale is fractional)
    return F.interpolate(x, scale_factor=[s for s, _ in targets[2:]], mode=torch_mode, align_corners=False,
                         recompute_scale_factor=False)


CONVERTERS = {"Resize": resize}
