"""Write the size where an ``Expand`` shape says -1 ("keep this dim").

    Expand(x: [2, 128, 128], shape=[1, -1, 128, 128])  ->  Expand(x, shape=[1, 2, 128, 128])

Not applied (declined, with the reason) when the shape is not a constant, has no negative entry,
or x's shape is not static.

Why: the legacy exporter writes -1 for "keep this dim" where x's shape is symbolic (the ONNX
specification does not define it); TVM's broadcast needs the number, and ONNX Runtime refuses the
-1 once it sees x's static shape ("Incompatible dimensions"). Run by the TVM backend's
preparation once input shapes are static.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt.pass_base import RulePass
from graphopt.registry import register_pass

__all__ = ["ResolveExpandKeepDimsPass"]


def _resolved(x: ir.Value, shape: ir.Value) -> np.ndarray:
    target = shape.const_value.numpy().astype(np.int64).reshape(-1)
    aligned = [1] * (len(target) - len(x.shape)) + list(x.shape)
    return np.where(target < 0, np.asarray(aligned, dtype=np.int64), target)


class _ResolveKeepDims(pattern.RewriteRuleClassBase):
    def pattern(self, op, x, shape):
        return op.Expand(x, shape, _outputs=["expanded"])

    def check(self, context, x, shape, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if shape.const_value is None:
            return result.fail("the target shape is not a constant")
        if not (shape.const_value.numpy() < 0).any():
            return result.fail("no -1 in the target shape")
        if x.shape is None or not all(isinstance(d, int) for d in x.shape):
            return result.fail(f"the input's shape {x.shape} is not static")
        if shape.const_value.size < len(x.shape):
            return result.fail(f"the target shape has fewer dims than the input ({len(x.shape)})")
        return result

    def rewrite(self, op, x, shape, expanded, **_):
        name = f"{expanded.name}_shape"
        return op.Expand(x, op.initializer(ir.tensor(_resolved(x, shape), name=name), name=name))


@register_pass("resolve-expand-keep-dims", category="backend")
class ResolveExpandKeepDimsPass(RulePass):
    """Replace -1 ("keep this dim") in constant Expand shapes by the input's size."""

    def rules(self):
        return [_ResolveKeepDims.rule("resolve-expand-keep-dims")]
