"""Shift-integer: ``ivit``'s int8 weight matmuls as integer shifts (issue 17 item 5: shift-add composed with ivit).

    MatMulInteger(xq, Wq) [-> Add(·, b_q)] -> DequantizeLinear(·, s, 0, axis=-1)      xq int8, Wq int8 const [K, N]
      ->  ShiftMatMulInteger<bits, zero_free>(xq, P) [-> Add(·, b_q')] -> DequantizeLinear(·, s·t, 0, axis=-1)

``Wq[k, n] ≈ t[n] · D[k, n]`` with ``D = ±2^e`` integers (e a left shift, 0 .. E): per output column,
DeepShift-Q's rounding of ``Wq / max|Wq[:, n]|`` (``shift-linear``'s ``quantize_shift``: its scale refit
and re-rounding) gives the exponents relative to the column's largest weight, which become
``e = E - e_rel`` (the smallest clamp to 2^0, or to the zero code when ternary and below half of it);
``t`` is then the least-squares scale of Wq on D. ``t`` is folded into what already follows the
accumulator: the DequantizeLinear's per-channel scale becomes ``s·t`` and the int32 bias
``b_q' = round(b_q / t)``, so ``integer-chain`` (run after this pass in the ``ivit-shift`` preset)
derives the integer requantization from them as it does for ``MatMulInteger``; the model stays
integer-only. On a model ``ivit`` already chained, the island ends in the requantization itself::

    MatMulInteger(xq, Wq) [-> Add(·, b_q)] -> DyadicRequant(·, M, K)
      ->  ShiftMatMulInteger(xq, P) [-> Add(·, b_q')] -> DyadicRequant(·, M', K')    M'·2^-K' ≈ M·2^-K·t

(``dyadic_multiplier``, per column), so ``ivit,shift-integer`` composes too. The top exponent E is the
largest (at most 14 ternary, 15 zero-free) with ``K · 128 · 2^E + max|b_q'| < 2^31``: the accumulator
never wraps, so the op is exact and every kernel equals the reference bit for bit.

Per layer, the weight SQNR of ``t·D`` against Wq (dB) is stamped on the node
(``pkg.graphopt.shift.sqnr_db``, as ``shift-linear`` stamps its layers) with E, and summarised in the
notes (with the float weights gone, Wq is the reference: this is the error the shifts add to int8's).

Declined, with the reason: the input is not int8 (a uint8 input with a zero point); the weight is not
a constant int8 [K, N]; a zero point that is not 0; the accumulator is read by anything but the bias
Add and the DequantizeLinear / DyadicRequant (the rewriter itself leaves such a match alone); a bias
that is not a constant int32 per-column vector; a DequantizeLinear scale that is not a constant scalar
or per-column vector on the last axis (a DyadicRequant's M and K likewise); K so large that even E = 0
could overflow; the node is inside a function; the model's opset is below 13 (the op's body).

Why: the int8 product ``x·w`` becomes ``±(x << e)``, and the weights stream at 5.33 bits instead of 8
(bits=5). Whether that is faster than the int8 kernels (VNNI's vpdpbusd does 64 int8 MACs per
instruction) is measured in ``docs/shift-add.md`` ("Shifts on integer activations").
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt import ops
from graphopt.ops.dyadic_requant import dyadic_multiplier
from graphopt.ops.shift_matmul import SQNR_KEY, max_exponent, pack
from graphopt.ops.shift_matmul_integer import MAX_BITS, OP_NAME
from graphopt.pass_base import RulePass
from graphopt.passes._canonical_utils import constant, unique_initializer_name
from graphopt.passes.shift_linear import quantize_shift, sqnr_db
from graphopt.registry import register_pass

__all__ = ["ShiftIntegerOptions", "ShiftIntegerPass", "integer_shift_weights"]

_MIN_OPSET = 13
_ACC_LIMIT = 2**31 - 1
_X_MAX = 128  # |int8|
_WEIGHT_ELEMENTS = 1 << 31
TOP_KEY = "pkg.graphopt.shift.top_exponent"  # node metadata: the layer's E


@dataclasses.dataclass(frozen=True)
class ShiftIntegerOptions:
    bits: int = dataclasses.field(default=5, metadata={"range": (2, MAX_BITS)})  # code width: 1 sign bit + exponent bits
    zero_free: bool = False  # DenseShift's zero-free set; False: a zero code (the largest exponent)


@dataclasses.dataclass(frozen=True)
class IntegerShifts:
    """One layer's weights as shifts: codes [K, N] (e a left shift), the scale t [N] with Wq ≈ t·D, E, the SQNR."""

    codes: np.ndarray
    scale: np.ndarray
    top: int
    sqnr_db: float


