"""Replace float ``Gelu`` with an integer-only I-ViT ShiftGELU island (calibrated).

    Gelu(x)   (approximate "none" or "tanh", the canonical form from the ``gelu`` pass)
      ->  QuantizeLinear(x, s_in, int8 0) -> Cast(int32)
          -> pkg.graphopt.ShiftGelu(x0, n, out_bits) -> DequantizeLinear(y, s_in·2^-(out_bits-1))

``s_in`` is per Gelu node, symmetric, from calibration: ``range / (2^(b-1) - 1)`` with the
range of ``CalibrationOptions`` (max|x|, or a percentile of |x|), all nodes' statistics in one
calibration run. The pass folds I-ViT's 1.702 into the scale and hands
the op ``x0 = floor(-1/(1.702·s_in))``; ``n`` is the option, lowered where needed so that
``2·(-x0)·2^n < 2^31`` (the op's exp sum then never saturates; a note says so).

Not applied (declined, with the reason) when x is not float32 (the island's scales are float32),
when there are no usable statistics for x (not captured, or a zero / non-finite range), and for a
Gelu that is not the canonical ONNX one (``com.microsoft`` Gelu: run the ``gelu`` pass first).

Why: I-ViT's integer-only inference (part "shiftgelu"): GELU as shifts, one integer division
per row and integer multiplies, no float exp/erf; chained with the other integer passes the
islands between integer ops disappear.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt import ops
from graphopt.calibrate import CalibrationOptions, Scales
from graphopt.pass_base import RulePass
from graphopt.ops.shift_gelu import SHIFT_GELU
from graphopt.registry import register_pass

__all__ = ["SHIFT_GELU", "ShiftGeluOptions", "ShiftGeluPass", "shiftgelu_constants"]

_SIGMOID_FACTOR = 1.702  # GELU(x) ≈ x·σ(1.702x); folded into the exponent's scale
_MS = "com.microsoft"


@dataclasses.dataclass(frozen=True)
class ShiftGeluOptions(CalibrationOptions):
    # calibration, percentile, input_bits (2..16: int8 container up to 8, int16 above): CalibrationOptions
    n: int = dataclasses.field(default=23, metadata={"range": (1, 30)})  # ShiftExp shift (I-ViT: 23); lowered per node where -x0·2^n would overflow the int32 sum
    out_bits: int = dataclasses.field(default=8, metadata={"range": (2, 16)})  # bits of the σ factor (I-ViT: 8, scale 2^-7)
    row_max: bool = True  # m = row max (I-ViT); False: m = max(x, 0) per element (exact for large row maxes)


def shiftgelu_constants(s_in: float, n: int, factor: float = _SIGMOID_FACTOR) -> tuple[int, int]:
    """(x0, n_eff) for input scale ``s_in``: x0 = floor(-1/(factor·s)), n_eff ≤ n keeps 2·(-x0)·2^n < 2^31.

    ``factor`` is the sigmoid's slope folded into the scale: 1.702 for GELU, 1.0 for SiLU (``shiftsilu``)."""
    x0 = math.floor(-1.0 / (factor * s_in))
    n_eff = n
    while n_eff > 0 and 2 * (-x0) * 2**n_eff > 2**31 - 1:
        n_eff -= 1
    return x0, n_eff


@dataclasses.dataclass(frozen=True)
class _Site:
    scale: float  # float32-representable s_in
    x0: int
    n: int


