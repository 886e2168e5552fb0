"""Rewrite float linear layers into I-ViT int8 islands: int8 operands, int32 accumulation.

Four rules (run in this order by the one driver, ``rewrite.apply_rules``; X may be N-D)::

    int8-matmul       MatMul(X, W) [-> Add(·, b) or Add(b, ·)]      W a float32 constant [K, N], b [N]
      ->  xq  = QuantizeLinear(X, s_x, int8 0)
          acc = MatMulInteger(xq, Wq)                               Wq int8 [K, N]
          acc = Add(acc, b_q)                                       b_q = round(b / (s_x·s_w)) int32 [N]
          Y   = DequantizeLinear(acc, s_x·s_w, int32 0, axis=-1)    float32 [N] scale

    int8-gemm         Gemm(A, B[, C]; alpha, beta, transA, transB)  B a float32 constant
      ->  the same island with W = alpha·(Bᵀ if transB else B) and b = beta·C; transA=1 is a
          Transpose of the int8 xq (integers only move); C must be a per-column [N] bias.

    int8-matmul-activations   MatMul(X, Y), both activations (attention's Q·Kᵀ and P·V)
      ->  DequantizeLinear(MatMulInteger(QuantizeLinear(X, s_x, int8 0),
                                         QuantizeLinear(Y, s_y, int8 0)), s_x·s_y, int32 0)
          (N-D batched; ``activation_matmuls=False`` leaves them float). An operand whose
          calibration values are never negative and that only activation MatMuls read (softmax
          probabilities) is uint8 0..255 with scale max/255 (``unsigned_activations=True``):
          twice the resolution, zero point 0. The other operand then goes in as uint8 with zero
          point 128 (the same int8 values, shifted): MatMulInteger takes uint8 × uint8, which ONNX
          Runtime computes exactly (its uint8 × int8 kernel on AVX2 without VNNI saturates int16
          pair sums: 255·127·2 > 32767).

    int8-conv         Conv(X, W[, B]) 2-D, group 1, W a float32 constant [M, C, kH, kW]
      ->  xq  = QuantizeLinear(X, s_x, int8 0)
          acc = ConvInteger(xq, Wq; the Conv's strides/pads/dilations/kernel_shape/auto_pad)
          acc = Add(acc, B_q)                                       B_q int32 [M, 1, 1]
          Y   = DequantizeLinear(acc, s_x·s_w, int32 0, axis=1)     float32 [M] scale

Scales (I-ViT's layout, ``reference/techniques.md`` §1.1):

- Weights: int8 symmetric in [-127, 127], **per output channel** (``per_channel=True``):
  ``s_w[n] = max|W[:, n]| / 127`` (a Conv's per output map ``m``); ``per_channel=False`` uses one
  ``max|W| / 127``. A channel's scale is raised, where needed, so that its bias fits in ±2^30
  (``b_q`` is then int32 and the accumulator keeps headroom); this only happens for (near-)zero
  weight columns with a bias. A channel whose weights and bias are all zero gets ``s_w = 1``
  (any scale is exact).
- Activations: int8 symmetric per tensor, zero point 0, ``s_x = range / 127``; ``range`` from
  calibration (``needs_calibration``): ``max|x|`` over the samples (``calibration="minmax"``) or
  the ``percentile``-th percentile of ``|x|`` (``"percentile"``). Every activation the rules may
  quantize is captured in **one** calibration run of the float model (so each scale sees the
  float upstream, not the quantized one). An activation read by several linears (Q/K/V
  projections) gets the same scale, but one QuantizeLinear per reader (a CSE pass could merge
  them).
- Bias: int32 at the accumulator's scale ``s_x·s_w`` (I-ViT's ``bias_integer``); Gemm's
  ``alpha`` is folded into the weights before they are quantized (its magnitude ends up in
  ``s_w``, its sign in ``Wq``), ``beta`` into the bias.
- Output: ``DequantizeLinear`` of the int32 accumulator with the float32 scale ``s_x·s_w``
  (per channel on the last axis for MatMul/Gemm, axis 1 for Conv; a scalar for activation
  MatMuls and ``per_channel=False``), zero point int32 0 of the scale's shape.

``smoothing=α`` (default 0, off: I-ViT has none) is SmoothQuant for the weight rules (MatMul,
Gemm without transA): per input channel k, ``t_k = max|x_k|^α / max_n|W[k, n]|^(1-α)``
(normalized to max 1), ``X/t`` is quantized per tensor and ``diag(t)·W`` per column, which
computes the same product. ``1/t`` is folded into the QuantizeLinear scale, which becomes the
1-D ``s·t`` on the last axis (still int8, zero 0, integers only in the island). It moves
activation outlier channels into the per-column weight scales. Measured on all-MiniLM-L6-v2 (32
calibration sentences, mean-pooled embeddings of 100 others, dynamo and legacy exports alike):
mean cosine 0.984 without smoothing (the GELU outputs have max|x| ~100x their RMS; per-tensor
int8 keeps 13-20 dB SQNR there), 0.9971 with α=0.8 (0.9956 at 0.7, 0.9967 at 0.9; 0.961 at
0.5, worse than none: the outlier rows then dominate the weight columns). The digits ViT keeps
its top-1 (0.9822) with or without. ``integer-chain`` lowers last-axis per-channel
QuantizeLinear targets too, so smoothed islands chain: the ``ivit`` pipeline with
``int8-linear(smoothing=0.8)`` gives MiniLM 0.992 (integer-only verified), with the default 0.978.

The island deliberately ends in that DequantizeLinear. In the ``ivit`` preset the
``integer-chain`` pass replaces every DequantizeLinear -> (float glue) -> QuantizeLinear path by
integer ops, the rescale being ``pkg.graphopt.DyadicRequant`` (``m · 2^-k``, per channel where
the DequantizeLinear scale is), so requantization is integer-only there; on its own this pass
keeps a float model whose linear layers compute in integers.

Integer ranges: ``|xq·wq| <= 128·127`` and ``|xq·yq| <= 128·128``: a static reduction length K
above 66,052 (weights with a bias, which may use ±2^30), 132,104 (weights, no bias) or 131,071
(two activations) could overflow the int32 accumulator and is declined. ONNX Runtime 1.32 runs
int8×int8 ``MatMulInteger`` (N-D batched, broadcasting) and ``ConvInteger``, and
``DequantizeLinear`` of int32 with a 1-D per-axis scale for axis=-1 and axis=1 (checked at
opsets 13, 18, 21 and 23, exact: ``float32(acc)·s[axis]``), so no Cast/Mul workaround is needed.

Declined, with the reason: an input that is not float32 (the scales and the output are float32);
a weight (MatMul's B, Gemm's B, Conv's W) that is not a constant or not float32, a MatMul weight
that is not rank 2, a Conv that is not 2-D or has group != 1; a bias / C that is not a constant
per-column vector; an activation without calibration statistics (not captured, or a zero or
non-finite range); a per-channel scale on an opset < 13 model (per-axis DequantizeLinear); an
operand of an activation MatMul that is a constant (fold it, or it is a weight the weight rule
declined); a matched node inside a function (initializers; inline first); a static K too large
for int32 accumulation; with smoothing, an input whose calibration values lack K channels on
the last axis. Canonicalized attention (``pkg.graphopt`` DotProductAttention, from the
``attention`` pass) holds its Q·Kᵀ and P·V inside the op, so ``int8-matmul-activations`` only
sees attention MatMuls of un-canonicalized graphs.

Why: I-ViT / I-BERT integer-only inference: int8 GEMMs with int32 accumulators are what integer
units (VNNI, DP4A, tensor cores, TVM's ``qnn`` kernels) run 2-4x faster than float; the scales
live only in the pass (compile time).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt.pass_base import RulePass
from graphopt.passes import _dyadic_op  # noqa: F401 — registers DyadicRequant, which `ivit` chaining uses
from graphopt.passes._canonical_utils import constant, default_opset, dequantized_constant, is_dequantized_constant
from graphopt.registry import register_pass

__all__ = ["Int8LinearOptions", "Int8LinearPass", "activation_scale", "quantize_weight"]

QMAX = 127  # int8 symmetric: weights in [-127, 127]; activations saturate to [-128, 127]
BIAS_LIMIT = 2**30  # |b_q| <= 2^30 leaves 2^30 of accumulator headroom
_ACC_LIMIT = 2**31 - 1
_WEIGHT_ELEMENTS = 1 << 31  # constants up to this size are read as weights
_PER_AXIS_OPSET = 13  # DequantizeLinear with a 1-D scale and `axis`
_MIN_OPSET = 10  # QuantizeLinear, MatMulInteger, ConvInteger
_CONV_ATTRIBUTES = ("auto_pad", "dilations", "kernel_shape", "pads", "strides")


@dataclasses.dataclass(frozen=True)
class Int8LinearOptions:
    per_channel: bool = True  # weight scale per output channel (I-ViT); False: one per tensor
    activation_matmuls: bool = True  # also MatMul(activation, activation): attention's Q·Kᵀ and P·V
    calibration: Literal["minmax", "percentile"] = "minmax"  # activation range: max|x| or a percentile of |x|
    percentile: float = 99.99  # with calibration="percentile"
    smoothing: float = 0.0  # SmoothQuant migration strength α for weight MatMul/Gemm inputs; 0 = off (I-ViT)
    unsigned_activations: bool = True  # uint8 (0..255) for never-negative operands of activation MatMuls (softmax P)

    def __post_init__(self) -> None:
        if self.calibration not in ("minmax", "percentile"):
            raise ValueError(f"calibration must be 'minmax' or 'percentile', got {self.calibration!r}")
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")
        if not 0.0 <= self.smoothing <= 1.0:
            raise ValueError(f"smoothing must be in [0, 1], got {self.smoothing}")


def activation_scale(arrays: list[np.ndarray], options: Int8LinearOptions, qmax: int = QMAX) -> tuple[float | None, str]:
    """(s_x, "") with s_x = range / qmax (127; 255 for uint8) from calibration arrays, or (None, why there is none)."""
    if not arrays:
        return None, "no calibration statistics"
    flat = np.abs(np.concatenate([np.asarray(a, np.float32).ravel() for a in arrays]))
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return None, "no finite calibration values"
    if options.calibration == "minmax":
        bound = float(flat.max())
    else:
        bound = float(np.percentile(flat.astype(np.float64), options.percentile))
    if not (math.isfinite(bound) and bound > 0.0):
        return None, f"calibrated range is {bound:g}"
    scale = float(np.float32(bound / qmax))
    if not scale > 0.0:  # a range below float32's smallest scale
        return None, f"calibrated range {bound:g} underflows a float32 scale"
    return scale, ""


def smoothing_factors(x_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's per-input-channel t = max|x|^α / max|w|^(1-α), normalized to max(t) = 1.

    Quantizing ``X / t`` per tensor and ``diag(t)·W`` per output column computes the same product;
    ``t`` moves activation outliers (BERT's GELU outputs, LayerNorm outlier channels) into the
    weights, which have per-column scales. t is floored at 2^-20 so the per-axis QuantizeLinear
    scale ``s·t`` stays a normal float32. A zero weight row gets t = 1 (its input channel is not
    needed, so X/t is kept small); an input channel that was always 0 in calibration gets the
    floor (its weight row shrinks out of the column scales; values it takes later saturate near 0).
    """
    x_max, w_max = np.asarray(x_max, np.float64), np.asarray(w_max, np.float64)
    ok = (x_max > 0) & (w_max > 0)
    t = np.ones_like(x_max)  # a zero weight row: X's channel is not needed, keep X/t small
    t[ok] = x_max[ok] ** alpha / w_max[ok] ** (1.0 - alpha)
    if ok.any():
        t[ok] /= t[ok].max()
    t[x_max <= 0] = 0.0  # a channel that is always 0: shrink its weight row instead
    return np.clip(t, 2.0**-20, 1.0)


