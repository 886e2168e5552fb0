"""The weight rules of ``int8-linear`` and the base they share with the activation rule.

``int8-matmul`` (MatMul with a constant [K, N] weight, optionally with a per-column bias Add),
``int8-gemm`` and ``int8-conv``: each becomes QuantizeLinear -> MatMulInteger / ConvInteger
(-> Add of the int32 bias) -> DequantizeLinear. The rewrite, its scales and its declines are
documented in ``passes/int8_linear.py`` and ``docs/int8-linear.md``.

A rule gets what the pass calibrated (``Calibrated``, read-only) and the pass's options when it
is built; nothing reaches back into the pass. ``check`` leaves its plan on the rule for
``rewrite``, which onnxscript calls next for the same match: onnxscript's match context is
read-only and the check's ``MatchResult`` is not the one whose bindings reach ``rewrite``, so its
own class-based rules (``ort_fusions``: ``sdpa``, ``mha``, ``rms_normalization``) do the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt.calibrate import Calibration, Scales
from graphopt.passes._canonical_utils import (
    constant,
    default_opset,
    dequantized_constant,
    is_dequantized_constant,
    unique_initializer_name,
)
from graphopt.passes._int8_maths import ACC_LIMIT, BIAS_LIMIT, QMAX, UQMAX, bias_vector, quantize_weight, smoothed_scale

if TYPE_CHECKING:
    from graphopt.passes.int8_linear import Int8LinearOptions

__all__ = ["Calibrated", "Conv", "Gemm", "Int8Rule", "Island", "MatMulWeight", "Plan", "is_constant", "static_dim"]

_WEIGHT_ELEMENTS = 1 << 31  # constants up to this size are read as weights
_PER_AXIS_OPSET = 13  # DequantizeLinear with a 1-D scale and `axis`
_MIN_OPSET = 10  # QuantizeLinear, MatMulInteger, ConvInteger
_CONV_ATTRIBUTES = ("auto_pad", "dilations", "kernel_shape", "pads", "strides")


@dataclasses.dataclass(frozen=True)
class Calibrated:
    """What the pass computed from one calibration run before building its rules."""

    scales: Scales[float] = dataclasses.field(default_factory=Scales)  # per-tensor activation scales
    unsigned: frozenset[str] = frozenset()  # activations quantized to uint8 (never negative, read by activation MatMuls)
    values: Calibration | None = None  # the captured values, for SmoothQuant's per-weight factors
    affine: Mapping[str, tuple[float, int]] = dataclasses.field(default_factory=dict)  # Conv inputs: uint8 (scale, zero point)


def is_constant(value: ir.Value | None) -> bool:
    """A constant, or a weight stored as integers and dequantized in the graph (weight-only int8,
    QDQ): its float values are constants too, and the weight rules re-quantize them per channel,
    which gives back the stored integers when their scale is per output channel and symmetric."""
    if value is None or value.is_graph_input():
        return False
    if value.const_value is not None or is_dequantized_constant(value):
        return True
    producer = value.producer()
    return producer is not None and producer.op_type == "Constant" and producer.domain == ""


def _dtype_name(value: ir.Value) -> str:
    return value.dtype.name if value.dtype is not None else "of unknown type"


def static_dim(value: ir.Value, index: int) -> int | None:
    if value.shape is None or len(value.shape) == 0:
        return None
    dim = value.shape[index]
    return dim if isinstance(dim, int) else None


@dataclasses.dataclass
class Plan:
    graph: ir.Graph
    base: str
    s_x: float | np.ndarray  # the QuantizeLinear scale: per tensor, or per input channel when smoothed
    wq: np.ndarray | None = None
    b_q: np.ndarray | None = None
    s_out: np.ndarray | None = None
    s_y: float | None = None
    axis: int = -1
    transpose_x: bool = False
    attributes: dict | None = None
    x_zero: int | None = None  # a Conv input quantized to uint8 with this zero point (lopsided range)


class Island:
    """Builds one island's initializers and Quantize/Dequantize nodes; shared zero points once per island."""

    def __init__(self, op, plan: Plan, unsigned: frozenset[str]) -> None:
        self.op, self.plan, self.unsigned = op, plan, unsigned
        self.zeros: dict[str, ir.Value] = {}

    def init(self, suffix: str, array: np.ndarray) -> ir.Value:
        name = unique_initializer_name(self.plan.graph, f"{self.plan.base}_{suffix}")
        array = array if array.flags.c_contiguous else array.copy()  # (np.ascontiguousarray makes scalars 1-D)
        return self.op.initializer(ir.tensor(array, name=name), name=name)

    def shared(self, name: str, array: np.ndarray) -> ir.Value:
        """A shared zero-point initializer (reused when an earlier rewrite made it)."""
        if name in self.plan.graph.initializers:
            return self.plan.graph.initializers[name]
        if name not in self.zeros:
            self.zeros[name] = self.op.initializer(ir.tensor(array, name=name), name=name)
        return self.zeros[name]

    def quantize(self, x: ir.Value, scale, suffix: str) -> ir.Value:
        op, scale = self.op, np.asarray(scale, np.float32)
        if x.name in self.unsigned:  # a never-negative operand of an activation MatMul
            zero = self.shared("graphopt_int8_linear_zero_uint8", np.array(0, np.uint8))
            return op.QuantizeLinear(x, self.init(suffix, scale), zero)
        if scale.ndim == 0:
            zero = self.shared("graphopt_int8_linear_zero_int8", np.array(0, np.int8))
            return op.QuantizeLinear(x, self.init(suffix, scale), zero)
        zero = self.shared(f"graphopt_int8_linear_zero_int8_{scale.size}", np.zeros(scale.size, np.int8))
        return op.QuantizeLinear(x, self.init(suffix, scale), zero, axis=-1)

    def dequantize(self, acc: ir.Value, s_out: np.ndarray, axis: int) -> ir.Value:
        op, s_out = self.op, np.asarray(s_out, np.float32)
        if s_out.ndim == 0:
            zero = self.shared("graphopt_int8_linear_zero_int32", np.array(0, np.int32))
            return op.DequantizeLinear(acc, self.init("s_out", s_out), zero)
        zero = self.shared(f"graphopt_int8_linear_zero_int32_{s_out.size}", np.zeros(s_out.size, np.int32))
        return op.DequantizeLinear(acc, self.init("s_out", s_out), zero, axis=axis)


