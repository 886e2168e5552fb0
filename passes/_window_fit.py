"""The mixing factor γ of ``linear-attention(window=W)`` (LoLCATs' hybrid), fitted on calibration Q, K.

The hybrid (``graphopt/ops/hybrid_attention.py``) weighs key j of query i by

    ŵ_ij = γ_h·exp(s_ij - m_i)   for |i - j| < W      (the window; m_i its row maximum)
         = φ(q_i)·φ(k_j)         outside it

and normalizes the row. γ is fitted per head to minimize the cross-entropy -Σ_j A_ij log Â_ij to
softmax attention A (the loss ``passes/_hedgehog.py`` distils with). With the window's share of A
a_i = Σ_{|i-j|<W} A_ij and the row sums σ_i (window) and λ_i (linear), the loss is, up to terms free
of γ, mean_i(-a_i·t + log(e^t·σ_i + λ_i)) with t = log γ: convex in t, its derivative increasing, so
bisection finds the optimum exactly (``fit_gamma``; no torch, deterministic). Rows of padded queries
(a key-padding mask at the query's own position) do not count: their output is never read, and a
padded query far past the sentence has no real key in its window, which would pull γ towards 0. ``hedgehog`` instead
fits γ jointly with its maps (``fit_hedgehog(window=W)``, via ``hybrid_weights_torch``).

The fixed maps are written out in numpy here (``numpy_features``) exactly as
``passes/_feature_maps.py`` builds them; performer is not among them: its per-query stabilizer
rescales each row's linear weights against the window's, which no per-head γ can follow.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["FITTED_MAPS", "band", "fit_gamma", "hybrid_weights_torch", "numpy_features"]

FITTED_MAPS = ("elu", "relu", "liger", "cosformer")  # fixed maps γ can be fitted for (hedgehog fits its own)
_T_RANGE = (-40.0, 40.0)  # log γ searched
_BISECTIONS = 60
GAMMA_UNDETERMINED = 0.1  # γ where it cancels (every window holds every key): LoLCATs' initial value
_PADDED = -20.0  # a key-mask value at or below this marks a padded position (weight e^-20)


def band(sq: int, sk: int, window: int) -> np.ndarray:
    """|i - j| < window as a bool [sq, sk] (positions top-left aligned, as the op's)."""
    return np.abs(np.arange(sq)[:, None] - np.arange(sk)[None, :]) < window


def hybrid_weights_torch(torch, logits, linear, log_gamma, window: int):
    """Unnormalized hybrid weights (torch): γ·exp(logits - window max) in the band, ``linear`` outside.

    ``logits`` [.., H, Sq, Sk] are scale·QKᵀ with masks already added (-inf: hidden), ``linear`` the
    masked φ(q)·φ(k), ``log_gamma`` [H, 1, 1]."""
    sq, sk = logits.shape[-2:]
    inside = torch.from_numpy(band(sq, sk, window))
    windowed = logits.masked_fill(~inside, float("-inf"))
    row_max = windowed.amax(-1, keepdim=True)
    row_max = torch.where(torch.isinf(row_max), torch.zeros(()), row_max).detach()
    soft = torch.exp(windowed - row_max) * torch.exp(log_gamma)
    return torch.where(inside, soft, linear)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def numpy_features(feature_map: str, x: np.ndarray, *, positions: np.ndarray | None = None, length: float = 0.0,
                   root_scale: float | None = None) -> np.ndarray:
    """φ(x) [.., S, F] (float64) as ``passes/_feature_maps.build_features`` builds it: ``root_scale`` is
    √scale when the map folds it; cosformer needs the tokens' ``positions`` [S] and M (``length``)."""
    x = np.asarray(x, np.float64) * (root_scale if root_scale is not None else 1.0)
    if feature_map == "elu":
        return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))
    if feature_map == "relu":
        return np.maximum(x, 0.0)
    if feature_map == "liger":
        return _softmax(x)
    if feature_map == "cosformer":
        angle = (np.asarray(positions, np.float64) * (math.pi / 2) / length)[:, None]
        relu = np.maximum(x, 0.0)
        return np.concatenate([relu * np.cos(angle), relu * np.sin(angle)], axis=-1)
    raise ValueError(f"no numpy map for {feature_map!r} (fitted maps: {', '.join(FITTED_MAPS)})")


