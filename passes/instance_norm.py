"""Rewrite ``InstanceNormalization`` as a ``LayerNormalization`` over its spatial axes plus a per-channel affine.

    InstanceNormalization(x[N, C, D1..Dk], scale[C], bias[C], epsilon)
      ->  LayerNormalization(x, ones[D1..Dk], axis=-k, epsilon)
          -> Mul(·, scale[C, 1..1]) -> Add(·, bias[C, 1..1])

InstanceNormalization normalizes each (n, c) slice over the spatial axes D1..Dk: the mean and
variance of the trailing k axes, which is what LayerNormalization with ``axis=-k`` computes (the
same ``(x - mean) / sqrt(var + epsilon)``, in a float32 stash). Its scale and bias are per
channel, not per normalized element, so they become a Mul and an Add broadcast over the spatial
axes (a constant reshaped to [C, 1, .., 1]; a computed one through Unsqueeze). A scale of ones
drops the Mul and a bias of zeros the Add (the zoo's exports of GroupNorm pass both).

With one spatial axis (Wav2Vec2's GroupNorm with groups = channels, exported as
InstanceNormalization on [N, C, T]) the result is a last-axis LayerNormalization, which
``ilayernorm`` makes integer and ``imul`` / ``integer-chain`` follow with the per-channel Mul/Add.
More spatial axes (an image's [N, C, H, W]) give ``axis=-2`` (still exact and one canonical node;
``ilayernorm`` declines it: it takes the last axis only).

Not applied (declined, with the reason) when the model's opset is below 17, x is not float, x's
rank is unknown or below 3, its channel dim is symbolic (the affine's [C, 1..1] constant would narrow
it, and the model's interface with it), or a spatial dim is not static (LayerNormalization needs its scale of
ones at the normalized shape).

Why: the norms of the graph become one canonical op (``LayerNormalization``) that the integer
passes and the backends take; ``ilayernorm`` matches LayerNormalization only.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt.pass_base import RulePass
from graphopt.passes._canonical_utils import check_float, check_opset, constant
from graphopt.passes._layer_norm_rules import stash_type
from graphopt.registry import register_pass

__all__ = ["InstanceNormPass"]


def _affine(op, param: ir.Value, rank: int, identity: float):
    """``param`` [C] broadcast as [C, 1, .., 1] over x of ``rank``; None when it is all ``identity``."""
    array = constant(param, max_size=1 << 24)
    if array is not None:
        if np.all(array == identity):
            return None
        return op.Constant(value=ir.tensor(array.reshape((-1,) + (1,) * (rank - 2))))
    axes = op.Constant(value=ir.tensor(np.arange(1, rank - 1, dtype=np.int64)))
    return op.Unsqueeze(param, axes)


class _InstanceNorm(pattern.RewriteRuleClassBase):
    """InstanceNormalization(x, scale, bias) -> LayerNormalization(x, ones, axis=-k) * scale + bias."""

    def pattern(self, op, x, scale, bias):
        return op.InstanceNormalization(x, scale, bias, _allow_other_attributes=True, _outputs=["y"])

    def check(self, context, x, y, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        self._plan = None
        if not check_float(result, x, "LayerNormalization") or not check_opset(context, result, "LayerNormalization", 17):
            return result
        if x.shape is None or len(x.shape) < 3:
            rank = "unknown" if x.shape is None else len(x.shape)
            return result.fail(f"x's rank is {rank}: no spatial axes to normalize over", x)
        if not isinstance(x.shape[1], int):
            return result.fail(f"x's channel dim {x.shape[1]} is not static: the per-channel Mul/Add would fix it "
                               "(and the model's output shape) to the scale's length", x)
        spatial = list(x.shape)[2:]
        if x.dtype is None or not all(isinstance(d, int) for d in spatial):
            dims = ", ".join(str(d) for d in spatial)
            return result.fail(f"x's spatial dims [{dims}] or its dtype are not static: cannot build a ones scale", x)
        epsilon = y.producer().attributes.get_float("epsilon", 1e-5)
        self._plan = dict(rank=len(x.shape), ones=np.ones(spatial, dtype=x.dtype.numpy()), epsilon=epsilon,
                          stash=stash_type(x.dtype))
        return result

    def rewrite(self, op, x, scale, bias, **_):
        plan = self._plan
        rank = plan["rank"]
        y = op.LayerNormalization(x, op.Constant(value=ir.tensor(plan["ones"])), axis=2 - rank,
                                  epsilon=plan["epsilon"], stash_type=plan["stash"])
        channel_scale = _affine(op, scale, rank, 1.0)
        if channel_scale is not None:
            y = op.Mul(y, channel_scale)
        channel_bias = _affine(op, bias, rank, 0.0)
        return y if channel_bias is None else op.Add(y, channel_bias)


@register_pass("instance-norm", category="canonicalize")
class InstanceNormPass(RulePass):
    """InstanceNormalization -> LayerNormalization over the spatial axes, then a per-channel Mul/Add."""

    def rules(self):
        return [_InstanceNorm.rule("instance-norm")]
