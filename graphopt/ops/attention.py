"""The canonical attention op: ``pkg.graphopt::DotProductAttention``, declared once.

    Y = guard(softmax(cap(scale · Q·Kᵀ) + mask [-inf above the diagonal if causal])) · V

Q [.., Sq, D], K [.., Sk, D] (not transposed), V [.., Sk, Dv], mask additive and broadcastable
to [.., Sq, Sk] (a scalar 0 when the model had none: ONNX Runtime cannot run a function whose
optional input is missing). Leading axes broadcast as in MatMul, so the number of heads is what
Q's shape says; splitting and merging heads stays outside the op. Attributes:

- ``scale``: multiplies Q·Kᵀ.  ``softcap`` (> 0): scores -> softcap · tanh(scores / softcap).
- ``causal``: -inf where key index > query index (top-left aligned, as ``torch.triu(.., 1)``).
- ``nan_to_zero``: probabilities that are NaN become 0 (the ``Where(IsNaN(p), 0, p)`` guard of
  torch's sdpa export).
- ``zero_masked_rows``: rows whose mask is -inf everywhere get probabilities 0 (the guard of
  the ONNX ``Attention``-23 function body).

The ONNX body needs opset >= 15 (CastLike, Shape start/end). Like ONNX ``Attention``'s own body
it scales Q and K by sqrt(scale) each (the same float16 rounding as the exporters' pre-scaled
forms); Kᵀ is Reshape/Transpose/Reshape through 3-D, which keeps the body rank-generic and runs
as fast as a 4-D Transpose (Einsum is ~1.4x slower in ONNX Runtime); each flag is an ``If`` on
the attribute, so a runtime only evaluates what is switched on.
"""

from __future__ import annotations

import numpy as np

from graphopt import ops

__all__ = ["ATTENTION_OP", "MIN_OPSET"]

MIN_OPSET = 15

_BODY = """<domain: "pkg.graphopt", opset_import: ["": 18]>
DotProductAttention <scale: float = 1.0, softcap: float = 0.0, causal: int = 0, nan_to_zero: int = 0,
                     zero_masked_rows: int = 0> (Q, K, V, mask) => (Y) {
    scale_f = Constant <value_float: float = @scale> ()
    abs_f = Abs (scale_f)
    root_f = Sqrt (abs_f)
    sign_f = Sign (scale_f)
    signed_f = Mul (root_f, sign_f)
    root_q = CastLike (signed_f, Q)
    root_k = CastLike (root_f, K)
    q_scaled = Mul (Q, root_q)
    k_scaled = Mul (K, root_k)
    k_lead = Shape <end: int = -2> (K)
    k_count = ReduceProd <keepdims: int = 1> (k_lead)
    k_len = Shape <start: int = -2, end: int = -1> (K)
    k_dim = Shape <start: int = -1> (K)
    flat_shape = Concat <axis: int = 0> (k_count, k_len, k_dim)
    k_flat = Reshape (k_scaled, flat_shape)
    kt_flat = Transpose <perm: ints = [0, 2, 1]> (k_flat)
    kt_shape = Concat <axis: int = 0> (k_lead, k_dim, k_len)
    k_t = Reshape (kt_flat, kt_shape)
    scaled = MatMul (q_scaled, k_t)
    cap_f = Constant <value_float: float = @softcap> ()
    zero_f = Constant <value_float: float = 0.0> ()
    has_cap = Greater (cap_f, zero_f)
    capped = If (has_cap) <
        then_branch = cap_then () => (cap_out) {
            cap_t = CastLike (cap_f, scaled)
            ratio = Div (scaled, cap_t)
            squashed = Tanh (ratio)
            cap_out = Mul (squashed, cap_t)
        },
        else_branch = cap_else () => (cap_id) { cap_id = Identity (scaled) }
    >
    biased = Add (capped, mask)
    causal_i = Constant <value_int: int = @causal> ()
    causal_b = Cast <to: int = 9> (causal_i)
    logits = If (causal_b) <
        then_branch = causal_then () => (causal_out) {
            minus2 = Constant <value_ints: ints = [-2]> ()
            q_shape = Shape (Q)
            k_shape = Shape (K)
            sq = Gather (q_shape, minus2)
            sk = Gather (k_shape, minus2)
            square = Concat <axis: int = 0> (sq, sk)
            ones = ConstantOfShape <value: tensor = int64[1] {1}> (square)
            one = Constant <value_int: int = 1> ()
            above = Trilu <upper: int = 1> (ones, one)
            above_b = Cast <to: int = 9> (above)
            low_f = Constant <value_float: float = -inf> ()
            low = CastLike (low_f, biased)
            causal_out = Where (above_b, low, biased)
        },
        else_branch = causal_else () => (causal_id) { causal_id = Identity (biased) }
    >
    probs = Softmax <axis: int = -1> (logits)
    isnan_i = Constant <value_int: int = @nan_to_zero> ()
    isnan_b = Cast <to: int = 9> (isnan_i)
    probs_a = If (isnan_b) <
        then_branch = isnan_then () => (isnan_out) {
            bad = IsNaN (probs)
            zero_a = CastLike (zero_f, probs)
            isnan_out = Where (bad, zero_a, probs)
        },
        else_branch = isnan_else () => (isnan_id) { isnan_id = Identity (probs) }
    >
    rows_i = Constant <value_int: int = @zero_masked_rows> ()
    rows_b = Cast <to: int = 9> (rows_i)
    probs_b = If (rows_b) <
        then_branch = rows_then () => (rows_out) {
            logits_shape = Shape (logits)
            full_mask = Expand (mask, logits_shape)
            k1 = Constant <value_ints: ints = [1]> ()
            row_max, row_arg = TopK <axis: int = -1> (full_mask, k1)
            low_r = Constant <value_float: float = -inf> ()
            low_m = CastLike (low_r, mask)
            dead = Equal (row_max, low_m)
            zero_b = CastLike (zero_f, probs_a)
            rows_out = Where (dead, zero_b, probs_a)
        },
        else_branch = rows_else () => (rows_id) { rows_id = Identity (probs_a) }
    >
    Y = MatMul (probs_b, V)
}"""


