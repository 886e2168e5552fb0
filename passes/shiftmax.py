"""Replace float ``Softmax`` over the last axis by an integer-only I-ViT Shiftmax island.

    Softmax(x, axis=last)                    [or the sdpa export's Where(IsNaN(Softmax(x)), 0, Softmax(x))]
    ==>  DequantizeLinear(Shiftmax<x0, n, out_bits>(Cast<int32>(QuantizeLinear(x, s_in, int8 0))),
                          2^-(out_bits-1))

The NaN guard of Hugging Face's sdpa path (NaN probabilities of fully masked rows -> 0) goes into
the island: an integer Shiftmax never yields NaN, and with ``mask=true`` a fully masked row is 0
(what the guard makes of it); left outside, the guard would put a float ``IsNaN`` in the integer
region.

``s_in`` is a per-tensor symmetric scale from calibration (``needs_calibration``): by default
max(|min|, |max|) / (2^(input_bits-1) - 1) of x over the run's samples (``calibration="minmax"``),
or the ``percentile``-th percentile of |x| (``"percentile"``, ``"histogram"``: ``CalibrationOptions``).
Values at or below -1e30 (additive attention masks: ``finfo.min``, ``-inf``) are left out of the
statistics (``calibrate(..., ignore_below=MASK_FILL)``): they saturate
to -128, which Shiftmax turns into probability ~0 as the float softmax does *provided* -128·s lies
more than ~n/log2(e) real units (~10 for n=15) below the row max; with a narrow score range a
saturated mask keeps a small weight. ``mask=true`` (the ``ivit`` preset) makes -128 mean -inf:
the op's ``mask_below=-127`` gives those inputs probability 0. A symmetric minmax scale puts the
calibrated range in [-127, 127], so only saturation (a mask fill, or a score below the calibrated
minimum) reaches -128. Measured on the random-init tiny-llama (causal mask, scores within ±0.1): the
shiftmax islands alone give logits cosine 0.84 vs FP32 without it. The pass
derives the op's integer attribute ``x0 = floor(-1/s_in)``. ``fit_n=true`` (``ivit``) lowers n per
node to ``q_max + 1``, ``q_max = floor(-367 / x0)`` the most halvings an int8 row can span (a row
max 127 and an element -128; -367 is that difference after the ×1.4375 shifts): the clamp at n
never bites, and the exponentials stay ``|x0|·2^n`` small, so the normalizer
``floor((2^31-1)/sum)`` keeps its bits. Small scales need it: a tiny-llama score range of ±0.1
(x0 = -1278) with n = 15 sums 16 exponentials to ~2^29.3, f = 3, and rows summed to 0.75
(logits cosine 0.998 with ``mask``; 0.99998 with ``fit_n`` too). With |x0| <= 26 (score ranges
above ~5 real units) n stays 15. See ``graphopt/ops/shiftmax.py`` for the
op, its defaults (n=15, out_bits=16) and why.

All Softmax inputs are calibrated in one run of the model; then one rewrite rule replaces each
Softmax whose check finds its scale.

Declined, with the reason: Softmax over a non-last axis (or an opset < 13 Softmax whose default
axis=1 coerces several axes); the input is not float32/float16/bfloat16 (double has no
QuantizeLinear); float16/bfloat16 on an opset < 19 model; no calibration statistics for the input
(e.g. it was not captured, or every value was a mask fill); |x0|·2^n·L >= 2^31 for a static row
length L (the row's exponential sum would clamp). A softmax input that is already int32-quantized
(chained integer graphs, the ``ivit`` preset) is out of scope here.

Why: I-ViT's integer-only inference; the island is where a backend runs Shiftmax natively, and the
numerics (sentence-embedding cosine on MiniLM) say what the integer softmax costs on its own.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt import ops
from graphopt.calibrate import Calibration, CalibrationOptions, Scales, bits_option
from graphopt.pass_base import GraphoptPass
from graphopt.passes._canonical_utils import constant, default_opset
from graphopt.ops.shiftmax import DEFAULT_N, DEFAULT_OUT_BITS, INT31, NO_MASK
from graphopt.registry import register_pass

__all__ = ["ShiftmaxOptions", "ShiftmaxPass", "input_scale"]

MASK_FILL = -1e30  # a softmax input at or below this is a mask fill (minus infinity to softmax)
_FLOATS = {ir.DataType.FLOAT: np.float32, ir.DataType.FLOAT16: np.float16, ir.DataType.BFLOAT16: None}


@dataclasses.dataclass(frozen=True)
class ShiftmaxOptions(CalibrationOptions):
    # calibration, percentile: CalibrationOptions (of |x|, mask fills left out)
    input_bits: int = bits_option(8, choices=(8,))  # the island quantizes x to int8
    n: int = dataclasses.field(default=DEFAULT_N, metadata={"range": (0, 30)})  # halvings kept by ShiftExp (I-ViT PyTorch: 15, TVM: 16)
    out_bits: int = dataclasses.field(default=DEFAULT_OUT_BITS, metadata={"range": (2, 31)})  # output scale 2^-(out_bits-1); I-ViT PyTorch 16, TVM 8
    mask: bool = False  # True: -128 (only reached by saturation, i.e. a mask fill) gets probability 0 (mask_below=-127); not on one-element rows
    fit_n: bool = False  # True: n lowered per node to the halvings an int8 row can span (keeps the normalizer's bits)


def input_scale(calibration: Calibration, name: str, options: ShiftmaxOptions) -> float | None:
    """The symmetric input scale of ``name`` (mask fills are left out by ``calibration``); None
    without values. A constant-zero input gets range 1: any scale is exact."""
    bound = calibration.symmetric_range(name, options)
    if bound is None:
        return None
    if not bound > 0:
        bound = 1.0
    return bound / (2 ** (options.input_bits - 1) - 1)


def _softmax_axis(node: ir.Node, opset: int) -> tuple[int | None, str | None]:
    """(the axis, None) when ``node`` is a last-axis softmax, else (None, why not)."""
    x = node.inputs[0]
    rank = None if x.shape is None else len(x.shape)
    axis = node.attributes.get_int("axis", -1 if opset >= 13 else 1)
    if axis == -1 and opset >= 13:
        return axis, None
    if rank is None:
        return None, f"Softmax axis is {axis} and the input's rank is unknown"
    if axis % rank != rank - 1:
        return None, f"Softmax is over axis {axis}, not the last axis"
    return axis, None


class _Island(pattern.RewriteRuleClassBase):
    """Softmax(x) -> DequantizeLinear(Shiftmax(Cast(QuantizeLinear(x)))) with the node's calibrated scale."""

    def __init__(self, name: str, scales: Scales[float], options: ShiftmaxOptions) -> None:
        super().__init__(name)
        self.scales, self.options = scales, options
        self._plan: tuple | None = None  # check() -> rewrite(), as onnxscript's class-based rules do

    def pattern(self, op, x):
        return op.Softmax(x, _allow_other_attributes=True, _outputs=["probs"])

    def check(self, context, x, probs, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        opset = default_opset(context.model)
        softmax = probs.producer()
        _, why = _softmax_axis(softmax, opset)
        if why:
            return result.fail(why, softmax)
        if x.dtype not in _FLOATS:
            dtype = x.dtype.name if x.dtype is not None else "unknown"
            return result.fail(f"Softmax input is {dtype}; the int8 island needs float32/float16/bfloat16", x)
        if x.dtype != ir.DataType.FLOAT and opset < 19:
            return result.fail(f"QuantizeLinear of {x.dtype.name} needs opset >= 19, model has {opset}", x)
        if opset < 18:  # the Shiftmax body's ReduceMax takes axes as an input; an older model's opset would check it
            return result.fail(f"the Shiftmax body needs opset >= 18 (ReduceMax axes input), model has {opset}; run opset-upgrade first", x)
        scale = self.scales.get(x.name)
        if scale is None:
            return result.fail(self.scales.reason(x.name), x)
        x0 = math.floor(-1.0 / scale)
        n = min(self.options.n, -367 // x0 + 1) if self.options.fit_n else self.options.n
        length = x.shape[-1] if x.shape is not None and len(x.shape) else None
        if isinstance(length, int) and -x0 * 2**n * length >= INT31:
            return result.fail(
                f"exp sum may reach 2^31 (|x0|={-x0}, n={n}, row length {length}); lower n", x)
        if isinstance(context.graph_or_function, ir.Function):
            return result.fail("the island needs scale initializers but the Softmax is inside a function; inline first")
        # a one-element row's probability is 1 whatever its score: a saturated score there is no mask fill
        mask_below = -127 if self.options.mask and length != 1 else NO_MASK
        self._plan = (scale, x0, n, mask_below, context.graph_or_function)
        return result

    def rewrite(self, op, x, **_):
        scale, x0, n, mask_below, graph = self._plan
        bits = self.options.out_bits
        s_in = _initializer(op, graph, f"{x.name}_shiftmax_scale", np.array(scale, np.float32), x.dtype)
        zp_in = _initializer(op, graph, "graphopt_shiftmax_zero_int8", np.array(0, np.int8), ir.DataType.INT8)
        s_out = _initializer(op, graph, f"graphopt_shiftmax_out_scale_{bits}", np.array(2.0 ** -(bits - 1), np.float32), x.dtype)
        zp_out = _initializer(op, graph, "graphopt_shiftmax_zero_int32", np.array(0, np.int32), ir.DataType.INT32)
        q = op.QuantizeLinear(x, s_in, zp_in)
        q32 = op.Cast(q, to=ir.DataType.INT32)
        # every attribute spelled out: onnx's inliner (the integer-only verifier) ignores function defaults
        y = op.Shiftmax(q32, x0=x0, n=n, out_bits=bits, mask_below=mask_below, _domain=ops.DOMAIN, _version=ops.OPSET_VERSION)
        return op.DequantizeLinear(y, s_out, zp_out)


class _GuardedIsland(_Island):
    """Where(IsNaN(Softmax(x)), 0, Softmax(x)) -> the same island: its integer output has no NaN."""

    def pattern(self, op, x, zero):
        probs = op.Softmax(x, _allow_other_attributes=True, _outputs=["probs"])
        return op.Where(op.IsNaN(probs), zero, probs)

    def check(self, context, x, probs, zero, **_) -> pattern.MatchResult:
        fill = constant(zero)
        if fill is None or fill.size != 1 or fill.reshape(-1)[0] != 0:
            return pattern.MatchResult().fail("the IsNaN guard does not replace NaN with 0", zero)
        return super().check(context, x, probs)

    def rewrite(self, op, x, zero, **_):
        return super().rewrite(op, x)


def _initializer(op, graph: ir.Graph, name: str, array: np.ndarray, dtype: ir.DataType) -> ir.Value:
    """A scalar initializer of ``dtype`` (the shared one when it already exists)."""
    if name in graph.initializers:
        return graph.initializers[name]
    if dtype == ir.DataType.BFLOAT16:
        tensor = ir.tensor(array.astype(np.float32), dtype=dtype, name=name)
    else:
        tensor = ir.tensor(array.astype(dtype.numpy()), name=name)
    return op.initializer(tensor, name=name)


@register_pass("shiftmax", options=ShiftmaxOptions, category="rewrite")
class ShiftmaxPass(GraphoptPass):
    """Replace last-axis float Softmax by an int8 -> Shiftmax -> dequantize island (I-ViT)."""

    needs_calibration = True

    def rules(self, scales: Scales[float] | None = None):
        """The island rules with these input scales (none: the patterns alone, for ``explain``)."""
        scales = scales if scales is not None else Scales()
        return [_GuardedIsland.rule("shiftmax-nan-guard", scales, self.options), _Island.rule("shiftmax", scales, self.options)]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = default_opset(model)
        names = sorted({
            node.inputs[0].name for node in model.graph
            if node.domain == "" and node.op_type == "Softmax" and node.inputs[0] is not None
            and node.inputs[0].dtype in _FLOATS and _softmax_axis(node, opset)[1] is None
        })
        scales: Scales[float] = Scales()
        if names:
            # One run for all inputs, mask fills (finfo.min) left out: they can be most of an
            # attention row, so even percentiles would hit them.
            calibration = self.calibrate(model, names, ignore_below=MASK_FILL)
            found = {name: input_scale(calibration, name, self.options) for name in names}
            scales = Scales({name: scale for name, scale in found.items() if scale is not None})
        return ir.passes.PassResult(model, modified=self.record(self.apply_rules(model, self.rules(scales))))
