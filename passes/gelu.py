"""Fuse every exporter spelling of GELU into one ONNX ``Gelu`` node (opset 20).

    0.5 * x * (1 + Erf(x / 1.41421))                    ->  Gelu(x)
    0.5 * x * (1 + Erf(x * 0.70711))                    ->  Gelu(x)
    0.5 * x * (1 + Tanh(0.79788 * (x + 0.044715 * x^3))) ->  Gelu(x, approximate="tanh")
        (x^3 as Pow(x, 3), x*(x*x) or (x*x)*x)
    com.microsoft Gelu(x)                               ->  Gelu(x)
    com.microsoft FastGelu(x[, b])                      ->  Gelu(x [+ b], approximate="tanh")
    com.microsoft BiasGelu(x, b)                        ->  Gelu(x + b)

The three factors 0.5, x and (1 + ...) are matched in every association ((x*f)*0.5 from the
legacy exporter, x*(0.5*f) from dynamo, (x*0.5)*f from Hugging Face's NewGELU) and operand order.
Constants are compared with a relative tolerance (``rtol``): exporters round them differently.

Not applied (declined, with the reason) when the model's opset is below 20 (run opset-upgrade
first), when a constant is off or not a scalar, or when x is not a float tensor.

Why: technique passes (ShiftGELU, activation thresholding) and backends match one ``Gelu`` node
instead of five spellings, and the fused op is one kernel instead of five to eight.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

from onnxscript.rewriter import pattern

from graphopt.pass_base import RulePass
from graphopt.passes._canonical_utils import check_float, check_opset, check_scalar, either
from graphopt.registry import register_pass

__all__ = ["GeluPass", "GeluOptions"]

_SQRT2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_MS = "com.microsoft"


@dataclasses.dataclass(frozen=True)
class GeluOptions:
    rtol: float = 1e-4  # relative tolerance on the constants (sqrt 2, sqrt(2/pi), 0.044715, ...)


class _GeluArithmetic(pattern.RewriteRuleClassBase):
    """``half * x * (1 + core(x))`` with ``core`` the erf or the tanh term.

    ``outer`` is the association: "xf_h" is (x*f)*half, "x_fh" x*(f*half), "xh_f" (x*half)*f.
    Commuted operands are OrValue alternatives where the other operand is a subpattern (the
    matcher commits to the first alternative that matches locally, so two plain variables could
    bind the wrong way round); the root's order (``swap``) and the var-by-var products
    (``half_first``, ``scale_first``) are separate rule variants instead.
    """

    def __init__(self, name, approximate, outer, swap, half_first, scale_first, rtol) -> None:
        super().__init__(name)
        self.approximate, self.outer, self.swap, self.rtol = approximate, outer, swap, rtol
        self.half_first, self.scale_first = half_first, scale_first

    def pattern(self, op, x, half, one, scale, k, c, three):
        if self.approximate == "none":
            by_mul = op.Mul(scale, x) if self.scale_first else op.Mul(x, scale)
            core = op.Erf(pattern.OrValue([op.Div(x, scale), by_mul], tag_var="by", tag_values=["div", "mul"]))
        else:
            cube = pattern.OrValue([op.Pow(x, three), op.Mul(x, op.Mul(x, x)), op.Mul(op.Mul(x, x), x)])
            core = op.Tanh(either(op.Mul, k, either(op.Add, x, either(op.Mul, c, cube))))
        f = either(op.Add, core, one)
        if self.outer == "xf_h":
            left, right = either(op.Mul, x, f), half
        elif self.outer == "x_fh":
            left, right = x, either(op.Mul, f, half)
        else:
            left, right = (op.Mul(half, x) if self.half_first else op.Mul(x, half)), f
        return op.Mul(right, left) if self.swap else op.Mul(left, right)

    def check(self, context, x, half, one, scale, k, c, three, by=None, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        rank = len(x.shape) if x.shape is not None else None
        tol = self.rtol
        checks = [(half, 0.5, "the 0.5 factor", tol), (one, 1.0, "the 1 in (1 + ...)", tol)]
        if self.approximate == "none" and by == "div":
            checks.append((scale, _SQRT2, "the divisor of x in Erf", tol))
        elif self.approximate == "none":
            checks.append((scale, 1.0 / _SQRT2, "the factor of x in Erf", tol))
        else:
            checks += [(k, _SQRT_2_OVER_PI, "the sqrt(2/pi) factor", tol), (c, 0.044715, "the x^3 coefficient", tol)]
            if three is not None:  # Pow(x, 3): the exponent is exact
                checks.append((three, 3.0, "the exponent of x^3", 0.0))
        # First: is it GELU (the constants)? Then: can it be a Gelu node here (dtype, opset)?
        constants_ok = all(check_scalar(result, value, want, what, rtol, rank) for value, want, what, rtol in checks)
        if constants_ok and check_float(result, x, "Gelu"):
            check_opset(context, result, "Gelu", 20)
        return result

    def rewrite(self, op, x, **_):
        if self.approximate == "tanh":
            return op.Gelu(x, approximate="tanh")
        return op.Gelu(x)


class _ContribGelu(pattern.RewriteRuleClassBase):
    """com.microsoft ``Gelu`` / ``FastGelu`` / ``BiasGelu`` -> ONNX ``Gelu`` (bias added first)."""

    def __init__(self, name: str, contrib_op: str) -> None:
        super().__init__(name)
        self.contrib_op = contrib_op

    def pattern(self, op, x):
        return getattr(op, self.contrib_op)(x, _domain=_MS, _allow_other_inputs=True, _outputs=["y"])

    def check(self, context, x, y, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if check_opset(context, result, "Gelu", 20):
            check_float(result, x, "Gelu")
        return result

    def rewrite(self, op, x, y, **_):
        inputs = y.producer().inputs
        if len(inputs) > 1 and inputs[1] is not None:
            x = op.Add(x, inputs[1])
        if self.contrib_op == "FastGelu":
            return op.Gelu(x, approximate="tanh")
        return op.Gelu(x)


@register_pass("gelu", options=GeluOptions, category="canonicalize")
class GeluPass(RulePass):
    """Fuse erf/tanh GELU arithmetic and com.microsoft Gelu ops into ONNX Gelu (opset 20)."""

    def rules(self):
        rtol = self.options.rtol
        arithmetic = [
            _GeluArithmetic.rule(f"gelu-{form}", approximate, outer, swap, half_first, scale_first, rtol)
            for form, approximate in (("erf", "none"), ("tanh", "tanh"))
            for outer, swap, half_first, scale_first in itertools.product(
                ("xf_h", "x_fh", "xh_f"), (False, True), (False, True), (False, True)
            )
            if (outer == "xh_f" or not half_first) and (approximate == "none" or not scale_first)
        ]
        contrib = [_ContribGelu.rule("gelu-contrib", name) for name in ("Gelu", "FastGelu", "BiasGelu")]
        return [*arithmetic, *contrib]
