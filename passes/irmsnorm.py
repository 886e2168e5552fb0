"""Rewrite float ``RMSNormalization`` into an integer-only RMSNorm island (I-LayerNorm without the mean).

    RMSNormalization(x, γ, axis=-1)   ->
    QuantizeLinear(x, s_in, int16 0) -> Cast(int32) -> pkg.graphopt.IntLayerNorm<center=0>(·, Mult, 0, shift)
        -> DequantizeLinear(·, s_out)

The same op, calibration and options as ``ilayernorm`` (see there): ``IntLayerNorm`` with
``center=0`` skips the integer mean, so its ``var`` is ``Σx²`` and ``n = x·floor((2^31-1)/isqrt(Σx²))/2``
is ``x / rms(x)`` in units of √d/2^30; the weight becomes the integer multiplier of
``ilayernorm.affine_plan`` (with β = 0), one per-tensor output scale. ``s_in`` is calibrated
(``minmax`` or ``percentile``), 16 bits by default: the isqrt needs row sums of squares >= ~2^15.

``epsilon`` is dropped: it is ``eps / s_in²`` in integer units per element (~70 for LLaMA's 1e-6
and a residual range of 4 at 16 bits), far below any row's mean square except all-zero rows,
which give 0 either way.

Not applied (declined, with the reason) when the axis is not the last one, x is not float32, γ is
not a constant 1-D tensor of x's last dimension, the opset is below 21 for 16-bit input (int16
QuantizeLinear) or 23 (``RMSNormalization``), or x has no calibration statistics.

Why: LLaMA-style decoders normalize with RMSNorm; with ``rms-norm`` canonicalizing the exporters'
Pow/ReduceMean/Sqrt/Reciprocal spelling first, this removes the last float norm from ``ivit``.
"""

from __future__ import annotations

from graphopt.ops.int_layer_norm import INT_LAYER_NORM
from graphopt.passes.ilayernorm import ILayerNormPass, ILayerNormOptions, _ILayerNorm
from graphopt.registry import register_pass

__all__ = ["INT_LAYER_NORM", "IRmsNormPass"]


class _IRmsNorm(_ILayerNorm):
    """RMSNormalization(x, γ) -> Quantize/Cast/IntLayerNorm(center=0)/Dequantize island."""

    CENTER = 0
    OP_NAME, MIN_OPSET = "RMSNormalization", 23

    def pattern(self, op, x, gamma):
        return op.RMSNormalization(x, gamma, _allow_other_attributes=True, _outputs=["y"])


@register_pass("irmsnorm", options=ILayerNormOptions, category="rewrite")
class IRmsNormPass(ILayerNormPass):
    """Float RMSNormalization (last axis) -> integer-only IntLayerNorm(center=0) island, calibrated."""

    NORM_OP = "RMSNormalization"

    def rules(self):
        return [_IRmsNorm.rule("irmsnorm", self._scales, self.options.input_bits)]
