"""Fuse decomposed LayerNorm into one ONNX ``LayerNormalization`` node (opset 17).

    m = ReduceMean(x, axes);  d = x - m;  v = ReduceMean(d*d or Pow(d, 2), axes)
                                      or  v = ReduceMean(x*x or Pow(x, 2), axes) - (m*m or Pow(m, 2))
    n = d / Sqrt(v + eps)  or  d * Reciprocal(Sqrt(v + eps))      (no "+ eps": epsilon=0)
    n * scale + bias           ->  LayerNormalization(x, scale, bias, axis, epsilon)
    (scale * d) / Sqrt(v+eps)  ->  LayerNormalization(x, scale, axis, epsilon)   (scale applied first)
    n                          ->  LayerNormalization(x, ones, axis, epsilon)    (no scale)
    LayerNormalization(x, s) + b               ->  LayerNormalization(x, s, b)
    com.microsoft SkipLayerNormalization(x, skip, g, b[, bias])  ->  LayerNormalization(x + skip [+ bias], g, b)
    ONNX's function expansion of LayerNormalization(x, w, b, axis=a) (Flatten(x, a), E[x²] - E[x]² in
    2-D, Reshape back)  ->  LayerNormalization(x, w, b, axis=a - rank); its Mean and InvStdDev
    computations  ->  the node's optional outputs (``_layer_norm_rules``)

``axes`` is the attribute (opset < 18) or the constant input (opset >= 18); the last k axes give
``axis = -k``. A scale or bias with leading ones ([1, 1, D]) is reshaped to the normalized shape.

Not applied (declined, with the reason) when the model's opset is below 17, when the reduced axes
are not the trailing ones or differ between the two ReduceMeans, when epsilon is not a constant
scalar or the exponent is not 2, when the dtype is not float, or when scale/bias do not cover
exactly the normalized axes. The no-scale form also needs a static normalized shape. The expansion
is also declined when its result is not reshaped back to x's shape or a value on the normalizing
path is used elsewhere; a Mean / InvStdDev used before the fused node stays computed.

Why: I-LayerNorm and the backends match one ``LayerNormalization`` node (eight to ten nodes
otherwise), and ONNX Runtime / TVM run it as one kernel with a float32 stash.

Why not onnxscript's ``rules/fusion/_layer_norm.py``: it matches one spelling (ReduceMean over
the constant axes input ``[-1]``, so no opset < 18 ``axes`` attribute and no multi-axis norms;
``d / Sqrt(v + eps)`` only, no ``Reciprocal``, no E[x²] - E[x]² variance, no scale-first form,
no bias-only absorption, no SkipLayerNormalization, no function expansion) and declines nothing
with a reason; every exporter in the zoo writes at least one spelling it misses.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt.pass_base import RulePass
from graphopt.passes._canonical_utils import (
    check_affine,
    check_float,
    check_opset,
    either,
    get_scalar,
    normalized_dims,
    reduced_axes,
    reshaped,
    trailing_axis,
)
from graphopt.passes._layer_norm_rules import Expansion, Statistic, check_exponents, stash_type, variance
from graphopt.registry import register_pass

__all__ = ["LayerNormPass"]


class _LayerNormDecomposed(pattern.RewriteRuleClassBase):
    """ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div arithmetic (either variance) -> LayerNormalization.

    ``scale``: "after" (n * scale), "before" ((scale * d) / std) or "none"; ``swap`` flips the
    root Mul's operands; ``recip`` picks d * Reciprocal(std) over d / std for the no-scale root.
    """

    def __init__(self, name: str, scale: str, swap: bool = False, recip: bool = False) -> None:
        super().__init__(name)
        self.scale, self.swap, self.recip = scale, swap, recip

    def pattern(self, op, x, two, two_mean, eps, scale):
        mean = op.ReduceMean(x, _allow_other_inputs=True, _outputs=["mean"])
        dev = op.Sub(x, mean)
        var = variance(op, x, mean, dev, two, two_mean)
        std = op.Sqrt(pattern.OrValue([op.Add(var, eps), op.Add(eps, var), var]))  # eps may be absent
        if self.scale == "before":
            return op.Div(either(op.Mul, scale, dev), std)
        if self.scale == "none":
            if not self.recip:
                return op.Div(dev, std)
            return op.Mul(op.Reciprocal(std), dev) if self.swap else op.Mul(dev, op.Reciprocal(std))
        inv = op.Reciprocal(std)
        normalized = pattern.OrValue([op.Div(dev, std), op.Mul(dev, inv), op.Mul(inv, dev)])
        return op.Mul(scale, normalized) if self.swap else op.Mul(normalized, scale)

    def check(self, context, x, two, two_mean, eps, scale, mean, second, form, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        rank = len(x.shape) if x.shape is not None else None
        axes = []
        for reduce in (mean, second):
            reduce_axes, reason = reduced_axes(reduce.producer())
            axis, reason = trailing_axis(reduce_axes, rank) if reason is None else (None, reason)
            if reason:
                return result.fail(reason, reduce.producer())
            axes.append(axis)
        if axes[0] != axes[1]:
            second_name = "variance" if form == "centered" else "mean of x²"
            return result.fail(f"the mean and the {second_name} reduce different axes ({axes[0]} vs {axes[1]})")
        axis = axes[0]
        if not check_exponents(result, two, two_mean, form, rank):
            return result
        epsilon = 0.0 if eps is None else get_scalar(result, eps, "epsilon", rank)
        if epsilon is None:
            return result
        reshape = None
        if self.scale == "none":
            dims = normalized_dims(x, axis)
            if dims is None or x.dtype is None:
                return result.fail(
                    "no scale, and the normalized shape or dtype is not static: cannot build a ones scale", x
                )
            scale = ir.tensor(np.ones(dims, dtype=x.dtype.numpy()))
        else:
            ok, reshape = check_affine(result, "scale", scale, x, axis)
            if not ok:
                return result
        if check_float(result, x, "LayerNormalization") and check_opset(context, result, "LayerNormalization", 17):
            self._plan = dict(axis=axis, epsilon=epsilon, scale=scale, reshape=reshape, stash=stash_type(x.dtype))
        return result

    def rewrite(self, op, x, **_):
        plan = self._plan
        if isinstance(plan["scale"], ir.Value):
            scale = reshaped(op, plan["scale"], plan["reshape"])
        else:
            scale = op.Constant(value=plan["scale"])
        return op.LayerNormalization(x, scale, axis=plan["axis"], epsilon=plan["epsilon"], stash_type=plan["stash"])


class _LayerNormBias(pattern.RewriteRuleClassBase):
    """LayerNormalization(x, scale) + bias -> LayerNormalization(x, scale, bias)."""

    def __init__(self, name: str, swap: bool) -> None:
        super().__init__(name)
        self.swap = swap

    def pattern(self, op, x, scale, bias):
        normalized = op.LayerNormalization(x, scale, _outputs=["normalized"])
        return op.Add(bias, normalized) if self.swap else op.Add(normalized, bias)

    def check(self, context, x, bias, normalized, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        axis = normalized.producer().attributes.get_int("axis", -1)
        if axis >= 0:
            if x.shape is None:
                return result.fail("LayerNormalization axis is positive and the input rank is unknown", x)
            axis -= len(x.shape)
        self._reshape = check_affine(result, "bias", bias, x, axis)[1]  # fails result when not ok
        return result

    def rewrite(self, op, x, scale, bias, normalized, **_):
        attributes = normalized.producer().attributes
        return op.LayerNormalization(x, scale, reshaped(op, bias, self._reshape), **attributes)


class _SkipLayerNorm(pattern.RewriteRuleClassBase):
    """com.microsoft SkipLayerNormalization (only its first output used) -> Add + LayerNormalization."""

    def pattern(self, op, x, skip, gamma):
        return op.SkipLayerNormalization(
            x, skip, gamma, _domain="com.microsoft", _allow_other_inputs=True, _outputs=["y"]
        )

    def check(self, context, x, y, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if check_opset(context, result, "LayerNormalization", 17):
            check_float(result, x, "LayerNormalization")
        return result

    def rewrite(self, op, x, skip, gamma, y, **_):
        node = y.producer()
        beta, bias = (list(node.inputs[3:]) + [None, None])[:2]
        total = op.Add(x, skip)
        if bias is not None:
            total = op.Add(total, bias)
        epsilon = node.attributes.get_float("epsilon", 1e-12)
        inputs = [total, gamma] + ([beta] if beta is not None else [])
        return op.LayerNormalization(*inputs, axis=-1, epsilon=epsilon, stash_type=int(ir.DataType.FLOAT))


@register_pass("layer-norm", category="canonicalize")
class LayerNormPass(RulePass):
    """Fuse decomposed LayerNorm (either variance, ONNX's own expansion; scale, bias) into LayerNormalization."""

    def rules(self):
        # The expansion first (its Mean / InvStdDev next, the inverse first: it reads Mean2D).
        # Scaled forms before the no-scale rule, which would otherwise fuse just the normalizing part.
        return [
            Expansion.rule("layer-norm-expansion", "reshape"),
            Expansion.rule("layer-norm-expansion", "add"),
            Statistic.rule("layer-norm-inv-std-output", "inv_std", reshaped=True),
            Statistic.rule("layer-norm-inv-std-output", "inv_std", reshaped=False),
            Statistic.rule("layer-norm-mean-output", "mean", reshaped=True),
            Statistic.rule("layer-norm-mean-output", "mean", reshaped=False),
            _LayerNormDecomposed.rule("layer-norm", "after", swap=False),
            _LayerNormDecomposed.rule("layer-norm", "after", swap=True),
            _LayerNormDecomposed.rule("layer-norm", "before"),
            _LayerNormDecomposed.rule("layer-norm-no-scale", "none"),
            _LayerNormDecomposed.rule("layer-norm-no-scale", "none", swap=False, recip=True),
            _LayerNormDecomposed.rule("layer-norm-no-scale", "none", swap=True, recip=True),
            _LayerNormBias.rule("layer-norm-bias", swap=False),
            _LayerNormBias.rule("layer-norm-bias", swap=True),
            _SkipLayerNorm.rule("skip-layer-norm"),
        ]
