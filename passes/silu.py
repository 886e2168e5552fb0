"""Fuse ``x * Sigmoid(x)`` into one graphopt ``SigmoidLinearUnit`` node.

    Mul(x, Sigmoid(x))  or  Mul(Sigmoid(x), x)   ->  pkg.graphopt.SigmoidLinearUnit(x)

ONNX has ``Swish`` only from opset 24 and graphopt targets opset 23, so the canonical SiLU is a
graphopt op: its ONNX function body is ``Mul(X, Sigmoid(X))``, so any ONNX runtime runs it once
``graphopt.ops.attach_functions`` has added the body. The name is not an ONNX, ONNX Runtime
contrib (``com.microsoft``) or TVM-importer op type: TVM dispatches on op type alone.

Not applied (declined, with the reason) when the Mul's other operand is not the Sigmoid's input
(``x * Sigmoid(y)`` is a gate, e.g. GLU; ``x * Sigmoid(b * x)`` is Swish-b), or when x is not a
float tensor.

Why: SwiGLU MLPs (LLaMA) and EfficientNet-style blocks match one node; CATS/TEAL thresholding
finds the gate activation by op type, and backends run it as one kernel.
"""

from __future__ import annotations

from onnxscript.rewriter import pattern

from graphopt import ops
from graphopt.pass_base import RulePass
from graphopt.passes._canonical_utils import check_float, constant
from graphopt.registry import register_pass

__all__ = ["SiluPass"]


class _SiluFusion(pattern.RewriteRuleClassBase):
    """Mul(x, Sigmoid(s)) (``swap``: Mul(Sigmoid(s), x)) with s == x -> SigmoidLinearUnit(x)."""

    def __init__(self, name: str, swap: bool) -> None:
        super().__init__(name)
        self.swap = swap

    def pattern(self, op, x, s):
        return op.Mul(op.Sigmoid(s), x) if self.swap else op.Mul(x, op.Sigmoid(s))

    def check(self, context, x, s, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if s is not x:
            producer = s.producer()
            scaled = producer is not None and producer.op_type == "Mul" and x in producer.inputs
            other = [v for v in producer.inputs if v is not x] if scaled else []
            if scaled and other and constant(other[0]) is not None:
                return result.fail("x * Sigmoid(b * x) is Swish with a beta, not SiLU", s)
            return result.fail("x * Sigmoid(y) with y != x is a gate, not SiLU", s)
        check_float(result, x, "SigmoidLinearUnit")
        return result

    def rewrite(self, op, x, **_):
        return op.SigmoidLinearUnit(x, _domain=ops.DOMAIN, _version=ops.OPSET_VERSION)


@register_pass("silu", category="canonicalize")
class SiluPass(RulePass):
    """Fuse x * Sigmoid(x) into the graphopt op SigmoidLinearUnit (ONNX Swish needs opset 24)."""

    def rules(self):
        return [_SiluFusion.rule("silu", swap=False), _SiluFusion.rule("silu", swap=True)]
