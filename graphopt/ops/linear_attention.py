"""Kernelized (linear) attention: ``pkg.graphopt::LinearizedAttention``, declared once.

    LinearizedAttention <causal: int = 0, eps: float = 1e-6> (Qf, Kf, V, decay) => (Y)

Qf [.., Sq, F] and Kf [.., Sk, F] are the *feature-mapped* queries and keys (φ(Q), φ(K)): the
feature map is ordinary ONNX ops before the node, so any map works (elu+1, ReLU, cosFormer,
Performer, Hedgehog, Liger ...). They should be non-negative, or the normalizer below can vanish
or change sign. V is [.., Sk, Dv]. Leading axes broadcast as in MatMul.

- non-causal:  Y = Qf·(Kfᵀ·V) / (Qf·(Kfᵀ·1) + eps)            (cost O(N·F·Dv), linear in N)
- causal:      Y_i = Qf_i·S_i / (Qf_i·z_i + eps),  S_i = Σ_{j≤i} λ^{i-j} Kf_jᵀV_j,
                                                   z_i = Σ_{j≤i} λ^{i-j} Kf_j
  top-left aligned like ``torch.triu`` (key j is visible to query i iff j <= i; Sq == Sk for a
  prefill).

``decay`` (λ) is a float tensor broadcastable to the head axes: a scalar or [H, 1, 1] (one per
head, Lightning-Attention / RetNet style); 1.0 is no decay. It is read by the causal form only
(non-causal attention has no order to decay along). ONNX Runtime cannot run a function whose
optional input is missing, so a model without decay passes a scalar 1.

Named ``LinearizedAttention``, not ``LinearAttention``: ONNX 1.23 declares a standard ``LinearAttention``
(opset 27: packed [B, T, H·D] heads, recurrent state, unnormalized), and graphopt op names never
reuse an ONNX name (TVM's ONNX importer dispatches on op type alone).

The ONNX body is the *portable meaning*, not the fast form: its causal part is the quadratic
masked form ``((Qf·Kfᵀ) ⊙ D)·V / rowsum((Qf·Kfᵀ) ⊙ D)`` with ``D_ij = λ^{i-j}`` for ``j <= i``
(else 0), which any runtime runs; the cost linear in N (chunked prefill, recurrent decode) lives in
the native kernels (``backends/tvm/kernels/linear_attention*.py``). Its non-causal part is the
linear form itself. The body has no ``If``: both parts run on a slice of the queries, the causal
part on the first ``causal·Sq`` rows and the plain part on the rest, so the part not chosen sees
zero rows and costs nothing, and the two are concatenated. (An ``If`` on the attribute whose
branches read the function's inputs breaks ONNX Runtime's constant folding of the ``If`` on some
graphs: "Node input .. is not a graph input, initializer, or output of a previous node", seen on
the zoo's swin-legacy14.) Kᵀ is taken Reshape/Transpose/Reshape through 3-D, as in
DotProductAttention's body, which keeps the body rank-generic. Computation is in the inputs' dtype.
The leading axes of Qf·Kfᵀ ⊙ decay must be Qf's (decay broadcasts to the head axes, not beyond).
"""

from __future__ import annotations

import numpy as np

from graphopt import ops

__all__ = ["CHOICES_KEY", "FEATURE_MAP_KEY", "LINEAR_ATTENTION_OP", "MIN_OPSET", "OP_NAME", "SITE_KEY",
           "linear_attention_reference"]

OP_NAME = "LinearizedAttention"
MIN_OPSET = 15
# node metadata stamped by the passes that make the op (``linear-attention``): the feature map and every
# choice (JSON); and, by every pass that replaces softmax attention (sigmoid-/softplus-attention too, on
# the node computing the block's output), the replaced attention's output by its name in the original
# graph (``graphopt.attention_fidelity`` compares the two there)
FEATURE_MAP_KEY = "pkg.graphopt.linear_attention.feature_map"
CHOICES_KEY = "pkg.graphopt.linear_attention.choices"
SITE_KEY = "pkg.graphopt.attention.site"