def _row_terms(q, k, qf, kf, *, scale: float, causal: bool, window: int, key_mask):
    """Per row: the window's share a of softmax attention, the window's and the linear weights' sums, and
    whether the row counts (not a padded query: with Sq = Sk and a key mask, query i is padding when
    key i is masked, weight below e^-20; its row is never read, and its window may hold no real key)."""
    logits = np.matmul(q, np.swapaxes(k, -1, -2)) * scale
    linear = np.matmul(qf, np.swapaxes(kf, -1, -2))
    if key_mask is not None:
        mask = np.asarray(key_mask, np.float64).reshape(logits.shape[0], 1, 1, -1)
        logits = logits + mask
        with np.errstate(over="ignore"):
            linear = linear * np.exp(mask)
    sq, sk = logits.shape[-2:]
    inside = band(sq, sk, window)
    if causal:
        hidden = np.triu(np.ones((sq, sk), bool), 1)
        logits = np.where(hidden, -np.inf, logits)
        linear = np.where(hidden, 0.0, linear)
    row_max = logits.max(-1, keepdims=True)
    target = np.exp(logits - np.where(np.isinf(row_max), 0.0, row_max))
    target /= np.maximum(target.sum(-1, keepdims=True), 1e-300)
    windowed = np.where(inside, logits, -np.inf)
    window_max = windowed.max(-1, keepdims=True)
    soft = np.exp(windowed - np.where(np.isinf(window_max), 0.0, window_max))
    share = np.where(inside, target, 0.0).sum(-1)
    counts = np.ones(share.shape, bool)
    if key_mask is not None and sq == sk:
        counts = np.broadcast_to(np.asarray(key_mask, np.float64).reshape(logits.shape[0], 1, sk) > _PADDED, share.shape)
    return share, soft.sum(-1), np.where(inside, 0.0, linear).sum(-1), counts


def fit_gamma(q, k, *, scale: float, causal: bool = False, key_mask=None, info: dict | None = None, window: int = 64,
              features=None, **_) -> tuple[None, None]:
    """Per-head γ for fixed maps ``features(x, positions, length) -> φ(x)`` on captured Q, K
    [B, H, S, D] (``fit_model_maps``'s ``fit``): exact minimizer of the cross-entropy (see module doc);
    ``info["gamma"]`` receives it, ``info["window_share"]`` the mean share of softmax attention in the
    window. Returns (None, None): no map parameters."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    sq, sk = q.shape[-2], k.shape[-2]
    qf = features(q, np.arange(sq) + (sk - sq), sk)
    kf = features(k, np.arange(sk), sk)
    share, soft, linear, counts = _row_terms(q, k, qf, kf, scale=scale, causal=causal, window=window, key_mask=key_mask)
    gammas = []
    for h in range(q.shape[1]):
        a, s, lin = share[:, h].ravel(), soft[:, h].ravel(), linear[:, h].ravel()
        keep = (s > 0) & counts[:, h].ravel()
        a, s, lin = a[keep], s[keep], lin[keep]

        def slope(t):  # d/dt mean(-a·t + log(e^t·s + lin))
            e = math.exp(t)
            return float(np.mean(e * s / np.maximum(e * s + lin, 1e-300) - a))

        lo, hi = _T_RANGE
        if not (lin > 0).any():  # no row reaches a key outside its window: γ cancels, any value is exact
            t = math.log(GAMMA_UNDETERMINED)
        elif slope(hi) <= 0:
            t = hi
        elif slope(lo) >= 0:
            t = lo
        else:
            for _ in range(_BISECTIONS):
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
            t = 0.5 * (lo + hi)
        gammas.append(math.exp(t))
    if info is not None:
        info.setdefault("steps", 0)
        info.update(gamma=[float(f"{g:.6g}") for g in gammas], window_share=round(float(share[counts].mean()), 4))
    return None, None
