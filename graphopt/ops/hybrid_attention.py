"""LoLCATs' hybrid attention: ``pkg.graphopt::WindowedLinearAttention``, declared once.

    WindowedLinearAttention <window: int = 64, scale: float = 1.0, causal: int = 0>
        (Q, K, Qf, Kf, V, gamma) => (Y)

A sliding softmax window plus linear attention outside it, mixed per head (LoLCATs, Zhang et al.
ICLR 2025, their "tk" hybrid layer). Q, K [.., S, D] are the raw queries and keys (the window's
softmax), Qf, Kf [.., S, F] their feature maps (the linear part), V [.., Sk, Dv], gamma the mixing
factor γ, broadcastable to the head axes (a scalar or [H, 1, 1]; LoLCATs: sigmoid of a learned
per-head weight, initialized at 0.1). With s_ij = scale·q_i·k_j:

    window  W_i = { j : |i - j| < window }          (and j <= i if causal)
    linear  L_i = { j : j not in W_i }              (and j <= i if causal)
    m_i = max_{j in W_i} s_ij                        (0 if W_i is empty)
    Y_i = (γ·Σ_{W_i} exp(s_ij - m_i)·v_j + Σ_{L_i} (qf_i·kf_j)·v_j)
        / (γ·Σ_{W_i} exp(s_ij - m_i)     + Σ_{L_i}  qf_i·kf_j)

as LoLCATs computes it: the window's exponentials are shifted by their row maximum and the linear
weights are not (γ and the fitted maps absorb the difference). Positions are top-left aligned (query
i and key i are the same token), like ``DotProductAttention``'s causal mask. With window >= the key
length this is softmax attention (γ cancels); with window 0 it is ``LinearizedAttention``.

The ONNX body is the quadratic masked form (portable); leading axes broadcast as in MatMul.
"""

from __future__ import annotations

import numpy as np

from graphopt import ops

__all__ = ["HYBRID_ATTENTION_OP", "OP_NAME", "hybrid_attention_reference"]

OP_NAME = "WindowedLinearAttention"

_TRANSPOSE = """
    {x}_lead = Shape <end: int = -2> ({x})
    {x}_count = ReduceProd <keepdims: int = 1> ({x}_lead)
    {x}_len = Shape <start: int = -2, end: int = -1> ({x})
    {x}_dim = Shape <start: int = -1> ({x})
    {x}_flat_shape = Concat <axis: int = 0> ({x}_count, {x}_len, {x}_dim)
    {x}_flat = Reshape ({x}, {x}_flat_shape)
    {x}_t_flat = Transpose <perm: ints = [0, 2, 1]> ({x}_flat)
    {x}_t_shape = Concat <axis: int = 0> ({x}_lead, {x}_dim, {x}_len)
    {x}_t = Reshape ({x}_t_flat, {x}_t_shape)"""

_BODY = """<domain: "pkg.graphopt", opset_import: ["": 18]>
WindowedLinearAttention <window: int = 64, scale: float = 1.0, causal: int = 0> (Q, K, Qf, Kf, V, gamma) => (Y) {
    scale_f = Constant <value_float: float = @scale> ()
    scale_t = CastLike (scale_f, Q)""" + _TRANSPOSE.format(x="K") + _TRANSPOSE.format(x="Kf") + """
    raw = MatMul (Q, K_t)
    scores = Mul (raw, scale_t)
    linear = MatMul (Qf, Kf_t)
    zero_i = Constant <value: tensor = int64 {0}> ()
    one_i = Constant <value: tensor = int64 {1}> ()
    q_len = Shape <start: int = -2, end: int = -1> (Q)
    sq = Squeeze (q_len)
    sk = Squeeze (K_len)
    rows = Range (zero_i, sq, one_i)
    cols = Range (zero_i, sk, one_i)
    axis1 = Constant <value_ints: ints = [1]> ()
    rows_c = Unsqueeze (rows, axis1)
    dist = Sub (rows_c, cols)
    far = Abs (dist)
    window_i = Constant <value_int: int = @window> ()
    near = Less (far, window_i)
    causal_i = Constant <value_int: int = @causal> ()
    causal_b = Cast <to: int = 9> (causal_i)
    not_causal = Not (causal_b)
    ahead = GreaterOrEqual (dist, zero_i)
    visible = Or (ahead, not_causal)
    in_window = And (near, visible)
    outside = Not (near)
    in_linear = And (outside, visible)
    minus_inf_f = Constant <value_float: float = -inf> ()
    minus_inf = CastLike (minus_inf_f, scores)
    zero_f = Constant <value_float: float = 0.0> ()
    zero_t = CastLike (zero_f, scores)
    windowed = Where (in_window, scores, minus_inf)
    minus1 = Constant <value_ints: ints = [-1]> ()
    row_max = ReduceMax <keepdims: int = 1> (windowed, minus1)
    empty = IsInf <detect_positive: int = 0> (row_max)
    shift = Where (empty, zero_t, row_max)
    shifted = Sub (scores, shift)
    exps = Exp (shifted)
    soft = Where (in_window, exps, zero_t)
    gamma_t = CastLike (gamma, scores)
    soft_g = Mul (soft, gamma_t)
    lin = Where (in_linear, linear, zero_t)
    weights = Add (soft_g, lin)
    num = MatMul (weights, V)
    den = ReduceSum <keepdims: int = 1> (weights, minus1)
    Y = Div (num, den)
}"""