class _ShiftGeluRule(pattern.RewriteRuleClassBase):
    """Gelu(x) -> Q/Cast/ShiftGelu/DQ island with the node's calibrated constants."""

    def __init__(self, name: str, sites: Scales[_Site], options: ShiftGeluOptions) -> None:
        super().__init__(name)
        self.sites, self.options = sites, options

    def pattern(self, op, x):
        return op.Gelu(x)

    def check(self, context, x, **_) -> pattern.MatchResult:
        approximate = context.root.attributes.get_string("approximate", "none")
        if approximate not in ("none", "tanh"):
            return pattern.MatchResult().fail(f"Gelu approximate={approximate!r} is not 'none' or 'tanh'", x)
        return self.check_input(context, x)

    def check_input(self, context, x) -> pattern.MatchResult:
        """The declines shared with ``shiftsilu``: x not float32, no statistics, int16 input below opset 21."""
        result = pattern.MatchResult()
        if x.dtype != ir.DataType.FLOAT:
            dtype = x.dtype.name if x.dtype is not None else "of unknown type"
            return result.fail(f"ShiftGelu islands take float32 input; x is {dtype}", x)
        if self.sites.get(x.name) is None:
            return result.fail(self.sites.reason(x.name), x)
        opset = context.model.opset_imports.get("", 0)
        if opset < 18:  # the ShiftGelu body's ReduceMax takes axes as an input; an older model's opset would check it
            return result.fail(f"the ShiftGelu body needs opset >= 18 (ReduceMax axes input), model has {opset}; run opset-upgrade first", x)
        if self.options.input_bits > 8 and opset < 21:
            return result.fail(f"input_bits={self.options.input_bits} needs an int16 QuantizeLinear (opset >= 21), model has {opset}", x)
        return result

    def rewrite(self, op, x, **_):
        site = self.sites.get(x.name)
        qmax = 2 ** (self.options.input_bits - 1) - 1
        container = np.int8 if self.options.input_bits <= 8 else np.int16
        scale = op.Constant(value=ir.tensor(np.array(site.scale, dtype=np.float32), name=None))
        zero = op.Constant(value=ir.tensor(np.array(0, dtype=container)))
        q = op.Cast(op.QuantizeLinear(x, scale, zero), to=ir.DataType.INT32)
        if qmax < np.iinfo(container).max:
            low = op.Constant(value=ir.tensor(np.array(-qmax, dtype=np.int32)))
            high = op.Constant(value=ir.tensor(np.array(qmax, dtype=np.int32)))
            q = op.Clip(q, low, high)
        y = op.ShiftGelu(
            q, x0=site.x0, n=site.n, out_bits=self.options.out_bits,
            row_max=int(self.options.row_max), _domain=ops.DOMAIN, _version=ops.OPSET_VERSION
        )
        out_scale = np.array(site.scale * 2.0 ** -(self.options.out_bits - 1), dtype=np.float32)
        return op.DequantizeLinear(y, op.Constant(value=ir.tensor(out_scale)))


class _NotCanonical(pattern.RewriteRuleClassBase):
    """com.microsoft Gelu: never rewritten here, declined so the report says to canonicalize first."""

    def pattern(self, op, x):
        return op.Gelu(x, _domain=_MS)

    def check(self, context, x, **_) -> pattern.MatchResult:
        return pattern.MatchResult().fail("Gelu is not in canonical form (com.microsoft Gelu); run the gelu pass first", x)

    def rewrite(self, op, x, **_):  # pragma: no cover - check always fails
        raise AssertionError("unreachable")


@register_pass("shiftgelu", options=ShiftGeluOptions, category="rewrite")
class ShiftGeluPass(RulePass):
    """Replace float Gelu by an integer-only I-ViT ShiftGELU island (QuantizeLinear → ShiftGelu → DequantizeLinear)."""

    needs_calibration = True
    factor = _SIGMOID_FACTOR  # x·σ(factor·x); folded into x0

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self._sites: Scales[_Site] = Scales()

    def rules(self):
        return [
            _ShiftGeluRule.rule("shiftgelu", self._sites, self.options),
            _NotCanonical.rule("shiftgelu-not-canonical"),
        ]

    @staticmethod
    def matches(node: ir.Node) -> bool:
        """The nodes whose input this pass calibrates (the canonical op it rewrites)."""
        return node.op_type == "Gelu" and node.domain in ("", "ai.onnx")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Calibrate every input of a matched node (one run) into its site constants, then run the rules."""
        names = sorted(
            {
                node.inputs[0].name
                for node in model.graph
                if self.matches(node) and node.inputs and node.inputs[0] is not None
                and node.inputs[0].dtype == ir.DataType.FLOAT
            }
        )
        self._sites = self._plan_sites(model, names) if names else Scales()
        return super().call(model)

    def _plan_sites(self, model: ir.Model, names: list[str]) -> Scales[_Site]:
        o = self.options
        scales = self.calibrate(model, names).symmetric_scales(names, o)
        sites, reasons = {}, dict(scales.reasons)
        for name, scale in scales.found.items():
            x0, n_eff = shiftgelu_constants(scale, o.n, self.factor)
            if 2 * (-x0) > 2**31 - 1:  # a range of ~0 (a dead activation): x0 itself would not fit int32
                reasons[name] = f"calibrated range of {name} is too small for ShiftGelu's int32 constants (x0 = {x0})"
                continue
            if n_eff < o.n:
                self.notes.append(f"{name}: n lowered from {o.n} to {n_eff} (x0={x0}) so the exp sum fits int32")
            sites[name] = _Site(scale, x0, n_eff)
        return Scales(sites, reasons)
