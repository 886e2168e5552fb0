"""Feature maps φ for ``linear-attention``, built as ordinary ONNX ops on Q and K.

Each map turns the attention's Q [.., Sq, D] and K [.., Sk, D] into non-negative features
Qf [.., Sq, F], Kf [.., Sk, F] whose dot products stand in for exp(scale · q·k):

    elu        φ(x) = Elu(x) + 1                                (Katharopoulos et al. 2020), F = D
    relu       φ(x) = Relu(x)                                    F = D
    cosformer  φ(x_i) = [Relu(x_i)·cos(πp_i/2M), Relu(x_i)·sin(πp_i/2M)]   F = 2D
               (Qin et al. 2022): cos(a)cos(b) + sin(a)sin(b) = cos(a - b), so one linear attention
               over the concatenated features is the paper's two, summed; p_i is the token's
               position, M the key length (or the ``cosformer_length`` option); queries are
               aligned to the end of the keys (a decode step is the last position)
    performer  φ(x) = exp(xW - |x|²/2 - c)                      (FAVOR+, Choromanski et al. 2021), F = m
               W [D, m] seeded orthogonal Gaussian features (an initializer); c a stabilizer that
               is constant per query row (queries) or over all keys (keys), so it cancels in the
               normalization, as does Performer's 1/√m
    liger      φ(x) = Softmax(x) over the head dimension        (Lan et al. 2025, no parameters), F = D
    hedgehog   fitted per head on calibration data (passes/_hedgehog.py, not here)

``scale`` handling: relu and cosformer are positively homogeneous (φ(c·x) = c·φ(x) for c > 0), so
the attention's scale cancels in the normalization and is dropped; performer needs it (the
softmax kernel is exp(scale·q·k)), so √scale multiplies Q and K before the map (the FAVOR+
d^-1/4 pre-scaling); for elu and liger the ``fold_scale`` option decides the same, off by default:
the papers apply them to the raw q, k, and folding measured worse on both reference models
(digits ViT top-1 0.109 vs 0.158 for elu, 0.113 vs 0.231 for liger; MiniLM embedding cosine 0.489
vs 0.528 and 0.495 vs 0.597; docs/linear-attention.md).

A query-independent additive mask m_j (a key-padding mask) becomes the factor exp(m_j) on Kf_j:
``softmax(s + m)`` weighs key j by exp(m_j), and so does linear attention with Kf_j·exp(m_j)
(0 for masked keys); performer adds m_j to its key logits before the stabilizer instead.
"""

from __future__ import annotations

import dataclasses
import math
import zlib

import numpy as np
import onnx_ir as ir

__all__ = ["FEATURE_MAPS", "HOMOGENEOUS", "MapPlan", "performer_weights", "build_features", "weigh_keys"]

FEATURE_MAPS = ("elu", "relu", "cosformer", "performer", "hedgehog", "liger")
HOMOGENEOUS = frozenset({"relu", "cosformer"})  # φ(c·x) = c·φ(x): the score scale cancels


@dataclasses.dataclass(frozen=True)
class MapPlan:
    """What the rewrite needs to build one attention's features (decided in the rule's check)."""

    feature_map: str
    dtype: ir.DataType
    opset: int  # the model's default opset (ReduceMax takes axes as an input from 18)
    scale: float | None  # √scale multiplied into Q and K first; None: not folded
    key_mask: str  # "none", "rank1" (mask [Sk]) or "rows" (mask [.., 1|Sq, Sk], row 0 is the key weights)
    mask_rank: int
    features: int = 0  # performer: number of random features
    weights: np.ndarray | None = None  # performer: W [D, m]
    weights_name: str = ""
    cosformer_length: int = 0


def performer_weights(head_dim: int, features: int, seed: int, site: str) -> np.ndarray:
    """FAVOR+ orthogonal random features: W [head_dim, features], blocks of QR-orthogonalized
    Gaussians with row norms drawn like Gaussian vectors' (chi, head_dim degrees of freedom).
    Seeded by ``seed`` and the attention's name, so every block gets its own and reruns agree."""
    rng = np.random.default_rng([seed, zlib.crc32(site.encode())])
    blocks, left = [], features
    while left > 0:
        q, _ = np.linalg.qr(rng.standard_normal((head_dim, head_dim)))
        blocks.append(q.T[: min(left, head_dim)])
        left -= head_dim
    rows = np.concatenate(blocks, axis=0)
    norms = np.linalg.norm(rng.standard_normal((features, head_dim)), axis=1)
    return (rows * norms[:, None]).T.astype(np.float64)


def default_features(head_dim: int) -> int:
    """Performer's default m = d·ln d (at least d)."""
    return max(head_dim, int(round(head_dim * math.log(head_dim)))) if head_dim > 1 else 1


def _const(op, value, dtype: ir.DataType) -> ir.Value:
    return op.Constant(value=ir.tensor(np.asarray(value, dtype=dtype.numpy())))


def _ints(op, values) -> ir.Value:
    return op.Constant(value=ir.tensor(np.asarray(values, dtype=np.int64)))


def _reduce_max(op, x: ir.Value, axes: list[int], opset: int) -> ir.Value:
    if opset >= 18:
        return op.ReduceMax(x, _ints(op, axes), keepdims=1)
    return op.ReduceMax(x, axes=axes, keepdims=1)