def hybrid_attention_reference(q, k, qf, kf, v, gamma, *, window=64, scale=1.0, causal=0):
    """The spec, in float64 numpy; the result has Q's dtype."""
    q64, k64, qf64, kf64, v64, g64 = (np.asarray(a, np.float64) for a in (q, k, qf, kf, v, gamma))
    scores = np.matmul(q64, np.swapaxes(k64, -1, -2)) * scale
    linear = np.matmul(qf64, np.swapaxes(kf64, -1, -2))
    sq, sk = scores.shape[-2:]
    dist = np.arange(sq)[:, None] - np.arange(sk)[None, :]
    visible = (dist >= 0) | (not causal)
    in_window = (np.abs(dist) < window) & visible
    in_linear = (np.abs(dist) >= window) & visible
    row_max = np.where(in_window, scores, -np.inf).max(axis=-1, keepdims=True)
    shift = np.where(np.isinf(row_max), 0.0, row_max)
    with np.errstate(over="ignore"):
        soft = np.where(in_window, np.exp(np.where(in_window, scores - shift, 0.0)), 0.0)
    weights = soft * g64 + np.where(in_linear, linear, 0.0)
    out = np.matmul(weights, v64) / weights.sum(axis=-1, keepdims=True)
    return out.astype(np.asarray(q).dtype)


def _examples():
    rng = np.random.default_rng(20250621)

    def randn(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    def pos(*shape):
        return np.abs(rng.standard_normal(shape)).astype(np.float32)

    gamma = np.array([0.1, 0.5, 1.0], np.float32).reshape(3, 1, 1)
    return [
        ((randn(2, 3, 9, 8), randn(2, 3, 9, 8), pos(2, 3, 9, 16), pos(2, 3, 9, 16), randn(2, 3, 9, 4), gamma),
         {"window": 3, "scale": 0.35, "causal": 1}),  # causal, per-head gamma
        ((randn(2, 3, 9, 8), randn(2, 3, 9, 8), pos(2, 3, 9, 16), pos(2, 3, 9, 16), randn(2, 3, 9, 4), np.float32(0.1)),
         {"window": 2, "scale": 0.35}),  # non-causal band |i - j| < 2
        ((randn(1, 2, 5, 4), randn(1, 2, 7, 4), pos(1, 2, 5, 8), pos(1, 2, 7, 8), randn(1, 2, 7, 3), np.float32(0.3)),
         {"window": 64, "scale": 0.5}),  # window covers everything: softmax attention
        ((randn(1, 2, 6, 4), randn(1, 2, 6, 4), pos(1, 2, 6, 8), pos(1, 2, 6, 8), randn(1, 2, 6, 3), np.float32(0.3)),
         {"window": 0, "causal": 1}),  # no window: causal linear attention
        ((randn(3, 6, 8), randn(6, 8), pos(3, 6, 8), pos(6, 8), randn(6, 5), np.float32(0.2)),
         {"window": 2, "scale": 0.25, "causal": 1}),  # K shared (rank 2), broadcast
    ]


HYBRID_ATTENTION_OP = ops.declare_op(
    ops.OpDef(
        name=OP_NAME,
        doc=("LoLCATs hybrid: softmax over a sliding window |i-j| < window (γ-weighted, shifted by the window's row "
             "max) plus linear attention Qf·Kfᵀ outside it, normalized together (causal: keys j <= i)"),
        reference=hybrid_attention_reference,
        body=_BODY,
        examples=_examples,
    )
)
