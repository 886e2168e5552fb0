"""Softplus attention (Gao & Spratling 2025, LSSA without its length-dependent scale): softmax's exp
replaced by softplus, the ℓ1 normalization kept.

    DotProductAttention(Q, K, V, mask, scale, softcap, causal)
      ==>  P = Softplus(logits);  MatMul(P / max(ΣP, tiny), V)      logits: passes/_softmax_free.py

Masked scores (-inf) get weight softplus(-inf) = 0, as in softmax; a fully masked row gives 0
(softmax: NaN, or 0 with the op's guards). The paper's dynamic length scale ("invariance entropy")
and re-weighting power are not implemented: their exact form is not established here.

Honest note: softplus grows linearly where exp grows exponentially, so the weights of a
softmax-trained model flatten (a peaked softmax row becomes nearly uniform over the positive
scores, and negative scores keep weight): expect a large accuracy loss until the model is
fine-tuned (``graphopt finetune``); the report shows it.

Declined, with the reason: Q is not float; K's rank is unknown (Kᵀ needs it).

Why: softplus needs no row max (it does not overflow), and the paper reports the trained form
keeps its loss flat to 16x the training length.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt.passes._softmax_free import SoftmaxFreeRule
from graphopt.pass_base import RulePass
from graphopt.registry import register_pass

__all__ = ["SoftplusAttentionPass"]


class _SoftplusAttention(SoftmaxFreeRule):
    def weights(self, op, scores: ir.Value, k: ir.Value, dtype: ir.DataType) -> ir.Value:
        if dtype == ir.DataType.DOUBLE:  # ONNX Runtime has no float64 Softplus: relu(x) + log(1 + exp(-|x|))
            one = op.Constant(value=ir.tensor(np.asarray(1, np.float64)))
            positive = op.Add(op.Relu(scores), op.Log(op.Add(op.Exp(op.Neg(op.Abs(scores))), one)))
        else:
            positive = op.Softplus(scores)
        total = op.ReduceSum(positive, op.Constant(value=ir.tensor(np.asarray([-1], np.int64))), keepdims=1)
        tiny = op.Constant(value=ir.tensor(np.asarray(np.finfo(dtype.numpy()).tiny, dtype.numpy())))
        return op.Div(positive, op.Max(total, tiny))


@register_pass("softplus-attention", category="rewrite")
class SoftplusAttentionPass(RulePass):
    """Replace softmax attention by Softplus(scores) normalized by its row sum (needs fine-tuning for softmax-trained weights)."""

    def rules(self):
        return [_SoftplusAttention.rule("softplus-attention")]