def _reference(q, k, v, mask, *, scale=1.0, softcap=0.0, causal=0, nan_to_zero=0, zero_masked_rows=0):
    """The spec, in float64 numpy; the result has Q's dtype."""
    q64, k64, v64, m64 = (np.asarray(a, np.float64) for a in (q, k, v, mask))
    with np.errstate(invalid="ignore", over="ignore"):
        scores = np.einsum("...qd,...kd->...qk", q64, k64) * scale
        if softcap > 0:
            scores = softcap * np.tanh(scores / softcap)
        logits = scores + m64
        if causal:
            sq, sk = logits.shape[-2:]
            logits = np.where(np.triu(np.ones((sq, sk), bool), 1), -np.inf, logits)
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs = shifted / shifted.sum(axis=-1, keepdims=True)
        if nan_to_zero:
            probs = np.where(np.isnan(probs), 0.0, probs)
        if zero_masked_rows:
            full = np.broadcast_to(m64, logits.shape)
            probs = np.where(full.max(axis=-1, keepdims=True) == -np.inf, 0.0, probs)
        return np.matmul(probs, v64).astype(np.asarray(q).dtype)


def _examples():
    rng = np.random.default_rng(20250621)

    def randn(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    row_masked = np.where(rng.random((4, 6)) < 0.3, -np.inf, 0.0).astype(np.float32)
    row_masked[1] = -np.inf
    return [
        ((randn(2, 3, 4, 8), randn(2, 3, 6, 8), randn(2, 3, 6, 5), np.float32(0)), {"scale": 0.35}),
        ((randn(6, 4, 8), randn(6, 4, 8), randn(6, 4, 8), randn(6, 4, 4)), {"scale": 0.5, "causal": 1}),
        ((randn(2, 3, 4, 8), randn(2, 1, 6, 8), randn(2, 1, 6, 8), row_masked), {"zero_masked_rows": 1}),
        ((randn(1, 2, 4, 8), randn(1, 2, 6, 8), randn(1, 2, 6, 8), row_masked), {"nan_to_zero": 1, "softcap": 2.0}),
        ((randn(3, 4, 8), randn(6, 8), randn(6, 5), randn(4, 6)), {"scale": -0.25}),  # K shared, rank 2
    ]


ATTENTION_OP = ops.declare_op(
    ops.OpDef(
        name="DotProductAttention",
        doc="softmax(scale·Q·Kᵀ + mask)·V over the last two axes (graphopt's canonical attention)",
        reference=_reference,
        body=_BODY,
        examples=_examples,
    )
)