_BODY = """<domain: "pkg.graphopt", opset_import: ["": 18]>
LinearizedAttention <causal: int = 0, eps: float = 1e-6> (Qf, Kf, V, decay) => (Y) {
    eps_f = Constant <value_float: float = @eps> ()
    eps_t = CastLike (eps_f, Qf)
    minus1 = Constant <value_ints: ints = [-1]> ()
    minus2 = Constant <value_ints: ints = [-2]> ()
    zero_i = Constant <value: tensor = int64 {0}> ()
    one_i = Constant <value: tensor = int64 {1}> ()
    zero_v = Constant <value_ints: ints = [0]> ()
    k_lead = Shape <end: int = -2> (Kf)
    k_count = ReduceProd <keepdims: int = 1> (k_lead)
    k_len = Shape <start: int = -2, end: int = -1> (Kf)
    k_dim = Shape <start: int = -1> (Kf)
    flat_shape = Concat <axis: int = 0> (k_count, k_len, k_dim)
    k_flat = Reshape (Kf, flat_shape)
    kt_flat = Transpose <perm: ints = [0, 2, 1]> (k_flat)
    kt_shape = Concat <axis: int = 0> (k_lead, k_dim, k_len)
    k_t = Reshape (kt_flat, kt_shape)
    q_len = Shape <start: int = -2, end: int = -1> (Qf)
    causal_i = Constant <value_int: int = @causal> ()
    causal_n = Mul (q_len, causal_i)
    q_causal = Slice (Qf, zero_v, causal_n, minus2)
    q_plain = Slice (Qf, causal_n, q_len, minus2)
    scores = MatMul (q_causal, k_t)
    causal_s = Squeeze (causal_n)
    sk_s = Squeeze (k_len)
    rows = Range (zero_i, causal_s, one_i)
    cols = Range (zero_i, sk_s, one_i)
    rows_c = Unsqueeze (rows, one_i)
    dist = Sub (rows_c, cols)
    visible = GreaterOrEqual (dist, zero_i)
    dist_kept = Max (dist, zero_i)
    dist_f = CastLike (dist_kept, decay)
    powers = Pow (decay, dist_f)
    zero_d = CastLike (zero_i, decay)
    weights_d = Where (visible, powers, zero_d)
    weights = CastLike (weights_d, scores)
    masked = Mul (scores, weights)
    num_c = MatMul (masked, V)
    den_c = ReduceSum <keepdims: int = 1> (masked, minus1)
    den_c_eps = Add (den_c, eps_t)
    y_causal = Div (num_c, den_c_eps)
    kv = MatMul (k_t, V)
    num_p = MatMul (q_plain, kv)
    k_sum = ReduceSum <keepdims: int = 1> (Kf, minus2)
    prod = Mul (q_plain, k_sum)
    den_p = ReduceSum <keepdims: int = 1> (prod, minus1)
    den_p_eps = Add (den_p, eps_t)
    y_plain = Div (num_p, den_p_eps)
    Y = Concat <axis: int = -2> (y_causal, y_plain)
}"""


def linear_attention_reference(qf, kf, v, decay, *, causal=0, eps=1e-6):
    """The spec, in float64 numpy; the result has Qf's dtype."""
    q, k, vv, lam = (np.asarray(a, np.float64) for a in (qf, kf, v, decay))
    if causal:
        sq, sk = q.shape[-2], k.shape[-2]
        dist = np.arange(sq)[:, None] - np.arange(sk)[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            powers = np.power(lam, np.maximum(dist, 0).astype(np.float64))
        weights = np.where(dist >= 0, powers, 0.0)
        masked = np.matmul(q, np.swapaxes(k, -1, -2)) * weights
        num = np.matmul(masked, vv)
        den = masked.sum(axis=-1, keepdims=True)
    else:
        num = np.matmul(q, np.matmul(np.swapaxes(k, -1, -2), vv))
        den = (q * k.sum(axis=-2, keepdims=True)).sum(axis=-1, keepdims=True)
    return (num / (den + eps)).astype(np.asarray(qf).dtype)


def _examples():
    rng = np.random.default_rng(20250621)

    def pos(*shape):  # feature-mapped inputs are non-negative
        return np.abs(rng.standard_normal(shape)).astype(np.float32)

    def randn(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    one = np.float32(1)
    heads_decay = np.array([0.9, 0.5, 1.0], np.float32).reshape(3, 1, 1)
    return [
        ((pos(2, 3, 5, 8), pos(2, 3, 7, 8), randn(2, 3, 7, 4), one), {}),  # non-causal, Sq != Sk
        ((pos(2, 3, 6, 8), pos(2, 3, 6, 8), randn(2, 3, 6, 4), one), {"causal": 1}),  # causal prefill
        ((pos(2, 3, 6, 8), pos(2, 3, 6, 8), randn(2, 3, 6, 5), heads_decay), {"causal": 1, "eps": 1e-3}),  # per-head decay
        ((pos(1, 2, 6, 4), pos(1, 2, 6, 4), randn(1, 2, 6, 4), np.float32(0.0)), {"causal": 1}),  # λ = 0: diagonal only
        ((pos(3, 4, 8), pos(6, 8), randn(6, 5), one), {}),  # K, V shared (rank 2), broadcast
        ((pos(2, 4, 8), pos(2, 4, 8), randn(2, 4, 8), heads_decay[:2]), {}),  # decay ignored when non-causal
    ]


LINEAR_ATTENTION_OP = ops.declare_op(
    ops.OpDef(
        name=OP_NAME,
        doc=("Linear attention on feature-mapped Qf, Kf: Qf·(Kfᵀ·V) / (Qf·Kfᵀ·1 + eps); causal: prefix sums "
             "over keys j <= i weighted by decay^(i-j) (decay: scalar or per head, 1 = none)"),
        reference=linear_attention_reference,
        body=_BODY,
        examples=_examples,
    )
)