class Int8Rule(pattern.RewriteRuleClassBase):
    """Shared checks and the island builder of the int8-linear rules."""

    def __init__(self, name: str, calibrated: Calibrated, options: Int8LinearOptions, variant: str = "") -> None:
        super().__init__(name)
        self.calibrated, self.options, self.variant = calibrated, options, variant
        self._plan: Plan | None = None  # check() -> rewrite(), see the module docstring

    # -- checks ---------------------------------------------------------------------------
    def _activation(self, result: pattern.MatchResult, x: ir.Value, what: str) -> float | None:
        if x.dtype != ir.DataType.FLOAT:
            result.fail(f"{what} is {_dtype_name(x)}, not float32 (the int8 island's scales and output are float32)", x)
            return None
        if is_constant(x):
            result.fail(f"{what} is a constant, not an activation; fold it first", x)
            return None
        scale = self.calibrated.scales.get(x.name)
        if scale is None:
            result.fail(f"no calibration scale for {what} {x.name}: {self.calibrated.scales.reason(x.name)}", x)
            return None
        return scale

    def _weight(self, result: pattern.MatchResult, w: ir.Value, what: str) -> np.ndarray | None:
        if not is_constant(w):
            hint = "" if self.options.activation_matmuls else " (an activation MatMul; activation_matmuls=False)"
            result.fail(f"{what} is not a constant{hint}", w)
            return None
        if w.dtype != ir.DataType.FLOAT:
            result.fail(f"{what} is {_dtype_name(w)}, not float32", w)
            return None
        array = constant(w, max_size=_WEIGHT_ELEMENTS)
        if array is None:
            array = dequantized_constant(w, _WEIGHT_ELEMENTS)
        if array is None:
            result.fail(f"{what} could not be read as a constant", w)
            return None
        if not np.isfinite(array).all():
            result.fail(f"{what} has non-finite values", w)
            return None
        return array

    def _bias(self, result: pattern.MatchResult, b: ir.Value, what: str, channels: int,
              out_rank: int | None) -> np.ndarray | None:
        if not is_constant(b):
            result.fail(f"{what} is not a constant", b)
            return None
        array = constant(b, max_size=_WEIGHT_ELEMENTS)
        if array is None or b.dtype != ir.DataType.FLOAT:
            result.fail(f"{what} is not a float32 constant", b)
            return None
        vector = bias_vector(array, channels, out_rank)
        if vector is None:
            result.fail(f"{what} has shape {list(array.shape)}, not a per-channel [{channels}] bias", b)
            return None
        if not np.isfinite(vector).all():
            result.fail(f"{what} has non-finite values", b)
            return None
        return vector

    def _common(self, context, result: pattern.MatchResult, per_axis: bool) -> bool:
        opset = default_opset(context.model)
        needed = _PER_AXIS_OPSET if per_axis else _MIN_OPSET
        if opset < needed:
            what = "a per-axis QuantizeLinear / DequantizeLinear" if per_axis else "QuantizeLinear / MatMulInteger"
            result.fail(f"{what} needs opset >= {needed}, model has {opset}; run opset-upgrade")
            return False
        if isinstance(context.graph_or_function, ir.Function):
            result.fail("the island needs initializers but the node is inside a function; inline first")
            return False
        return True

    def _accumulation(self, result: pattern.MatchResult, k: int | None, per_product: int, bias: int) -> bool:
        if k is not None and k * per_product + bias > ACC_LIMIT:
            result.fail(f"reduction length K={k}: int8 products may overflow the int32 accumulator")
            return False
        return True

    # -- the island ------------------------------------------------------------------------
    def _weight_island(self, op, x: ir.Value) -> ir.Value:
        plan = self._plan
        island = Island(op, plan, self.calibrated.unsigned)
        if plan.x_zero is not None:
            acc = self._affine_conv(op, island, x)
        else:
            acc = self._symmetric_product(op, island, x)
        if plan.b_q is not None:
            # a Conv's accumulator is [N, M, spatial...]: the bias [M, 1, ...] broadcasts over its spatial axes
            b_q = plan.b_q.reshape((-1,) + (1,) * (plan.wq.ndim - 2)) if plan.attributes is not None else plan.b_q
            acc = op.Add(acc, island.init("bias_int32", b_q))
        return island.dequantize(acc, plan.s_out, plan.axis)

    def _affine_conv(self, op, island: Island, x: ir.Value) -> ir.Value:
        """ConvInteger(uint8 x with its zero point, the int8 weights shifted to uint8 with zero point 128).

        The weights go in as uint8 + 128 (the same integers after the zero point) because ONNX Runtime's
        uint8 x int8 kernel on AVX2 without VNNI sums product pairs in saturating int16 (255·127·2 > 32767);
        uint8 x uint8 is exact there, in TVM and in the reference. Padding reads as the zero point (adds 0)."""
        plan = self._plan
        x_zero = island.init("zero_x", np.array(plan.x_zero, np.uint8))
        xq = op.QuantizeLinear(x, island.init("s_x", np.asarray(plan.s_x, np.float32)), x_zero)
        w_zero = island.shared("graphopt_int8_linear_zero_uint8_128", np.array(128, np.uint8))
        wq = island.init("w_uint8", (plan.wq.astype(np.int16) + 128).astype(np.uint8))
        return op.ConvInteger(xq, wq, x_zero, w_zero, **plan.attributes)

    def _symmetric_product(self, op, island: Island, x: ir.Value) -> ir.Value:
        plan = self._plan
        xq = island.quantize(x, plan.s_x, "s_x")
        if plan.transpose_x:
            xq = op.Transpose(xq, perm=[1, 0])
        wq = island.init("w_int8", plan.wq)
        if plan.attributes is not None:  # Conv
            return op.ConvInteger(xq, wq, **plan.attributes)
        return op.MatMulInteger(xq, wq)

    def _input_encoding(self, x: ir.Value, s_x: float, attributes: dict | None) -> tuple[float, int | None, int]:
        """(scale, uint8 zero point or None, the largest |x_q - zero|·|w_q|) of the input: a Conv input whose
        calibrated range is lopsided (SiLU, ReLU outputs: ``Calibrated.affine``) is uint8 with a zero point,
        every other one int8 symmetric."""
        if attributes is not None and x.name in self.calibrated.affine:
            scale, zero = self.calibrated.affine[x.name]
            return scale, zero, UQMAX * QMAX
        return s_x, None, 128 * QMAX

    def _plan_weight(self, context, result, node: ir.Node, x: ir.Value, w_kn: np.ndarray, bias: np.ndarray | None,
                     *, axis: int, k: int, transpose_x: bool = False, attributes: dict | None = None) -> pattern.MatchResult:
        """Common tail of the weight rules: scales, accumulator range, the plan."""
        options = self.options
        s_x = self._activation(result, x, "the input")
        if s_x is None:
            return result
        s_x, x_zero, per_product = self._input_encoding(x, s_x, attributes)
        q_scale: float | np.ndarray = s_x
        # Conv inputs are not smoothed (any group): t per input channel would fold exactly into W[m, c', ...],
        # but X/t needs a per-channel QuantizeLinear on axis 1, which integer-chain does not lower (last axis only);
        # for a depthwise Conv it is per-channel activation scales (docs/int8-linear.md, SmoothQuant).
        smooth = options.smoothing > 0.0 and attributes is None and not transpose_x
        if smooth:  # SmoothQuant: X/t per tensor, diag(t)·W per column; t lives in the QuantizeLinear scale
            s_x, t, why = smoothed_scale(self.calibrated.values, x.name, w_kn, options, options.smoothing)
            if s_x is None:
                return result.fail(f"cannot smooth the input {x.name}: {why}", x)
            w_kn = w_kn * t[:, None]
            q_scale = (np.float64(np.float32(s_x)) * t).astype(np.float32)
        per_axis = smooth or (options.per_channel and w_kn.shape[axis] > 1)
        if not self._common(context, result, per_axis=per_axis):
            return result
        if not self._accumulation(result, k, per_product, BIAS_LIMIT if bias is not None else 0):
            return result
        wq, b_q, s_out = quantize_weight(w_kn, s_x, bias, per_channel=options.per_channel, axis=axis)
        if s_out.ndim == 1 and s_out.size == 1:  # a single output channel: a scalar scale suffices
            s_out = s_out.reshape(())
        base = f"int8_linear_{node.name or x.name}"
        self._plan = Plan(node.graph, base, q_scale, wq=wq, b_q=b_q, s_out=s_out, axis=1 if attributes is not None else -1,
                           transpose_x=transpose_x, attributes=attributes, x_zero=x_zero)
        return result


