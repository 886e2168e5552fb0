"""``linear-attention(window=W > 0)``: LoLCATs' softmax-window hybrid, the window-specific part of the pass.

    DotProductAttention(Q, K, V, mask, scale, causal)
      ==>  Qf = φ(Q), Kf = φ(K) [· exp(mask_j)]                     (as for window 0)
           WindowedLinearAttention(Q', K', Qf, Kf, V, γ, window=W, scale, causal)
                                                                   (pkg.graphopt, graphopt/ops/hybrid_attention.py)

softmax over the keys |i - j| < W (and j <= i when causal), φ(q)·φ(k) outside, mixed by a per-head
γ [H, 1, 1] (a constant). Q' = Q, K' = K without a mask; a key-padding mask m_j enters the window
as one more head dimension, Q' = [scale·Q, 1], K' = [K, m] with the op's scale 1, so the window's
scores are scale·q·k + m_j exactly (and Kf carries exp(m_j) for the linear part as at window 0).

γ is fitted on the calibration samples (the pass calibrates whenever window > 0): jointly with the
maps for ``hedgehog`` (``passes/_hedgehog.fit_hedgehog(window=W)``), alone for the fixed maps
(``passes/_window_fit.fit_gamma``, the exact minimizer of the cross-entropy to softmax attention).

Declined, with the reason: ``performer`` (its per-query stabilizer changes each row's linear
weights relative to the window's: no per-head γ mixes them), Sq and Sk not provably equal (the
op's window is top-left aligned: a decode step's one query would sit at position 0, not at the end
of its cache), a key-padding mask with a non-positive scale, no γ fitted (the fit's reason).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from graphopt import ops
from graphopt.passes._feature_maps import HOMOGENEOUS, MapPlan, _key_log_weights
from graphopt.passes._window_fit import FITTED_MAPS, fit_gamma, numpy_features

__all__ = ["decline", "fit_windows", "hybrid_attention"]


def decline(options, q: ir.Value, k: ir.Value, scale: float, has_key_mask: bool, fitted: dict | None,
            why_unfitted: str | None = None) -> str | None:
    """Why the hybrid cannot replace this attention, or None."""
    if options.feature_map not in FITTED_MAPS + ("hedgehog",):
        return (f"window={options.window} with {options.feature_map}: its per-query stabilizer rescales each row's "
                "linear weights against the window's, so no per-head γ can mix them (use elu, relu, liger, cosformer "
                "or hedgehog)")
    sq = q.shape[-2] if q.shape is not None and len(q.shape) >= 2 else None
    sk = k.shape[-2] if k.shape is not None and len(k.shape) >= 2 else None
    if sq is None or sk is None or sq != sk:
        return (f"the window is top-left aligned (query i beside key i) and Sq {sq} is not provably Sk {sk} "
                "(a decode step over a cache, or cross-attention)")
    if has_key_mask and scale <= 0:
        return f"a key-padding mask enters the window through a column scaled by 1/scale; scale {scale} is not positive"
    if fitted is None or "gamma" not in fitted:
        return f"no mixing factor γ was fitted: {why_unfitted or 'the pass fits it on calibration samples'}"
    return None


def _gamma_fit(options):
    """``fit_model_maps``'s ``fit`` for a fixed map: γ alone, the map as the pass will build it."""
    name, folds = options.feature_map, options.fold_scale and options.feature_map not in HOMOGENEOUS

    def fit(q, k, *, scale, **kwargs):
        def features(x, positions, length):
            root = math.sqrt(scale) if folds and scale > 0 else None
            return numpy_features(name, x, positions=positions, length=options.cosformer_length or length, root_scale=root)
        return fit_gamma(q, k, scale=scale, features=features, **kwargs)

    return fit


def _hedgehog_fit(q, k, *, info, **kwargs):
    """hedgehog's maps and γ distilled jointly, then γ solved exactly for the fitted maps (Adam moves
    log γ slowly from its 0.1; the exact minimizer is free)."""
    from graphopt.passes._hedgehog import fit_hedgehog, hedgehog_features_numpy  # noqa: PLC0415

    w, b = fit_hedgehog(q, k, info=info, **kwargs)
    distilled = info.pop("gamma")
    fit_gamma(q, k, scale=kwargs["scale"], causal=kwargs["causal"], key_mask=kwargs.get("key_mask"), info=info,
              window=kwargs["window"], features=lambda x, positions, length: hedgehog_features_numpy(x, w, b))
    info["gamma_distilled"] = distilled
    return w, b


def fit_windows(model: ir.Model, samples, options, pass_name: str) -> dict:
    """γ (and hedgehog's maps) per attention, keyed as ``passes/_hedgehog.fit_model_maps`` keys them."""
    from graphopt.passes._hedgehog import fit_model_maps  # noqa: PLC0415

    o = options
    if o.feature_map not in FITTED_MAPS + ("hedgehog",):
        return {}  # declined in the rule (``decline``)
    return fit_model_maps(model, samples, steps=o.hedgehog_steps, seconds=o.hedgehog_seconds, seed=o.seed,
                          pass_name=pass_name, window=o.window,
                          fit=_hedgehog_fit if o.feature_map == "hedgehog" else _gamma_fit(o))


def _ints(op, values) -> ir.Value:
    return op.Constant(value=ir.tensor(np.asarray(values, dtype=np.int64)))


def _column(op, x: ir.Value, like: ir.Value) -> ir.Value:
    """``x`` broadcast to [.., S, 1] with ``like``'s leading axes and rows."""
    return op.Expand(x, op.Concat(op.Shape(like, start=0, end=-1), _ints(op, [1]), axis=0))


def hybrid_attention(op, q, k, v, mask, qf, kf, gamma: list[float], *, plan: MapPlan, scale: float, causal: int,
                     window: int, compute: ir.DataType) -> ir.Value:
    """The WindowedLinearAttention node (inputs cast to ``compute``), the key mask folded into Q', K'."""
    if plan.key_mask != "none":
        zero = op.Constant(value=ir.tensor(np.zeros((), plan.dtype.numpy())))
        one = op.Constant(value=ir.tensor(np.ones((), plan.dtype.numpy())))
        column = op.CastLike(_key_log_weights(op, mask, plan), zero)
        q = op.Concat(op.Mul(q, op.Constant(value=ir.tensor(np.asarray(scale, plan.dtype.numpy())))),
                      _column(op, one, q), axis=-1)
        k = op.Concat(k, _column(op, column, k), axis=-1)
        scale = 1.0
    if compute != plan.dtype:
        q, k, qf, kf, v = (op.Cast(x, to=compute) for x in (q, k, qf, kf, v))
    g = op.Constant(value=ir.tensor(np.asarray(gamma, compute.numpy()).reshape(len(gamma), 1, 1)))
    return op.WindowedLinearAttention(q, k, qf, kf, v, g, window=window, scale=float(scale), causal=causal,
                                      _domain=ops.DOMAIN)
