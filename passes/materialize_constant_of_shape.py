"""Replace a ``ConstantOfShape`` of a constant shape by the constant it makes.

    ConstantOfShape(shape=[2, 3], value=v)   ->  initializer full((2, 3), v)

Not applied (declined, with the reason) when the shape is not a constant, when the result would
hold more than ``limit`` elements (a large fill stays computed rather than stored), or when the
value is a graph output (an initializer cannot be one; runtimes compute that node themselves).

Why: onnxscript's folding leaves a ``ConstantOfShape`` whose shape became constant only after its
own pass, and TVM's frontend cannot broadcast what follows from it (the legacy exporters' masks
and position ids start here). Run by the TVM backend's preparation, with ``fold-static-values``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt.pass_base import RulePass
from graphopt.registry import register_pass

__all__ = ["MaterializeConstantOfShapePass", "MaterializeConstantOfShapeOptions"]


@dataclasses.dataclass(frozen=True)
class MaterializeConstantOfShapeOptions:
    limit: int = 1 << 16  # largest constant (elements) made


class _Materialize(pattern.RewriteRuleClassBase):
    def __init__(self, limit: int) -> None:
        super().__init__("materialize-constant-of-shape")
        self.limit = limit

    def pattern(self, op, shape):
        return op.ConstantOfShape(shape, _outputs=["filled"])

    def check(self, context, shape, filled, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if shape.const_value is None:
            return result.fail("the shape is not a constant")
        size = int(np.prod(shape.const_value.numpy(), dtype=np.int64))
        if size > self.limit:
            return result.fail(f"{size} elements > limit {self.limit}")
        if filled.is_graph_output():
            return result.fail("the value is a graph output")
        return result

    def rewrite(self, op, shape, filled, **_):
        dims = [int(d) for d in shape.const_value.numpy().reshape(-1)]
        fill = filled.producer().attributes.get("value")
        scalar = fill.as_tensor().numpy().reshape(-1)[0] if fill is not None else np.float32(0)
        name = f"{filled.name}_materialized"
        return op.initializer(ir.tensor(np.full(dims, scalar, dtype=scalar.dtype), name=name), name=name)


@register_pass("materialize-constant-of-shape", options=MaterializeConstantOfShapeOptions, category="backend")
class MaterializeConstantOfShapePass(RulePass):
    """Turn ConstantOfShape of a constant shape into the constant (up to `limit` elements)."""

    def rules(self):
        return [_Materialize.rule(self.options.limit)]