def _integer_codes(relative: np.ndarray, top: int, bits: int, zero_free: bool) -> np.ndarray:
    """Relative codes (``shift-linear``'s: e_rel, weight ±2^-e_rel of the column's scale) -> integer codes
    ``sign << (bits-1) | e`` with ``e = top - e_rel`` clamped at 0 (ternary: half of 2^0 and below is the
    zero code). A relative zero code stays the zero code."""
    half, e_max = 1 << (bits - 1), max_exponent(bits)
    sign, e_rel = relative // half, relative % half
    is_zero = (e_rel == e_max) & (not zero_free)
    e = top - e_rel
    if zero_free:
        e = np.maximum(e, 0)
    else:
        is_zero |= e < 0  # below 2^0: e_rel = top + 1 is 2^-1 of the smallest, half of it, rounded to 0
        e = np.where(is_zero, e_max, e)
    return np.where(is_zero, 0, sign * half) + e


def _weights(codes: np.ndarray, bits: int, zero_free: bool) -> np.ndarray:
    from graphopt.ops.shift_matmul_integer import integer_weights  # noqa: PLC0415

    return integer_weights(codes, bits, int(zero_free)).astype(np.float64)


def integer_shift_weights(wq: np.ndarray, bias: np.ndarray | None, bits: int = 5, zero_free: bool = False
                          ) -> tuple[IntegerShifts | None, str | None]:
    """Int8 weights ``[K, N]`` (and the int32 bias) -> their integer shifts, with the largest E the accumulator
    allows; (None, reason) when even E = 0 could overflow."""
    w = np.asarray(wq, np.float64)
    k = w.shape[0]
    relative, _ = quantize_shift(w, bits, zero_free)
    cap = max_exponent(bits) if zero_free else max_exponent(bits) - 1
    for top in range(cap, -1, -1):
        codes = _integer_codes(relative, top, bits, zero_free)
        d = _weights(codes, bits, zero_free)
        power = np.square(d).sum(axis=0)
        t = (d * w).sum(axis=0) / np.where(power > 0, power, 1.0)
        t = np.where((power > 0) & (t > 0), t, 1.0)  # an all-zero column: any scale is exact
        b = None if bias is None else np.rint(np.asarray(bias, np.float64) / t)
        largest = k * _X_MAX * (2**top) + (0 if b is None else float(np.abs(b).max(initial=0)))
        if largest <= _ACC_LIMIT:
            return IntegerShifts(codes, t, top, sqnr_db(w, d * t)), None
    return None, f"K={k}: int8 inputs shifted by 2^0 may already overflow the int32 accumulator"


def _int_constant(value: ir.Value | None, dtype: ir.DataType) -> np.ndarray | None:
    if value is None or value.dtype != dtype:
        return None
    return constant(value, _WEIGHT_ELEMENTS)


def _only_consumer(value: ir.Value, node: ir.Node) -> bool:
    return len(value.uses()) == 1 and next(iter(value.uses())).node is node and not value.is_graph_output()