def quantize_weight(
    w: np.ndarray, s_x: float, bias: np.ndarray | None, *, per_channel: bool, axis: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(Wq int8, b_q int32 or None, s_out float32) for weight ``w`` with output channels on ``axis``.

    ``s_out = float32(s_x · s_w)`` is the accumulator's scale ([channels], or a scalar when not
    ``per_channel``); ``b_q = round(b / s_out)``; ``Wq = clip(round(w / s_w), -127, 127)``.
    """
    w64 = np.asarray(w, np.float64)
    moved = np.moveaxis(w64, axis, 0).reshape(w64.shape[axis], -1)
    channels = moved.shape[0]
    if per_channel:
        s_w = np.abs(moved).max(axis=1) / QMAX if moved.size else np.zeros(channels)
    else:
        s_w = np.full(channels, np.abs(moved).max() / QMAX if moved.size else 0.0)
    if bias is not None:  # the bias must fit in ±2^30 at scale s_x·s_w: raise tiny scales
        need = np.abs(np.asarray(bias, np.float64)) / (s_x * BIAS_LIMIT)
        s_w = np.maximum(s_w, need if per_channel else np.full(channels, need.max(initial=0.0)))
    s_w = np.where(s_w > 0.0, s_w, 1.0)  # all-zero channels: any scale is exact
    shape = [1] * w64.ndim
    shape[axis] = channels
    wq = np.clip(np.rint(w64 / s_w.reshape(shape)), -QMAX, QMAX).astype(np.int8)
    s_out = (np.float64(np.float32(s_x)) * s_w).astype(np.float32)
    s_out = np.where(s_out > 0, s_out, np.float32(np.finfo(np.float32).tiny))
    b_q = None
    if bias is not None:
        b_q = np.clip(np.rint(np.asarray(bias, np.float64) / s_out.astype(np.float64)), -BIAS_LIMIT, BIAS_LIMIT)
        b_q = b_q.astype(np.int32)
    if not per_channel:
        s_out = s_out[:1].reshape(())
    return wq, b_q, s_out


def _is_constant(value: ir.Value | None) -> bool:
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


def _bias_vector(array: np.ndarray, channels: int, out_rank: int | None) -> np.ndarray | None:
    """``array`` as a per-channel [channels] vector when it broadcasts as one over the output; else None."""
    if array.size == 1 and array.ndim <= max(out_rank or 1, 1):
        return np.full(channels, float(array.ravel()[0]), np.float64)
    if array.ndim == 0 or array.shape[-1] != channels or any(d != 1 for d in array.shape[:-1]):
        return None
    if array.ndim > 1 and (out_rank is None or array.ndim > out_rank):
        return None  # [1, ..., N] would broadcast the output up to a higher rank
    return array.reshape(channels).astype(np.float64)


def _unique_name(graph: ir.Graph, base: str) -> str:
    name, i = base, 0
    while name in graph.initializers:
        i += 1
        name = f"{base}_{i}"
    return name


def _static_dim(value: ir.Value, index: int) -> int | None:
    if value.shape is None or len(value.shape) == 0:
        return None
    dim = value.shape[index]
    return dim if isinstance(dim, int) else None


@dataclasses.dataclass
class _Plan:
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


class _Int8Rule(pattern.RewriteRuleClassBase):
    """Shared checks and the island builder of the int8-linear rules."""

    def __init__(self, name: str, owner: Int8LinearPass, variant: str = "") -> None:
        super().__init__(name)
        self.owner, self.variant = owner, variant
        self._plan: _Plan | None = None

    # -- checks ---------------------------------------------------------------------------
    def _activation(self, result: pattern.MatchResult, x: ir.Value, what: str) -> float | None:
        if x.dtype != ir.DataType.FLOAT:
            result.fail(f"{what} is {_dtype_name(x)}, not float32 (the int8 island's scales and output are float32)", x)
            return None
        if _is_constant(x):
            result.fail(f"{what} is a constant, not an activation; fold it first", x)
            return None
        scale = self.owner.scales.get(x.name)
        if scale is None:
            why = self.owner.reasons.get(x.name, "not captured")
            result.fail(f"no calibration scale for {what} {x.name}: {why}", x)
            return None
        return scale

    def _weight(self, result: pattern.MatchResult, w: ir.Value, what: str) -> np.ndarray | None:
        if not _is_constant(w):
            hint = "" if self.owner.options.activation_matmuls else " (an activation MatMul; activation_matmuls=False)"
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
        if not _is_constant(b):
            result.fail(f"{what} is not a constant", b)
            return None
        array = constant(b, max_size=_WEIGHT_ELEMENTS)
        if array is None or b.dtype != ir.DataType.FLOAT:
            result.fail(f"{what} is not a float32 constant", b)
            return None
        vector = _bias_vector(array, channels, out_rank)
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
        if k is not None and k * per_product + bias > _ACC_LIMIT:
            result.fail(f"reduction length K={k}: int8 products may overflow the int32 accumulator")
            return False
        return True

    # -- the island ------------------------------------------------------------------------
    def _init(self, op, plan: _Plan, suffix: str, array: np.ndarray) -> ir.Value:
        name = _unique_name(plan.graph, f"{plan.base}_{suffix}")
        array = array if array.flags.c_contiguous else array.copy()  # (np.ascontiguousarray makes scalars 1-D)
        return op.initializer(ir.tensor(array, name=name), name=name)

    def _shared(self, op, plan: _Plan, name: str, array: np.ndarray) -> ir.Value:
        """A shared zero-point initializer (reused when an earlier rewrite made it)."""
        if name in plan.graph.initializers:
            return plan.graph.initializers[name]
        cache = self._cache
        if name not in cache:
            cache[name] = op.initializer(ir.tensor(array, name=name), name=name)
        return cache[name]

    def _quantize(self, op, plan: _Plan, x: ir.Value, scale, suffix: str) -> ir.Value:
        scale = np.asarray(scale, np.float32)
        if x.name in self.owner.unsigned:  # a never-negative operand of an activation MatMul
            zero = self._shared(op, plan, "graphopt_int8_linear_zero_uint8", np.array(0, np.uint8))
            return op.QuantizeLinear(x, self._init(op, plan, suffix, scale), zero)
        if scale.ndim == 0:
            zero = self._shared(op, plan, "graphopt_int8_linear_zero_int8", np.array(0, np.int8))
            return op.QuantizeLinear(x, self._init(op, plan, suffix, scale), zero)
        zero = self._shared(op, plan, f"graphopt_int8_linear_zero_int8_{scale.size}", np.zeros(scale.size, np.int8))
        return op.QuantizeLinear(x, self._init(op, plan, suffix, scale), zero, axis=-1)

    def _dequantize(self, op, plan: _Plan, acc: ir.Value, s_out: np.ndarray, axis: int) -> ir.Value:
        s_out = np.asarray(s_out, np.float32)
        if s_out.ndim == 0:
            zero = self._shared(op, plan, "graphopt_int8_linear_zero_int32", np.array(0, np.int32))
            return op.DequantizeLinear(acc, self._init(op, plan, "s_out", s_out), zero)
        zero = self._shared(op, plan, f"graphopt_int8_linear_zero_int32_{s_out.size}", np.zeros(s_out.size, np.int32))
        return op.DequantizeLinear(acc, self._init(op, plan, "s_out", s_out), zero, axis=axis)

    def _weight_island(self, op, x: ir.Value) -> ir.Value:
        plan = self._plan
        self._cache: dict[str, ir.Value] = {}
        xq = self._quantize(op, plan, x, plan.s_x, "s_x")
        if plan.transpose_x:
            xq = op.Transpose(xq, perm=[1, 0])
        wq = self._init(op, plan, "w_int8", plan.wq)
        if plan.attributes is not None:  # Conv
            acc = op.ConvInteger(xq, wq, **plan.attributes)
        else:
            acc = op.MatMulInteger(xq, wq)
        if plan.b_q is not None:
            b_q = plan.b_q.reshape(-1, 1, 1) if plan.attributes is not None else plan.b_q
            acc = op.Add(acc, self._init(op, plan, "bias_int32", b_q))
        return self._dequantize(op, plan, acc, plan.s_out, plan.axis)

    def _plan_weight(self, context, result, node: ir.Node, x: ir.Value, w_kn: np.ndarray, bias: np.ndarray | None,
                     *, axis: int, k: int, transpose_x: bool = False, attributes: dict | None = None) -> pattern.MatchResult:
        """Common tail of the weight rules: scales, accumulator range, the plan."""
        options = self.owner.options
        s_x = self._activation(result, x, "the input")
        if s_x is None:
            return result
        q_scale: float | np.ndarray = s_x
        smooth = options.smoothing > 0.0 and attributes is None and not transpose_x
        if smooth:  # SmoothQuant: X/t per tensor, diag(t)·W per column; t lives in the QuantizeLinear scale
            s_x, t, why = self.owner.smoothed(x.name, w_kn)
            if s_x is None:
                return result.fail(f"cannot smooth the input {x.name}: {why}", x)
            w_kn = w_kn * t[:, None]
            q_scale = (np.float64(np.float32(s_x)) * t).astype(np.float32)
        per_axis = smooth or (options.per_channel and w_kn.shape[axis] > 1)
        if not self._common(context, result, per_axis=per_axis):
            return result
        if not self._accumulation(result, k, 128 * QMAX, BIAS_LIMIT if bias is not None else 0):
            return result
        wq, b_q, s_out = quantize_weight(w_kn, s_x, bias, per_channel=options.per_channel, axis=axis)
        if s_out.ndim == 1 and s_out.size == 1:  # a single output channel: a scalar scale suffices
            s_out = s_out.reshape(())
        base = f"int8_linear_{node.name or x.name}"
        self._plan = _Plan(node.graph, base, q_scale, wq=wq, b_q=b_q, s_out=s_out, axis=1 if attributes is not None else -1,
                           transpose_x=transpose_x, attributes=attributes)
        return result


class _MatMulWeight(_Int8Rule):
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


class _Gemm(_Int8Rule):
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


class _Conv(_Int8Rule):
    """Conv(X, W[, B]) 2-D, group 1, constant W."""

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
        if array.ndim != 4:
            return result.fail(f"the Conv weight has rank {array.ndim}; int8-conv takes 2-D convolutions (rank 4)", w)
        group = node.attributes.get_int("group", 1)
        if group != 1:
            return result.fail(f"Conv has group={group}; only group=1 is supported", node)
        unknown = sorted(set(node.attributes) - {*_CONV_ATTRIBUTES, "group"})
        if unknown:
            return result.fail(f"Conv has unsupported attributes {unknown}", node)
        channels = array.shape[0]
        bias = None
        if b is not None:
            bias = self._bias(result, b, "the Conv bias", channels, 1)
            if bias is None:
                return result
        attributes = {name: node.attributes[name].value for name in _CONV_ATTRIBUTES if name in node.attributes}
        k = int(np.prod(array.shape[1:]))
        return self._plan_weight(context, result, node, x, array, bias, axis=0, k=k, attributes=attributes)

    def rewrite(self, op, x, **_):
        return self._weight_island(op, x)


class _MatMulActivations(_Int8Rule):
    """MatMul(X, Y) of two activations: both per-tensor int8, scalar output scale."""

    def pattern(self, op, x, y):
        return op.MatMul(x, y)

    def check(self, context, x, y, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        self._plan = None
        node = context.root
        if _is_constant(y) or _is_constant(x):
            which = "B" if _is_constant(y) else "A"
            return result.fail(f"MatMul's {which} is a constant: a weight, the int8-matmul rule's case", node)
        s_x = self._activation(result, x, "MatMul's A")
        if s_x is None:
            return result
        s_y = self._activation(result, y, "MatMul's B")
        if s_y is None:
            return result
        if not self._common(context, result, per_axis=False):
            return result
        k = _static_dim(x, -1)
        widest = max((255 if v.name in self.owner.unsigned else 128) for v in (x, y))
        if not self._accumulation(result, k, widest * 128, 0):
            return result
        s_out = np.array(np.float64(np.float32(s_x)) * np.float64(np.float32(s_y)), np.float32)
        self._plan = _Plan(node.graph, f"int8_linear_{node.name or x.name}", s_x, s_y=s_y, s_out=s_out)
        return result

    def rewrite(self, op, x, y, **_):
        plan = self._plan
        self._cache = {}
        unsigned = [v.name in self.owner.unsigned for v in (x, y)]
        if unsigned[0] != unsigned[1]:
            # ONNX Runtime's uint8 x int8 kernel on AVX2 without VNNI sums product pairs in saturating
            # int16 (vpmaddubsw): 255·127·2 > 32767, so its result would not be the exact product.
            # The signed operand goes in as uint8 with zero point 128 (the same int8 values, shifted):
            # uint8 x uint8 is exact there, in TVM and in the reference.
            zero = self._shared(op, plan, "graphopt_int8_linear_zero_uint8_128", np.array(128, np.uint8))

            def shifted(v, scale, suffix):
                return op.QuantizeLinear(v, self._init(op, plan, suffix, np.asarray(scale, np.float32)), zero)

            xq = self._quantize(op, plan, x, plan.s_x, "s_a") if unsigned[0] else shifted(x, plan.s_x, "s_a")
            yq = shifted(y, plan.s_y, "s_b") if unsigned[0] else self._quantize(op, plan, y, plan.s_y, "s_b")
            zeros = [None, zero] if unsigned[0] else [zero]
            return self._dequantize(op, plan, op.MatMulInteger(xq, yq, *zeros), plan.s_out, -1)
        xq = self._quantize(op, plan, x, plan.s_x, "s_a")
        yq = self._quantize(op, plan, y, plan.s_y, "s_b")
        return self._dequantize(op, plan, op.MatMulInteger(xq, yq), plan.s_out, -1)


@register_pass("int8-linear", options=Int8LinearOptions, category="rewrite")
class Int8LinearPass(RulePass):
    """MatMul/Gemm/Conv -> int8 x int8 -> int32 islands (I-ViT): per-channel weights, calibrated activations."""

    needs_calibration = True

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.scales: dict[str, float] = {}
        self.reasons: dict[str, str] = {}
        self.unsigned: set[str] = set()  # activations quantized to uint8
        self._captured: dict[str, list[np.ndarray]] = {}

    def smoothed(self, name: str, w_kn: np.ndarray) -> tuple[float | None, np.ndarray | None, str]:
        """(s, t, "") for SmoothQuant on activation ``name`` read by weight ``w_kn`` [K, N]; else why not."""
        k = w_kn.shape[0]
        arrays = self._captured.get(name) or []
        if not arrays or any(np.ndim(a) == 0 or np.shape(a)[-1] != k for a in arrays):
            return None, None, f"its calibration values do not have {k} channels on the last axis"
        rows = [np.asarray(a, np.float32).reshape(-1, k) for a in arrays]
        x_max = np.max([np.where(np.isfinite(r), np.abs(r), 0.0).max(0, initial=0.0) for r in rows], axis=0)
        t = smoothing_factors(x_max, np.abs(w_kn).max(1), self.options.smoothing)
        scale, why = activation_scale([r / t.astype(np.float32) for r in rows], self.options)
        return scale, t, why

    def rules(self):
        rules = [
            _MatMulWeight.rule("int8-matmul", owner=self, variant="right"),
            _MatMulWeight.rule("int8-matmul", owner=self, variant="left"),
            _MatMulWeight.rule("int8-matmul", owner=self, variant=""),
            _Gemm.rule("int8-gemm", owner=self, variant="bias"),
            _Gemm.rule("int8-gemm", owner=self, variant=""),
        ]
        if self.options.activation_matmuls:
            rules.append(_MatMulActivations.rule("int8-matmul-activations", owner=self))
        rules += [
            _Conv.rule("int8-conv", owner=self, variant="bias"),
            _Conv.rule("int8-conv", owner=self, variant=""),
        ]
        return rules

    @staticmethod
    def _read_only_by_activation_matmuls(model: ir.Model, names: list[str]) -> set[str]:
        """The activations whose every reader is a MatMul of two activations (uint8 candidates)."""
        values = {v.name: v for node in model.graph for v in node.outputs}
        values.update({v.name: v for v in model.graph.inputs})
        found = set()
        for name in names:
            uses = [u.node for u in values[name].uses()] if name in values else []
            if uses and all(n.op_type == "MatMul" and n.domain in ("", "ai.onnx")
                            and not any(_is_constant(i) for i in n.inputs) for n in uses):
                found.add(name)
        return found

    def _activations(self, model: ir.Model) -> list[str]:
        """Names of the float32 activations the rules may quantize (top-level graph)."""
        names = set()
        for node in model.graph:
            if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm", "Conv"):
                continue
            inputs = [v for v in node.inputs[:2] if v is not None]
            if len(inputs) < 2:
                continue
            a, b = inputs
            if node.op_type == "MatMul" and not _is_constant(b):
                candidates = [a, b] if self.options.activation_matmuls else []
            else:
                candidates = [a]
            names.update(v.name for v in candidates if v.name and v.dtype == ir.DataType.FLOAT and not _is_constant(v))
        return sorted(names)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.scales.clear()
        self.reasons.clear()
        self.unsigned.clear()
        names = self._activations(model)
        only_activation_matmuls = self._read_only_by_activation_matmuls(model, names)
        if names:
            from graphopt.calibrate import Calibrator  # noqa: PLC0415 — ORT only when there is work

            if not self.samples:
                raise ValueError(f"pass '{self.pass_name}' needs calibration samples and got none")
            captured = Calibrator(model, self.samples).capture(names)  # one run for every activation
            for name, arrays in captured.items():
                unsigned = (self.options.unsigned_activations and name in only_activation_matmuls
                            and all(np.nanmin(a) >= 0 for a in arrays if np.size(a)))
                scale, why = activation_scale(arrays, self.options, 255 if unsigned else QMAX)
                if unsigned and scale is not None:
                    self.unsigned.add(name)
                if scale is None:
                    self.reasons[name] = why
                else:
                    self.scales[name] = scale
            if self.options.smoothing > 0.0:
                self._captured = captured  # smoothing factors depend on the weight: computed per site
        try:
            return super().call(model)
        finally:
            self._captured = {}
