"""Straight-through estimators: a forward value computed exactly, a backward taken from a float
surrogate of the same step.

``straight_through(exact, surrogate, *inputs)`` returns ``exact`` unchanged (bit for bit: it is
not ``surrogate + (exact - surrogate).detach()``, which rounds) and sends the gradient of the
output to ``surrogate(*inputs)``, computed only when a gradient is wanted. Rounding steps use the
identity as surrogate (``round``, ``floor``, ``trunc``); a clamp to an integer range uses
``torch.clamp`` itself, whose gradient is 1 inside the range and 0 outside (as PACT and LSQ do:
a value the clamp cut off does not learn to move further out).
"""

from __future__ import annotations

import torch

__all__ = ["round_to_range", "straight_through", "wrap_to_range"]


class _Through(torch.autograd.Function):
    @staticmethod
    def forward(ctx, exact, surrogate):
        ctx.surrogate_dtype = surrogate.dtype
        return exact.clone()

    @staticmethod
    def backward(ctx, grad):
        return None, grad.to(ctx.surrogate_dtype)


def _wants_gradient(inputs) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs)


def straight_through(exact: torch.Tensor, surrogate, *inputs) -> torch.Tensor:
    """``exact`` in the forward, the gradient of ``surrogate(*inputs)`` in the backward."""
    if not _wants_gradient(inputs):
        return exact
    estimate = surrogate(*inputs)
    return _Through.apply(exact.detach(), estimate.expand_as(exact))


def round_to_range(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``clamp(round_half_even(x), low, high)`` forward; the clamp's gradient backward (an integer
    latent parameter at its use)."""
    exact = torch.clamp(torch.round(x.detach()), low, high)
    return straight_through(exact, lambda v: torch.clamp(v, low, high), x)


def wrap_to_range(x: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """Integer values of a float carrier wrapped two's-complement style into ``bits`` bits (what an
    integer cast or an int32 accumulator does on overflow), with gradient 1: the wrap is an exact
    multiple of 2^bits subtracted (float64 is exact for integers below 2^53)."""
    span = float(2**bits)
    offset = span / 2 if signed else 0.0
    with torch.no_grad():
        low, high = torch.aminmax(x) if x.numel() else (torch.tensor(0.0), torch.tensor(0.0))
        if -offset <= float(low) and float(high) < span - offset:
            return x  # nothing to wrap (always, in graphopt's graphs): skip four full-size ops
        turns = torch.floor((x + offset) / span) * span
    return x - turns