class _ShiftIntegerRule(pattern.RewriteRuleClassBase):
    """MatMulInteger(xq, Wq) [-> Add(b_q)] -> DequantizeLinear -> ShiftMatMulInteger [-> Add(b_q')] -> DequantizeLinear(s·t)."""

    def __init__(self, name: str, options: ShiftIntegerOptions, bias: bool, chained: bool = False) -> None:
        super().__init__(name)
        self.options, self.bias, self.chained = options, bias, chained
        self._plan: tuple[IntegerShifts, np.ndarray, np.ndarray | None] | None = None

    def pattern(self, op, x, w, b, s, z):
        acc = op.MatMulInteger(x, w, _outputs=["acc"])
        summed = op.Add(acc, b, _outputs=["summed"]) if self.bias else acc
        if self.chained:  # s, z: DyadicRequant's multiplier and shift
            return op.DyadicRequant(summed, s, z, _domain=ops.DOMAIN, _allow_other_attributes=True, _outputs=["out"])
        return op.DequantizeLinear(summed, s, z, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, x, w, b=None, s=None, z=None, acc=None, summed=None, out=None, **_) -> pattern.MatchResult:
        result, matmul, dequantize = pattern.MatchResult(), acc.producer(), out.producer()
        self._plan = None
        if isinstance(context.graph_or_function, ir.Function):
            return result.fail("the shift codes are initializers but the node is inside a function; inline first")
        opset = context.model.opset_imports.get("", context.model.opset_imports.get("ai.onnx", 1))
        if opset < _MIN_OPSET:
            return result.fail(f"ShiftMatMulInteger's body needs opset >= {_MIN_OPSET}, model has {opset}", matmul)
        if len(matmul.inputs) > 2 and any(constant(v) is None or constant(v).any() for v in matmul.inputs[2:] if v is not None):
            return result.fail(f"MatMulInteger {matmul.name} has a zero point that is not a constant 0", matmul)
        if x.dtype != ir.DataType.INT8:
            return result.fail(f"the input {x.name} is {x.dtype.name if x.dtype else 'of unknown type'}, not int8", x)
        wq = _int_constant(w, ir.DataType.INT8)
        if wq is None or wq.ndim != 2:
            return result.fail(f"the weight {w.name} of {matmul.name} is not a constant int8 [K, N]", w)
        k, n = wq.shape
        bias = None
        if self.bias:
            bias = _int_constant(b, ir.DataType.INT32)
            if bias is None or bias.size != n or bias.shape[-1] != n:
                return result.fail(f"the bias {b.name} is not a constant int32 vector of the {n} columns", b)
            if not _only_consumer(summed, dequantize):
                return result.fail(f"the biased accumulator {summed.name} has readers besides its DequantizeLinear", summed)
        if not _only_consumer(acc, summed.producer() if self.bias else dequantize):
            return result.fail(f"the accumulator {acc.name} of {matmul.name} is read by more than the island", acc)
        if self.chained:
            scale = self._dyadic_ratio(result, s, z, n)
            if scale is None:
                return result
        else:
            scale, zero = constant(s, n), constant(z, n) if z is not None else np.zeros(())
            axis = dequantize.attributes.get_int("axis", 1)
            rank = len(x.shape) if x.shape is not None else None
            last = scale is not None and scale.ndim == 1 and scale.size == n and rank is not None and axis in (-1, rank - 1)
            if scale is None or s.dtype != ir.DataType.FLOAT or not (scale.ndim == 0 or last):
                return result.fail(f"the DequantizeLinear scale {s.name} is not a constant scalar or per-column vector "
                                   "on the last axis", s)
            if zero is None or zero.any():
                return result.fail("the DequantizeLinear zero point is not a constant 0", dequantize)
        shifts, reason = integer_shift_weights(wq, None if bias is None else bias.reshape(-1), self.options.bits,
                                               self.options.zero_free)
        if shifts is None:
            return result.fail(reason, matmul)
        self._plan = (shifts, np.broadcast_to(scale.astype(np.float64), (n,)), bias)
        return result

    @staticmethod
    def _dyadic_ratio(result: pattern.MatchResult, m: ir.Value, k: ir.Value, n: int) -> np.ndarray | None:
        """``M · 2^-K`` of a DyadicRequant whose M and K are constant scalars or [N] vectors, else None (failed)."""
        multiplier, shift = constant(m, n), constant(k, n)
        if multiplier is None or shift is None or any(a.ndim > 1 or a.size not in (1, n) for a in (multiplier, shift)):
            result.fail(f"the DyadicRequant multiplier {m.name} / shift {k.name} are not constant scalars or "
                        "per-column vectors")
            return None
        return multiplier.astype(np.float64).reshape(-1) * np.exp2(-shift.astype(np.float64).reshape(-1))

    def rewrite(self, op, x, acc=None, out=None, **_):
        shifts, scale, bias = self._plan
        matmul, graph = acc.producer(), acc.graph
        base = f"shift_integer_{matmul.name or acc.name}"

        def init(suffix: str, array: np.ndarray) -> ir.Value:
            name = unique_initializer_name(graph, f"{base}_{suffix}")
            return op.initializer(ir.tensor(np.ascontiguousarray(array), name=name), name=name)

        y = getattr(op, OP_NAME)(x, init("codes", pack(shifts.codes, self.options.bits)), bits=self.options.bits,
                                 zero_free=int(self.options.zero_free), _domain=ops.DOMAIN, _version=ops.OPSET_VERSION)
        y.producer().metadata_props[SQNR_KEY] = f"{shifts.sqnr_db:.2f}"
        y.producer().metadata_props[TOP_KEY] = str(shifts.top)
        y.dtype, y.shape = ir.DataType.INT32, acc.shape  # the accumulator's type: integer-chain reads it
        if bias is not None:
            y = op.Add(y, init("bias_int32", np.rint(bias.reshape(-1) / shifts.scale).astype(np.int32)))
            y.dtype, y.shape = ir.DataType.INT32, acc.shape
        if self.chained:
            multiplier, shift = dyadic_multiplier(scale * shifts.scale)
            return op.DyadicRequant(y, init("multiplier", multiplier), init("shift", shift),
                                    out_bits=out.producer().attributes.get_int("out_bits", 32), _domain=ops.DOMAIN,
                                    _version=ops.OPSET_VERSION)
        s_new = (scale * shifts.scale).astype(np.float32)
        zero = init("zero_int32", np.zeros(s_new.size, np.int32))
        return op.DequantizeLinear(y, init("s_out", s_new), zero, axis=-1)


