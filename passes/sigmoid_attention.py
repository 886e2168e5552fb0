"""Sigmoid attention (Ramapuram et al., ICLR 2025): softmax replaced by an elementwise sigmoid with a bias.

    DotProductAttention(Q, K, V, mask, scale, softcap, causal)
      ==>  MatMul(Sigmoid(logits + b), V)          logits: passes/_softmax_free.py; no normalization

``bias=auto`` is b = -log n with n the key length (read from K's shape at run time unless static);
a number is used as given. Masked scores (-inf) get weight sigmoid(-inf) = 0, as in softmax; a
fully masked row gives 0 (softmax: NaN, or 0 with the op's guards).

Honest note: sigmoid attention matches softmax attention only in models *trained* with it (with
QK-norm, per the paper). Swapping it into a softmax-trained model changes every output: rows no
longer sum to 1 (with b = -log n they sum to about 1 only when scores are near 0), so expect a large
accuracy loss until the model is fine-tuned (``graphopt finetune``). The pass exists to make that
conversion (and its fine-tuning) one command, and the report shows the loss.

Declined, with the reason: Q is not float; K's rank is unknown (Kᵀ needs it).

Why: no row max and no row sum: each weight depends on its own score only, so kernels tile freely
(FlashSigmoid: +17% forward on H100 over FlashAttention-2) and long rows need no second pass.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir

from graphopt.passes._softmax_free import SoftmaxFreeRule
from graphopt.pass_base import RulePass
from graphopt.errors import UsageError
from graphopt.registry import register_pass

__all__ = ["SigmoidAttentionOptions", "SigmoidAttentionPass"]


@dataclasses.dataclass(frozen=True)
class SigmoidAttentionOptions:
    bias: str = "auto"  # "auto": b = -log(key length); else a number, e.g. bias=-9

    def __post_init__(self) -> None:
        if self.bias != "auto":
            try:
                value = float(self.bias)
            except ValueError:
                raise UsageError(f"option 'bias' of pass 'sigmoid-attention' must be auto or a number, got {self.bias!r}") from None
            if not math.isfinite(value):
                raise UsageError(f"option 'bias' of pass 'sigmoid-attention' must be finite, got {self.bias!r}")


class _SigmoidAttention(SoftmaxFreeRule):
    def __init__(self, name: str, bias: str) -> None:
        super().__init__(name)
        self.bias = bias

    def weights(self, op, scores: ir.Value, k: ir.Value, dtype: ir.DataType) -> ir.Value:
        n = k.shape[-2] if k.shape is not None else None
        if self.bias != "auto":
            b = op.Constant(value=ir.tensor(np.asarray(float(self.bias), dtype.numpy())))
        elif isinstance(n, int):
            b = op.Constant(value=ir.tensor(np.asarray(-math.log(n), dtype.numpy())))
        else:
            like = op.Constant(value=ir.tensor(np.asarray(0, dtype.numpy())))
            b = op.Neg(op.Log(op.CastLike(op.Shape(k, start=-2, end=-1), like)))
        return op.Sigmoid(op.Add(scores, b))


@register_pass("sigmoid-attention", options=SigmoidAttentionOptions, category="rewrite")
class SigmoidAttentionPass(RulePass):
    """Replace softmax attention by sigmoid(scores - log n)·V (needs fine-tuning for softmax-trained weights)."""

    def rules(self):
        return [_SigmoidAttention.rule("sigmoid-attention", self.options.bias)]
