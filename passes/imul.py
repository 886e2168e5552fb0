"""Replace a float product of two activations with an integer multiply island (calibrated).

    Mul(x, y)   (x, y float32 activations, at least one downstream of a DequantizeLinear)
      ->  DequantizeLinear(
              Mul(Cast<int32>(QuantizeLinear(x, s_x, int16 0)), Cast<int32>(QuantizeLinear(y, s_y, int16 0))),
              s_x·s_y)

``s_x``, ``s_y`` are symmetric per tensor from calibration, ``range / (2^(b-1) - 1)`` with the
range of ``CalibrationOptions`` (max|x| by default; a percentile of |x|). The int32 product is
exact: int16 × int16 is at most 2^30 in magnitude. ``Mul(x, x)`` quantizes x once. The
``integer-chain`` pass then lowers both QuantizeLinear inputs to integer ops and requantizes the
product where it is read, so in ``ivit`` this is a plain int32 ``Mul`` between two
``DyadicRequant``\\ s. In LLaMA-style decoders it takes the SwiGLU product ``silu(gate)·up`` and
RoPE's ``q·cos`` / ``rotate_half(q)·sin``: cos and sin are float functions of the positions (no
DequantizeLinear upstream), so their QuantizeLinear is an entry of the integer region, like an
attention mask's.

A constant tensor operand (RoPE's cos/sin once ``fold-static-values`` evaluated them for a static
sequence length) is quantized at its own symmetric scale ``max|c| / (2^(b-1) - 1)``: no
calibration needed. Not applied (declined, with the reason) when an operand is a one-element
constant (a constant scaling is folded by ``integer-chain`` into its requantization, exactly) or an
all-zero constant, when x or y is not float32, when
neither operand is downstream of a DequantizeLinear (float preprocessing: quantizing it gains
nothing), when the opset is below 21 for 16-bit operands, or without usable statistics.

Why: the last float multiplies of an integer-only decoder (``ivit`` on tiny-llama) become one
integer multiply each.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt.calibrate import CalibrationOptions, Scales, bits_option
from graphopt.pass_base import RulePass
from graphopt.passes._canonical_utils import unique_initializer_name
from graphopt.registry import register_pass

__all__ = ["IMulOptions", "IMulPass"]


@dataclasses.dataclass(frozen=True)
class IMulOptions(CalibrationOptions):
    input_bits: int = bits_option(16, choices=(8, 16))  # the QuantizeLinear type of each operand (the product fits int32 either way)


def _is_constant(value: ir.Value) -> bool:
    producer = value.producer()
    return value.const_value is not None or (producer is not None and producer.op_type == "Constant" and producer.domain == "")


def _constant_size(value: ir.Value) -> int:
    tensor = ir.convenience.get_const_tensor(value)
    return 0 if tensor is None else tensor.size


def _constant_scale(value: ir.Value, bits: int) -> float | None:
    """The symmetric scale of a constant operand from its own values (None when all zero or not finite)."""
    array = np.abs(ir.convenience.get_const_tensor(value).numpy().astype(np.float64))
    bound = float(array.max()) if array.size else 0.0
    return float(np.float32(bound / (2 ** (bits - 1) - 1))) if np.isfinite(bound) and bound > 0 else None


def _downstream_of_dequantize(graph: ir.Graph) -> set[int]:
    """ids of the values some DequantizeLinear feeds, directly or not (the integer islands' float side)."""
    found: set[int] = set()
    for node in graph:  # topological order
        if (node.op_type == "DequantizeLinear" and node.domain == "") or any(id(i) in found for i in node.inputs if i is not None):
            found.update(id(o) for o in node.outputs)
    return found


class _IMulRule(pattern.RewriteRuleClassBase):
    """Mul(x, y) of two calibrated float32 activations -> int16 × int16 -> int32 island.

    ``scales`` and ``dequantized`` (ids of the values downstream of a DequantizeLinear) are computed
    by the pass before the rule is built. The check's plan reaches ``rewrite`` on the rule instance,
    as onnxscript's own class-based rules do (its match context is read-only)."""

    def __init__(self, name: str, scales: Scales[float], dequantized: frozenset[int], bits: int) -> None:
        super().__init__(name)
        self.scales, self.dequantized, self.bits = scales, dequantized, bits
        self._plan: dict | None = None

    def pattern(self, op, x, y):
        return op.Mul(x, y, _outputs=["z"])

    def check(self, context, x, y, z, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        self._plan = None
        for name, value in (("x", x), ("y", y)):
            if _is_constant(value) and _constant_size(value) <= 1:
                return result.fail(f"{name} is a constant: integer-chain folds a constant scaling into its requant", value)
            if value.dtype != ir.DataType.FLOAT:
                dtype = value.dtype.name if value.dtype is not None else "of unknown type"
                return result.fail(f"{name} is {dtype}, not float32", value)
        if id(x) not in self.dequantized and id(y) not in self.dequantized:
            return result.fail("neither operand comes from a DequantizeLinear: float preprocessing, not an integer region", z)
        opset = context.model.opset_imports.get("", 0)
        if self.bits == 16 and opset < 21:
            return result.fail(f"int16 QuantizeLinear needs opset >= 21, model has {opset}", z)
        scales = []
        for value in (x, y):
            scale = _constant_scale(value, self.bits) if _is_constant(value) else self.scales.get(value.name)
            if scale is None and _is_constant(value):
                return result.fail(f"{value.name} is an all-zero or non-finite constant", value)
            if scale is None:
                return result.fail(self.scales.reason(value.name), value)
            scales.append(scale)
        self._plan = {"s_x": scales[0], "s_y": scales[1], "graph": z.producer().graph,
                      "base": f"imul_{z.producer().name or z.name}"}
        return result

    def rewrite(self, op, x, y, **_):
        plan, bits = self._plan, self.bits
        graph = plan["graph"]

        def init(suffix: str, array: np.ndarray) -> ir.Value:
            name = unique_initializer_name(graph, f"{plan['base']}_{suffix}")
            return op.initializer(ir.tensor(array, name=name), name=name)

        zero = init("zero", np.zeros((), np.int16 if bits == 16 else np.int8))

        def quantized(value, scale, suffix):
            q = op.QuantizeLinear(value, init(f"s_{suffix}", np.array(scale, np.float32)), zero)
            return op.Cast(q, to=ir.DataType.INT32)

        xi = quantized(x, plan["s_x"], "x")
        yi = xi if y is x else quantized(y, plan["s_y"], "y")
        product = op.Mul(xi, yi)
        s_out = np.array(np.float32(plan["s_x"]) * np.float32(plan["s_y"]), np.float32)
        return op.DequantizeLinear(product, init("s_out", s_out))


@register_pass("imul", options=IMulOptions, category="rewrite")
class IMulPass(RulePass):
    """Replace the float product of two activations by an int16 × int16 -> int32 Mul island, calibrated."""

    needs_calibration = True

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self._scales: Scales[float] = Scales()
        self._dequantized: frozenset[int] = frozenset()

    def rules(self):
        return [_IMulRule.rule("imul", self._scales, self._dequantized, self.options.input_bits)]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Calibrate every activation operand of a candidate Mul (one run), then build and run the rule."""
        dequantized = _downstream_of_dequantize(model.graph)
        names = sorted({
            i.name for n in model.graph if n.op_type == "Mul" and n.domain == "" and len(n.inputs) == 2
            and all(i is not None and i.dtype == ir.DataType.FLOAT for i in n.inputs)
            and any(id(i) in dequantized for i in n.inputs)
            and not any(_is_constant(i) and _constant_size(i) <= 1 for i in n.inputs)  # the rule declines scalings: no run for them
            for i in n.inputs if not _is_constant(i)  # constants carry their own scale
        })
        self._dequantized = frozenset(dequantized)
        self._scales = self.calibrate(model, names).symmetric_scales(names, self.options) if names else Scales()
        return super().call(model)