@register_pass("shift-integer", options=ShiftIntegerOptions, category="rewrite")
class ShiftIntegerPass(RulePass):
    """int8-linear's weight islands (MatMulInteger) -> ShiftMatMulInteger: ±2^e integer weights, scale folded."""

    def rules(self):
        options = self.options
        return [(_ShiftIntegerRule.rule("shift-integer", options, True),
                 _ShiftIntegerRule.rule("shift-integer", options, False),
                 _ShiftIntegerRule.rule("shift-integer", options, True, True),
                 _ShiftIntegerRule.rule("shift-integer", options, False, True))]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        result = super().call(model)
        stamped = [(float(n.metadata_props[SQNR_KEY]), int(n.metadata_props[TOP_KEY])) for n in model.graph
                   if n.op_type == OP_NAME and n.domain == ops.DOMAIN and TOP_KEY in n.metadata_props]
        if stamped:
            sqnr = [v for v, _ in stamped]
            self.notes.append(f"{len(stamped)} int8 weight matmuls as shifts ({self.options.bits}-bit codes); weight SQNR "
                              f"vs int8 min {min(sqnr):.1f} / median {float(np.median(sqnr)):.1f} dB; top exponent "
                              f"{min(t for _, t in stamped)}..{max(t for _, t in stamped)}")
        return result
