"""Train forms of the graphopt integer ops: the exact eval implementation (``graphopt_ops``, on the
float64 carriers of train mode, which hold integers) in the forward, and in the backward the
gradient of the float function the op approximates (a straight-through estimator through its
rounding, shifts and integer divisions):

- ``DyadicRequant(x, m, k)``: ``clamp(x · m · 2^-k)``; gradients to x and to the multiplier m
  (a learnable requantization scale when m is a parameter); the shift k stays fixed.
- ``Shiftmax``: ``softmax(x · a) · 2^(out_bits-1)`` over the unmasked keys, with
  ``a = 1.4375 · ln 2 / |x0|`` (the op's base-2 exponent of ``x · 1.4375 / |x0|``).
- ``ShiftGelu``: ``x · sigmoid(x · a) · 2^(out_bits-1)``, the same ``a`` (its ``x0`` has the 1.702
  of GELU folded in).
- ``IntLayerNorm``: ``(x - mean) · 2^30 / sqrt(Σ(x - mean)² + 1) · mult · 2^-shift + bias``
  (I-ViT's normalizer ``floor((2^31-1)/isqrt(var)) / 2``); gradients to x, mult and bias.
- ``ShiftMatMul`` with its codes as a latent (``train_parameters.shift_codes``): the latent weights
  rounded to signed powers of two in the forward (``shift_round``: DeepShift-Q's log-domain rounding,
  ``graphopt.ops.shift_matmul.encode``'s rule), identity in the backward; the scale S a float parameter.
- ``ActivationThreshold`` (a float op; its threshold ``t`` is a float parameter): the hard
  ``x where |x| > t`` forward; backward the soft mask ``x · sigmoid((|x| - t)/tau)``, tau = |t|/10
  (Learned Threshold Pruning's sigmoid), so t learns: raising it drops the elements near it.
"""

from __future__ import annotations

import math

import torch

from graphopt.fx import graphopt_ops
from graphopt.fx.straight_through import straight_through

__all__ = ["TRAIN_FORMS"]

_CARRIER = torch.float64
_NO_MASK = -(2**31)


def _exponent_scale(x0) -> float:
    return 1.4375 * math.log(2.0) / -int(x0)


def dyadic_requant(x, multiplier, shift, *, out_bits=32):
    exact = graphopt_ops.dyadic_requant(x, multiplier, shift, out_bits=out_bits).to(_CARRIER)
    limit = float(2 ** (int(out_bits) - 1))

    def surrogate(x, m):
        return torch.clamp(x * m * torch.exp2(-shift.to(_CARRIER)), -limit, limit - 1)

    return straight_through(exact, surrogate, x, multiplier)


def shiftmax(x, *, x0, n=15, out_bits=16, mask_below=_NO_MASK):
    exact = graphopt_ops.shiftmax(x, x0=x0, n=n, out_bits=out_bits, mask_below=mask_below).to(_CARRIER)

    def surrogate(x):
        keep = x >= mask_below
        z = x * _exponent_scale(x0)
        e = torch.exp(z - z.amax(dim=-1, keepdim=True).detach()) * keep
        return e / e.sum(dim=-1, keepdim=True).clamp_min(1e-30) * 2.0 ** (int(out_bits) - 1)

    return straight_through(exact, surrogate, x)


def shift_gelu(x, *, x0, n=23, out_bits=8, row_max=1):
    exact = graphopt_ops.shift_gelu(x, x0=x0, n=n, out_bits=out_bits, row_max=row_max).to(_CARRIER)

    def surrogate(x):
        return x * torch.sigmoid(x * _exponent_scale(x0)) * 2.0 ** (int(out_bits) - 1)

    return straight_through(exact, surrogate, x)


def int_layer_norm(x, mult, bias, *, shift=16, center=1):
    exact = graphopt_ops.int_layer_norm(x, mult, bias, shift=shift, center=center).to(_CARRIER)

    def surrogate(x, mult, bias):
        y = x - x.mean(dim=-1, keepdim=True) if int(center) else x
        normalized = y * 2.0**30 / torch.sqrt((y * y).sum(dim=-1, keepdim=True) + 1.0)
        return normalized * mult * 2.0 ** -int(shift) + bias

    return straight_through(exact, surrogate, x, mult, bias)


def activation_threshold(x, t):
    exact = graphopt_ops.activation_threshold(x, t)

    def surrogate(x, t):
        # LTP-style soft mask (Azarian et al. 2020): sigmoid((|x| - t) / tau), tau = t/10 (t = inf: no gradient)
        tau = torch.clamp(0.1 * t.detach().abs(), 1e-6, 1e6).to(x.dtype)
        return x * torch.sigmoid((torch.abs(x) - t.to(x.dtype)) / tau)

    return straight_through(exact, surrogate, x, t)


def shift_round(w, bits: int, zero_free: int):
    """``w`` rounded to ``±2^-e`` (e in the code range; below half the smallest power 0 unless
    ``zero_free``), straight-through: the forward of ``encode`` + ``decode``, gradient identity."""
    e_top = (1 << (int(bits) - 1)) - 1
    largest = e_top if int(zero_free) else e_top - 1
    magnitude = w.detach().abs()
    e = torch.clamp(torch.round(-torch.log2(torch.where(magnitude > 0, magnitude, torch.ones_like(magnitude)))), 0, largest)
    rounded = torch.where(w.detach() < 0, -1.0, 1.0).to(w.dtype) * torch.exp2(-e).to(w.dtype)
    if not int(zero_free):
        rounded = torch.where(magnitude < 2.0 ** -(largest + 1), torch.zeros((), dtype=w.dtype), rounded)
    return w + (rounded - w).detach()


def shift_matmul_latent(x, w, s, *, bits=5, zero_free=0):
    """``ShiftMatMul`` on latent weights ``w [K, N]``: ``(x @ shift_round(w)) · s``, as eval computes it."""
    d = shift_round(w, bits, zero_free)
    return (torch.matmul(x, d.to(x.dtype)) * s.to(x.dtype)).to(x.dtype)


TRAIN_FORMS = {
    "DyadicRequant": dyadic_requant, "Shiftmax": shiftmax, "ShiftGelu": shift_gelu, "IntLayerNorm": int_layer_norm,
    "ActivationThreshold": activation_threshold,
}
