"""Fuse decomposed RMSNorm into one ONNX ``RMSNormalization`` node (opset 23).

    h = Cast(x, to=float32) or x             (the LLaMA exporters' float32 round trip)
    r = Sqrt(ReduceMean(h*h or Pow(h, 2), axes) + eps)
    n = h * Reciprocal(r)  or  h * Div(1, r)  or  h / r
    Cast(n, to=x.dtype) * weight   ->  RMSNormalization(x, weight, axis, epsilon, stash_type=float32)
    n * weight                     ->  RMSNormalization(x, weight, axis, epsilon)
    n                              ->  RMSNormalization(x, ones, axis, epsilon)      (no weight)
    SimplifiedLayerNormalization(x, w)  (ORT's op)  ->  RMSNormalization(x, w)

``axes`` is the attribute (opset < 18) or the constant input; the last k axes give ``axis = -k``.
The Cast pair becomes ``stash_type`` (the precision of the reduction); without it the input's own
float32/float64 is kept, and float16/bfloat16 inputs are reduced in float32.

Not applied (declined, with the reason) when the model's opset is below 23 (run opset-upgrade),
when the reduced axes are not the trailing ones, when epsilon is not a constant scalar or an
exponent/numerator is off, when dtypes are not float, or when the weight does not cover exactly
the normalized axes. The no-weight form also needs a static normalized shape.

Why: LLaMA-style decoders have two RMSNorms per layer, eight to eleven nodes each; the technique
passes and backends match one node, and runtimes run it as one kernel.

Why not onnxscript's ``rules/fusion/_rms_normalization.py``: it matches ``Pow(x, 2)`` and
``Reciprocal`` only (the ``x*x``, ``Div(1, r)`` and ``h / r`` spellings are missed), ReduceMean
over the constant ``[-1]`` input only (opset < 18 ``axes`` attributes are missed, and so are
multi-axis norms), always needs a weight and an ``Add(ms, eps)`` (eps first or no eps is missed).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt.pass_base import RulePass
from graphopt.passes._canonical_utils import (
    FLOAT_TYPES,
    check_affine,
    check_opset,
    check_scalar,
    either,
    get_scalar,
    normalized_dims,
    reduced_axes,
    reshaped,
    trailing_axis,
)
from graphopt.registry import register_pass

__all__ = ["RmsNormPass"]

_STASH_TYPES = (ir.DataType.FLOAT, ir.DataType.DOUBLE)


class _RmsNormDecomposed(pattern.RewriteRuleClassBase):
    """Pow/ReduceMean/Add/Sqrt/Reciprocal/Mul arithmetic (optional Casts) -> RMSNormalization.

    ``weight``: "after" (root Mul(n, w); ``swap`` gives Mul(w, n)) or "none" (root is the
    normalizing node: ``root`` "cast", "div" or "mul", the last swappable).
    """

    def __init__(self, name: str, weight: str, swap: bool = False, root: str = "") -> None:
        super().__init__(name)
        self.weight, self.swap, self.root = weight, swap, root

    def pattern(self, op, x, compute, target, two, eps, one, weight):
        h = pattern.OrValue([op.Cast(x, to=compute), x], name="h")
        square = pattern.OrValue([op.Pow(h, two), op.Mul(h, h)])
        mean_square = op.ReduceMean(square, _allow_other_inputs=True, _outputs=["ms"])
        rms = op.Sqrt(pattern.OrValue([op.Add(mean_square, eps), op.Add(eps, mean_square), mean_square]))
        inv = pattern.OrValue([op.Reciprocal(rms), op.Div(one, rms)])
        if self.weight == "none" and self.root == "div":
            return op.Div(h, rms)
        if self.weight == "none" and self.root == "mul":
            return op.Mul(inv, h) if self.swap else op.Mul(h, inv)
        normalized = pattern.OrValue([op.Div(h, rms), either(op.Mul, h, inv)])
        if self.weight == "none":
            return op.Cast(normalized, to=target)
        normalized = pattern.OrValue([op.Cast(normalized, to=target), normalized], name="n")
        return op.Mul(weight, normalized) if self.swap else op.Mul(normalized, weight)

    def check(self, context, x, h, ms, two, eps, one, weight, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if x.dtype is not None and x.dtype not in FLOAT_TYPES:
            return result.fail(f"RMSNormalization does not accept {x.dtype.name} inputs", x)
        rank = len(x.shape) if x.shape is not None else None
        axes, reason = reduced_axes(ms.producer())
        axis, reason = trailing_axis(axes, rank) if reason is None else (None, reason)
        if reason:
            return result.fail(reason, ms.producer())
        if two is not None and not check_scalar(result, two, 2.0, "the exponent in Pow(x, 2)", 0.0, rank):
            return result
        if one is not None and not check_scalar(result, one, 1.0, "the numerator of 1 / rms", 0.0, rank):
            return result
        epsilon = 0.0 if eps is None else get_scalar(result, eps, "epsilon", rank)
        if epsilon is None:
            return result
        out = context.root.outputs[0]
        reshape = None
        if self.weight == "none":
            dims = normalized_dims(x, axis)
            if dims is None or out.dtype not in FLOAT_TYPES:
                return result.fail(
                    "no weight, and the normalized shape or dtype is not static: cannot build a ones weight", x
                )
            weight = ir.tensor(np.ones(dims, dtype=out.dtype.numpy()))
        else:
            if weight.dtype is not None and weight.dtype not in FLOAT_TYPES:
                return result.fail(f"RMSNormalization does not accept a {weight.dtype.name} weight", weight)
            ok, reshape = check_affine(result, "weight", weight, x, axis, same_dtype=False)
            if not ok:
                return result
        stash = h.dtype if h.dtype in _STASH_TYPES else ir.DataType.FLOAT
        if check_opset(context, result, "RMSNormalization", 23):
            self._plan = dict(axis=axis, epsilon=epsilon, weight=weight, reshape=reshape, stash=int(stash))
        return result

    def rewrite(self, op, x, **_):
        plan = self._plan
        weight = plan["weight"]
        weight = reshaped(op, weight, plan["reshape"]) if isinstance(weight, ir.Value) else op.Constant(value=weight)
        return op.RMSNormalization(x, weight, axis=plan["axis"], epsilon=plan["epsilon"], stash_type=plan["stash"])


class _SimplifiedLayerNorm(pattern.RewriteRuleClassBase):
    """ONNX Runtime's SimplifiedLayerNormalization (default domain, not ONNX) -> RMSNormalization."""

    def pattern(self, op, x, weight):
        return op.SimplifiedLayerNormalization(x, weight, _outputs=["y"])

    def check(self, context, x, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        check_opset(context, result, "RMSNormalization", 23)
        return result

    def rewrite(self, op, x, weight, y, **_):
        attributes = y.producer().attributes
        return op.RMSNormalization(
            x,
            weight,
            axis=attributes.get_int("axis", -1),
            epsilon=attributes.get_float("epsilon", 1e-5),
            stash_type=attributes.get_int("stash_type", int(ir.DataType.FLOAT)),
        )


@register_pass("rms-norm", category="canonicalize")
class RmsNormPass(RulePass):
    """Fuse decomposed RMSNorm (with the float32 Cast round trip) into RMSNormalization (opset 23)."""

    def rules(self):
        # Weighted forms first: the no-weight rules would otherwise fuse just the normalizing part.
        return [
            _RmsNormDecomposed.rule("rms-norm", "after", swap=False),
            _RmsNormDecomposed.rule("rms-norm", "after", swap=True),
            _RmsNormDecomposed.rule("rms-norm-no-weight", "none", root="cast"),
            _RmsNormDecomposed.rule("rms-norm-no-weight", "none", root="div"),
            _RmsNormDecomposed.rule("rms-norm-no-weight", "none", root="mul", swap=False),
            _RmsNormDecomposed.rule("rms-norm-no-weight", "none", root="mul", swap=True),
            _SimplifiedLayerNorm.rule("simplified-layer-norm"),
        ]