class MatMulWeight(Int8Rule):
    """MatMul(X, W) with an optional per-column bias Add (variant "", "right": Add(mm, b), "left": Add(b, mm))."""

    def pattern(self, op, x, w, b):
        mm = op.MatMul(x, w)
        if self.variant == "right":
            return op.Add(mm, b)
        if self.variant == "left":
            return op.Add(b, mm)
        return mm

    def check(self, context, x, w, b=None, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        self._plan = None
        node = context.root
        array = self._weight(result, w, "the weight (MatMul's B)")
        if array is None:
            return result
        if array.ndim != 2:
            return result.fail(f"the weight has shape {list(array.shape)}; int8-matmul takes a rank-2 [K, N] weight", w)
        bias = None
        if b is not None:
            out_rank = None if x.shape is None else max(len(x.shape), 2)
            bias = self._bias(result, b, "the bias (the Add's other operand)", array.shape[1], out_rank)
            if bias is None:
                return result
        mm = next((n for n in context.nodes if n.op_type == "MatMul"), node)
        return self._plan_weight(context, result, mm, x, array, bias, axis=1, k=array.shape[0])

    def rewrite(self, op, x, **_):
        return self._weight_island(op, x)


class Gemm(Int8Rule):
    """Gemm(A, B[, C]) with a constant B."""

    def pattern(self, op, a, w, c):
        if self.variant == "bias":
            return op.Gemm(a, w, c, _allow_other_attributes=True)
        return op.Gemm(a, w, _allow_other_attributes=True)

    def check(self, context, a, w, c=None, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        self._plan = None
        node = context.root
        array = self._weight(result, w, "Gemm's B")
        if array is None:
            return result
        if array.ndim != 2:
            return result.fail(f"Gemm's B has shape {list(array.shape)}, not rank 2", w)
        attrs = node.attributes
        alpha, beta = attrs.get_float("alpha", 1.0), attrs.get_float("beta", 1.0)
        trans_a, trans_b = attrs.get_int("transA", 0), attrs.get_int("transB", 0)
        w_kn = (array.T if trans_b else array).astype(np.float64) * alpha
        bias = None
        if c is not None and beta != 0.0:
            bias = self._bias(result, c, "Gemm's C", w_kn.shape[1], 2)
            if bias is None:
                return result
            bias = bias * beta
        return self._plan_weight(context, result, node, a, w_kn, bias, axis=1, k=w_kn.shape[0], transpose_x=bool(trans_a))

    def rewrite(self, op, a, **_):
        return self._weight_island(op, a)


class Conv(Int8Rule):
    """Conv(X, W[, B]) with a constant W [M, C/group, k1, ..., kn]: any group, any number of spatial axes."""

    def pattern(self, op, x, w, b):
        if self.variant == "bias":
            return op.Conv(x, w, b, _allow_other_attributes=True)
        return op.Conv(x, w, _allow_other_attributes=True)

    def check(self, context, x, w, b=None, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        self._plan = None
        node = context.root
        array = self._weight(result, w, "the Conv weight")
        if array is None:
            return result
        if array.ndim < 3:
            return result.fail(f"the Conv weight has rank {array.ndim}; int8-conv takes [M, C/group, k1, ...] weights", w)
        unknown = sorted(set(node.attributes) - {*_CONV_ATTRIBUTES, "group"})
        if unknown:
            return result.fail(f"Conv has unsupported attributes {unknown}", node)
        channels, group = array.shape[0], node.attributes.get_int("group", 1)
        inputs = static_dim(x, 1)
        if group < 1 or channels % group or (inputs is not None and inputs != array.shape[1] * group):
            return result.fail(f"Conv has group={group} with a weight of shape {list(array.shape)} "
                               f"and {inputs if inputs is not None else 'unknown'} input channels: not a valid grouping", node)
        bias = None
        if b is not None:
            bias = self._bias(result, b, "the Conv bias", channels, 1)
            if bias is None:
                return result
        attributes = {name: node.attributes[name].value for name in _CONV_ATTRIBUTES if name in node.attributes}
        if group != 1:
            attributes["group"] = group
        k = int(np.prod(array.shape[1:]))  # one output reads C/group input channels: the reduction length per group
        return self._plan_weight(context, result, node, x, array, bias, axis=0, k=k, attributes=attributes)

    def rewrite(self, op, x, **_):
        return self._weight_island(op, x)
