"""One recurrent step of linear attention: ``pkg.graphopt::LinearAttentionStep``, declared once.

    LinearAttentionStep <eps: float = 1e-6> (Qf, Kf, V, S, z, decay) => (Y, S_next, z_next)

The decode form of ``LinearizedAttention`` (graphopt/ops/linear_attention.py): instead of the whole
KV cache it reads the state the earlier tokens left, S = Σ_j λ^(t-j) Kf_jᵀ·V_j [.., F, Dv] and
z = Σ_j λ^(t-j) Kf_j [.., 1, F] (a row, so that a per-head decay [H, 1, 1] broadcasts against it
as against S), and the new token's feature-mapped query and key Qf, Kf [.., 1, F] and value
V [.., 1, Dv]:

    S_next = λ·S + Kfᵀ·V        z_next = λ·z + Kf        Y = Qf·S_next / (Qf·z_nextᵀ + eps)

so a decode step costs O(F·Dv) whatever the context length, and Y is exactly the causal
``LinearizedAttention`` of the whole sequence at the new position (its state after the prefill is
S = Kfᵀ·V, z = Σ Kf over the prompt: ``passes/linear_attention_state.py`` builds both graphs).
``decay`` (λ) is a scalar or [H, 1, 1], 1 = none, as in ``LinearizedAttention``.

Several rows (Sq = Sk = T > 1) enter as one block: every query of the step sees all T new keys
(the body's meaning; the decode graphs have T = 1). Leading axes broadcast as in Mul/MatMul.
Computation is in the inputs' dtype. The CPU kernel is ``recurrent_step_func`` of
``backends/tvm/kernels/linear_attention_fast.py`` (float32, static shapes, T = 1).
"""

from __future__ import annotations

import numpy as np

from graphopt import ops

__all__ = ["LINEAR_ATTENTION_STEP_OP", "OP_NAME", "linear_attention_step_reference"]

OP_NAME = "LinearAttentionStep"

_BODY = """<domain: "pkg.graphopt", opset_import: ["": 18]>
LinearAttentionStep <eps: float = 1e-6> (Qf, Kf, V, S, z, decay) => (Y, S_next, z_next) {
    eps_f = Constant <value_float: float = @eps> ()
    eps_t = CastLike (eps_f, Qf)
    minus1 = Constant <value_ints: ints = [-1]> ()
    minus2 = Constant <value_ints: ints = [-2]> ()
    minus3 = Constant <value_ints: ints = [-3]> ()
    lam = CastLike (decay, S)
    k_col = Unsqueeze (Kf, minus1)
    v_row = Unsqueeze (V, minus2)
    outer = Mul (k_col, v_row)
    kv = ReduceSum <keepdims: int = 0> (outer, minus3)
    s_kept = Mul (S, lam)
    S_next = Add (s_kept, kv)
    k_sum = ReduceSum <keepdims: int = 1> (Kf, minus2)
    z_kept = Mul (z, lam)
    z_next = Add (z_kept, k_sum)
    num = MatMul (Qf, S_next)
    qz = Mul (Qf, z_next)
    den = ReduceSum <keepdims: int = 1> (qz, minus1)
    den_eps = Add (den, eps_t)
    Y = Div (num, den_eps)
}"""


def linear_attention_step_reference(qf, kf, v, s, z, decay, *, eps=1e-6):
    """The spec, in float64 numpy; results in Qf's (Y) and S's (S_next, z_next) dtype."""
    q, k, vv, ss, zz, lam = (np.asarray(a, np.float64) for a in (qf, kf, v, s, z, decay))
    s_next = lam * ss + np.matmul(np.swapaxes(k, -1, -2), vv)
    z_next = lam * zz + k.sum(axis=-2, keepdims=True)
    y = np.matmul(q, s_next) / ((q * z_next).sum(axis=-1, keepdims=True) + eps)
    state_dtype = np.asarray(s).dtype
    return y.astype(np.asarray(qf).dtype), s_next.astype(state_dtype), z_next.astype(state_dtype)


def _examples():
    rng = np.random.default_rng(20261206)

    def pos(*shape):  # feature-mapped inputs and the states they sum to are non-negative
        return np.abs(rng.standard_normal(shape)).astype(np.float32)

    def randn(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    one = np.float32(1)
    heads_decay = np.array([0.9, 0.5, 1.0], np.float32).reshape(3, 1, 1)
    return [
        ((pos(2, 3, 1, 8), pos(2, 3, 1, 8), randn(2, 3, 1, 4), randn(2, 3, 8, 4), pos(2, 3, 1, 8), one), {}),
        ((pos(2, 3, 1, 8), pos(2, 3, 1, 8), randn(2, 3, 1, 5), randn(2, 3, 8, 5), pos(2, 3, 1, 8), heads_decay),
         {"eps": 1e-3}),  # per-head decay
        ((pos(1, 2, 1, 4), pos(1, 2, 1, 4), randn(1, 2, 1, 4), np.zeros((1, 2, 4, 4), np.float32),
          np.zeros((1, 2, 1, 4), np.float32), one), {}),  # the first token: an empty state
        ((pos(2, 3, 8), pos(2, 3, 8), randn(2, 3, 4), randn(2, 8, 4), pos(2, 1, 8), one), {}),  # a block of 3 rows
    ]


LINEAR_ATTENTION_STEP_OP = ops.declare_op(
    ops.OpDef(
        name=OP_NAME,
        doc=("One recurrent linear-attention step: S' = decay·S + Kfᵀ·V, z' = decay·z + Kf, "
             "Y = Qf·S' / (Qf·z'ᵀ + eps); cost independent of the context length"),
        reference=linear_attention_step_reference,
        body=_BODY,
        examples=_examples,
    )
)
