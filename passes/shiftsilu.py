"""Replace float SiLU with an integer-only ShiftGELU island at slope 1 (calibrated).

    pkg.graphopt.SigmoidLinearUnit(x)   (the canonical SiLU from the ``silu`` pass)
      ->  QuantizeLinear(x, s_in, int8 0) -> Cast(int32)
          -> pkg.graphopt.ShiftGelu(x0, n, out_bits) -> DequantizeLinear(y, s_in·2^-(out_bits-1))

``ShiftGelu`` computes ``x·σ(c·x)`` with the slope c folded into ``x0 = floor(-1/(c·s_in))``:
``shiftgelu`` uses c = 1.702 (GELU ≈ x·σ(1.702x)), this pass c = 1, which is SiLU exactly (up to
the op's shift exp and its ``out_bits`` σ). No new op. Options, calibration, the lowering of ``n``
and the declines are ``shiftgelu``'s (x not float32, no usable statistics, int16 input below
opset 21).

Why: LLaMA's SwiGLU gate ``silu(x W_gate)`` is the MLP's only transcendental; with this pass the
``ivit`` preset keeps it on the integers.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt import ops
from graphopt.passes.shiftgelu import ShiftGeluOptions, ShiftGeluPass, _ShiftGeluRule
from graphopt.registry import register_pass

__all__ = ["ShiftSiluPass"]


class _ShiftSiluRule(_ShiftGeluRule):
    """SigmoidLinearUnit(x) -> Q/Cast/ShiftGelu/DQ island with the node's calibrated constants (slope 1)."""

    def pattern(self, op, x):
        return op.SigmoidLinearUnit(x, _domain=ops.DOMAIN)

    def check(self, context, x, **_) -> pattern.MatchResult:
        return self.check_input(context, x)


@register_pass("shiftsilu", options=ShiftGeluOptions, category="rewrite")
class ShiftSiluPass(ShiftGeluPass):
    """Replace SiLU (SigmoidLinearUnit) by an integer-only ShiftGelu island with slope 1 (x·σ(x))."""

    factor = 1.0

    @staticmethod
    def matches(node: ir.Node) -> bool:
        return node.op_type == "SigmoidLinearUnit" and node.domain == ops.DOMAIN

    def rules(self):
        return [_ShiftSiluRule.rule("shiftsilu", self._sites, self.options)]