def _key_log_weights(op, mask: ir.Value, plan: MapPlan) -> ir.Value:
    """The mask's row for every key as a column [.., Sk, 1] (row 0: the mask is query-independent)."""
    if plan.key_mask == "rank1":
        return op.Unsqueeze(mask, _ints(op, [-1]))
    row = op.Slice(mask, _ints(op, [0]), _ints(op, [1]), _ints(op, [-2]))
    rank = plan.mask_rank
    return op.Transpose(row, perm=[*range(rank - 2), rank - 1, rank - 2])


def weigh_keys(op, kf: ir.Value, mask: ir.Value, plan: MapPlan) -> ir.Value:
    """``kf · exp(mask_j)``: key j's features weighted by its key-padding mask (-inf: 0), which is
    what the mask does to the softmax; a no-op when ``plan.key_mask`` is "none"."""
    if plan.key_mask == "none":
        return kf
    return op.Mul(kf, op.Exp(op.CastLike(_key_log_weights(op, mask, plan), _const(op, 0.0, plan.dtype))))


def _positions(op, q: ir.Value, k: ir.Value, plan: MapPlan) -> tuple[ir.Value, ir.Value, ir.Value]:
    """(query positions [Sq, 1], key positions [Sk, 1], M) as floats: queries end where the keys end."""
    sq = op.Shape(q, start=-2, end=-1)
    sk = op.Shape(k, start=-2, end=-1)
    zero, one = _ints(op, 0), _ints(op, 1)
    keys = op.Range(zero, op.Squeeze(sk), one)
    queries = op.Add(op.Range(zero, op.Squeeze(sq), one), op.Sub(sk, sq))
    length = (_const(op, float(plan.cosformer_length), plan.dtype) if plan.cosformer_length
              else op.CastLike(op.Squeeze(sk), _const(op, 0.0, plan.dtype)))
    like = _const(op, 0.0, plan.dtype)
    column = _ints(op, [1])
    return (op.Unsqueeze(op.CastLike(queries, like), column), op.Unsqueeze(op.CastLike(keys, like), column), length)


def _elu_plus_one(op, x: ir.Value, dtype: ir.DataType) -> ir.Value:
    """Elu(x) + 1; for float64 as Where(x > 0, x + 1, Exp(min(x, 0))): ONNX Runtime has no float64 Elu."""
    one = _const(op, 1.0, dtype)
    if dtype != ir.DataType.DOUBLE:
        return op.Add(op.Elu(x), one)
    zero = _const(op, 0.0, dtype)
    return op.Where(op.Greater(x, zero), op.Add(x, one), op.Exp(op.Min(x, zero)))


def _cosformer(op, x: ir.Value, position: ir.Value, length: ir.Value, plan: MapPlan) -> ir.Value:
    angle = op.Div(op.Mul(position, _const(op, math.pi / 2, plan.dtype)), length)
    relu = op.Relu(x)
    return op.Concat(op.Mul(relu, op.Cos(angle)), op.Mul(relu, op.Sin(angle)), axis=-1)


def _performer(op, x: ir.Value, weights: ir.Value, plan: MapPlan, *, keys: bool, log_weight: ir.Value | None):
    projected = op.MatMul(x, weights)
    half_norm = op.Mul(op.ReduceSum(op.Mul(x, x), _ints(op, [-1]), keepdims=1), _const(op, 0.5, plan.dtype))
    logits = op.Sub(projected, half_norm)
    if log_weight is not None:
        logits = op.Add(logits, log_weight)
    stabilizer = _reduce_max(op, logits, [-2, -1] if keys else [-1], plan.opset)
    if keys:  # all keys masked: a stabilizer of -inf would make 0/0; exp(-inf - 0) = 0 instead
        stabilizer = op.Max(stabilizer, _const(op, -1e30 if plan.dtype != ir.DataType.FLOAT16 else -6e4, plan.dtype))
    return op.Exp(op.Sub(logits, stabilizer))


def build_features(op, q: ir.Value, k: ir.Value, mask: ir.Value | None, plan: MapPlan) -> tuple[ir.Value, ir.Value]:
    """(Qf, Kf) for ``plan.feature_map`` with the key mask folded into Kf."""
    if plan.scale is not None:
        root = _const(op, math.sqrt(plan.scale), plan.dtype)
        q, k = op.Mul(q, root), op.Mul(k, root)
    log_weight = None
    if plan.key_mask != "none":
        log_weight = op.CastLike(_key_log_weights(op, mask, plan), _const(op, 0.0, plan.dtype))
    name = plan.feature_map
    if name == "elu":
        qf, kf = _elu_plus_one(op, q, plan.dtype), _elu_plus_one(op, k, plan.dtype)
    elif name == "relu":
        qf, kf = op.Relu(q), op.Relu(k)
    elif name == "liger":
        qf, kf = op.Softmax(q, axis=-1), op.Softmax(k, axis=-1)
    elif name == "cosformer":
        q_pos, k_pos, length = _positions(op, q, k, plan)
        qf, kf = _cosformer(op, q, q_pos, length, plan), _cosformer(op, k, k_pos, length, plan)
    elif name == "performer":
        weights = op.initializer(ir.tensor(plan.weights.astype(plan.dtype.numpy()), name=plan.weights_name),
                                 name=plan.weights_name)
        qf = _performer(op, q, weights, plan, keys=False, log_weight=None)
        return qf, _performer(op, k, weights, plan, keys=True, log_weight=log_weight)
    else:
        raise ValueError(f"no builder for feature map {name!r}")
    if log_weight is not None:
        kf = op.Mul(kf, op.Exp(log_weight))
    return qf, kf
