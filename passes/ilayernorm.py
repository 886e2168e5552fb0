"""Rewrite float ``LayerNormalization`` into an integer-only I-LayerNorm island (I-ViT).

    LayerNormalization(x, γ[, β], axis=-1)   ->
    QuantizeLinear(x, s_in, int16 0) -> Cast(int32) -> pkg.graphopt.IntLayerNorm(·, Mult, Bias, shift)
        -> DequantizeLinear(·, s_out)

``s_in`` is symmetric per tensor, ``range / (2^(b-1) - 1)``, with ``range`` the calibrated
max|x| (``calibration="minmax"``) or a percentile of |x| (``CalibrationOptions``). ``input_bits=16`` by default: I-ViT feeds LayerNorm from the
int16 residual stream, and the op's 10-step Newton square root (I-ViT's, started at 2^16) only
converges for row sums of squares >= ~2^15. Measured on all-MiniLM-L6-v2 (13 LayerNorms, 32
calibration sentences, mean-pooled embeddings of 100 other sentences): mean cosine 0.99999 at 16
bits; 0.04 at 8 bits (minmax) and 0.88 (percentile 99.99): the residual stream's outlier channels
leave most int8 values near 0, so rows lose their content and the isqrt its convergence.

The affine part is integer: ``Y = floor(n·Mult / 2^shift) + Bias`` where n is the normalized value
in units of √d/2^30 (see ``graphopt.ops.int_layer_norm``), and one per-tensor output scale
``s_out = max(2·(√d/2^30)·max|γ|, max|β| / 2^29)``, ``Mult = round(γ·(√d/2^30)/s_out · 2^shift)``
(|Mult| <= 2^15, shift chosen for 15 bits), ``Bias = round(β / s_out)``: |Y| < 2^30 + 2^29, int32.
I-ViT instead folds ``β/γ`` into an integer bias and γ into a per-channel output scale; that
divides by γ, and all-MiniLM-L6-v2's last LayerNorm has γ = 5e-33 (β/γ = 57, an int32 overflow
once scaled by 2^30/√d) and negative γ (negative DequantizeLinear scales). The integer multiplier
handles any γ (zeros included) and gives the per-tensor scale the integer-op conventions use.

Not applied (declined, with the reason) when the axis is not the last one, x is not float32 (the
output scale ~1e-8·γ underflows float16), γ or β is not a constant 1-D tensor of x's last
dimension, the Mean / InvStdDev outputs are used, the opset is below 21 for 16-bit input (int16
QuantizeLinear) or 17, or x has no calibration statistics (zero or non-finite range).

Why: removes the float LayerNorm from integer-only pipelines (I-ViT's I-LayerNorm); the island's
Quantize/Dequantize pairs disappear when integer ops are chained.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt import ops
from graphopt.calibrate import CalibrationOptions, Scales, bits_option
from graphopt.pass_base import RulePass
from graphopt.passes._canonical_utils import check_opset, constant, unique_initializer_name
from graphopt.ops.int_layer_norm import INT_LAYER_NORM
from graphopt.registry import register_pass

__all__ = ["ILayerNormPass", "ILayerNormOptions", "INT_LAYER_NORM", "affine_plan"]

_MAX_MULT_BITS = 15
_MAX_SHIFT = 46


@dataclasses.dataclass(frozen=True)
class ILayerNormOptions(CalibrationOptions):
    input_bits: int = bits_option(16, choices=(8, 16))  # the QuantizeLinear type of the LayerNorm input


def affine_plan(gamma: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, float]:
    """(Mult int32, Bias int32, shift, s_out) so that s_out·(floor(n·Mult/2^shift) + Bias) ≈ γ·n·√d/2^30 + β."""
    gamma, beta = gamma.astype(np.float64), beta.astype(np.float64)
    s_n = math.sqrt(gamma.size) / 2.0**30
    s_out = max(2.0 * s_n * float(np.abs(gamma).max()), float(np.abs(beta).max()) / 2.0**29)
    if s_out == 0.0:
        s_out = s_n  # γ = β = 0: the output is 0 whatever the scale
    ratio = gamma * s_n / s_out  # |ratio| <= 1/2
    r_max = float(np.abs(ratio).max())
    shift = 0 if r_max == 0.0 else int(min(max(math.floor(_MAX_MULT_BITS - math.log2(r_max)), 0), _MAX_SHIFT))
    limit = 2**_MAX_MULT_BITS
    mult = np.clip(np.round(ratio * 2.0**shift), -limit, limit).astype(np.int32)
    bias = np.round(beta / s_out).astype(np.int32)
    return mult, bias, shift, s_out


class _ILayerNorm(pattern.RewriteRuleClassBase):
    """LayerNormalization(x, γ[, β]) -> Quantize/Cast/IntLayerNorm/Dequantize island."""

    CENTER = 1  # IntLayerNorm subtracts the row mean (0: RMSNorm, see irmsnorm.py)
    OP_NAME, MIN_OPSET = "LayerNormalization", 17  # the float op matched, and the opset that has it

    def __init__(self, name: str, scales: Scales[float], bits: int, with_bias: bool = False) -> None:
        super().__init__(name)
        self.scales, self.bits, self.with_bias = scales, bits, with_bias
        self._plan: dict | None = None  # check() -> rewrite(), as onnxscript's class-based rules do

    def pattern(self, op, x, gamma, beta):
        if self.with_bias:
            return op.LayerNormalization(x, gamma, beta, _allow_other_attributes=True, _outputs=["y"])
        return op.LayerNormalization(x, gamma, _allow_other_attributes=True, _outputs=["y"])

    def check(self, context, x, gamma, y, beta=None, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        self._plan = None
        node = y.producer()
        if any(out.uses() or out.is_graph_output() for out in node.outputs[1:]):
            return result.fail("the Mean / InvStdDev outputs are used", node)
        if not self._check_row_input(context, result, node, x, self.OP_NAME, self.MIN_OPSET):
            return result
        rank = x.shape.rank() if x.shape is not None else None
        g = constant(gamma, max_size=1 << 24)
        if g is None:
            return result.fail("scale (γ) is not a constant", gamma)
        b = np.zeros_like(g) if beta is None else constant(beta, max_size=1 << 24)
        if b is None:
            return result.fail("bias (β) is not a constant", beta)
        if g.ndim != 1 or b.shape != g.shape:
            shapes = f"scale has shape {list(g.shape)}" if beta is None else f"scale / bias have shapes {list(g.shape)} / {list(b.shape)}"
            return result.fail(f"{shapes}, expected [d]", gamma)
        last = x.shape[-1] if rank else None
        if isinstance(last, int) and last != g.size:
            return result.fail(f"scale has {g.size} elements, x's last dimension is {last}", gamma)
        if not (np.isfinite(g).all() and np.isfinite(b).all()):
            return result.fail("scale is not finite" if beta is None else "scale or bias is not finite", gamma)
        return self._plan_island(result, node, x, g, b)

    def _check_row_input(self, context, result: pattern.MatchResult, node: ir.Node, x: ir.Value, op_name: str,
                         min_opset: int) -> bool:
        """Last-axis normalization of float32 x at a supported opset; False (reason in ``result``) otherwise."""
        axis = node.attributes.get_int("axis", -1)
        rank = x.shape.rank() if x.shape is not None else None
        if axis != -1 and (rank is None or axis != rank - 1):
            result.fail(f"axis {axis} is not the last axis (rank {rank}): one row per reduction only", node)
            return False
        if x.dtype != ir.DataType.FLOAT:
            name = x.dtype.name if x.dtype is not None else "unknown"
            result.fail(f"x is {name}, not float32 (the output scale ~1e-8·γ needs float32)", x)
            return False
        if not check_opset(context, result, op_name, min_opset):
            return False
        return self.bits != 16 or check_opset(context, result, "int16 QuantizeLinear", 21)

    def _plan_island(self, result: pattern.MatchResult, node: ir.Node, x: ir.Value, g: np.ndarray,
                     b: np.ndarray) -> pattern.MatchResult:
        """The calibrated input scale and the integer affine for γ, β (or the reason there is none)."""
        s_in = self.scales.get(x.name)
        if s_in is None:
            return result.fail(self.scales.reason(x.name), x)
        mult, bias, shift, s_out = affine_plan(g, b)
        self._plan = {"s_in": s_in, "mult": mult, "bias": bias, "shift": shift, "s_out": s_out,
                      "base": f"{self.name}_{node.name or x.name}", "graph": node.graph}
        return result

    def rewrite(self, op, x, **_):
        plan, bits = self._plan, self.bits
        graph = plan["graph"]

        def init(suffix: str, array: np.ndarray) -> ir.Value:
            name = unique_initializer_name(graph, f"{plan['base']}_{suffix}")
            return op.initializer(ir.tensor(array, name=name), name=name)

        zero = np.zeros((), np.int16 if bits == 16 else np.int8)
        q = op.QuantizeLinear(x, init("s_in", np.array(plan["s_in"], np.float32)), init("zero", zero))
        xi = op.Cast(q, to=ir.DataType.INT32)
        yi = op.IntLayerNorm(
            xi, init("mult", plan["mult"]), init("bias", plan["bias"]), shift=plan["shift"], center=self.CENTER,
            _domain=ops.DOMAIN, _version=ops.OPSET_VERSION,
        )
        return op.DequantizeLinear(yi, init("s_out", np.array(plan["s_out"], np.float32)))


@register_pass("ilayernorm", options=ILayerNormOptions, category="rewrite")
class ILayerNormPass(RulePass):
    """Float LayerNormalization (last axis) -> integer-only I-ViT IntLayerNorm island, calibrated."""

    needs_calibration = True

    NORM_OP = "LayerNormalization"  # the float op whose input gets calibrated

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self._scales: Scales[float] = Scales()

    def rules(self):
        bits = self.options.input_bits
        return [_ILayerNorm.rule("ilayernorm", self._scales, bits, with_bias=True),
                _ILayerNorm.rule("ilayernorm", self._scales, bits, with_bias=False)]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Calibrate every norm input (one run), then build and run the rules."""
        names = sorted({
            n.inputs[0].name for n in model.graph
            if n.op_type == self.NORM_OP and n.domain == "" and n.inputs and n.inputs[0] is not None and n.inputs[0].name
        })
        self._scales = self.calibrate(model, names).symmetric_scales(names, self.options) if names else Scales()
        return super().call(model)
