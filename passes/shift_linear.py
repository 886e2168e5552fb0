"""Shift-linear (DeepShift-Q / DenseShift): linear-layer weights as signed powers of two, stored packed.

    MatMul(x, W)                    W a constant float32 [K, N] (initializer, Constant, or int8 dequantized)
      ->  pkg.graphopt.ShiftMatMul<bits, zero_free>(x, P, S)
    Gemm(a, B[, C]; alpha, beta, transB)  B constant, transA = 0
      ->  ShiftMatMul(a, P, S) [-> Add(·, beta·C)]          W = alpha·(Bᵀ if transB else B)
    Conv(x, W[, B]; group, strides, pads, dilations)        W a constant float32 [M, C/group, k...], 1-D to 3-D
      ->  pkg.graphopt.ShiftConv<bits, zero_free, kernel_shape, group, strides, pads, dilations>(x, P, S, B or 0)

``W[k, n] ≈ S[n] · (±2^-e[k, n])``: per output column, ``S[n]`` starts at max|W[:, n]| and e is
DeepShift-Q's rounding, ``e = round(-log2(|w| / S))`` clamped to the code range; S is then refit by
least squares to the chosen codes and the codes re-rounded (kept only where the weight error drops),
so S is a float scale (``graphopt/ops/shift_matmul.py``), applied once per output. ``zero_free=false``
(DeepShift-PS's ternary set): exponents 0 .. 2^(bits-1)-2 and a zero code, a weight below half the
smallest power is 0; ``zero_free=true`` (DenseShift): exponents 0 .. 2^(bits-1)-1 and no zero, the
smallest weights clamp up to ±2^-(2^(bits-1)-1). P holds the codes packed (bits=5: six per int32
word, 6x fewer bytes than float32); the ONNX body decodes them, so ONNX Runtime runs the result.
A Conv weight is quantized as the matrix ``[K, M]``, ``K = C/group · prod(k)``, one column per
output channel (so S is per output channel; depthwise convs included) and packed the same way
(``graphopt/ops/shift_conv.py``).

Calibrated (one run of the model on the calibration samples): each layer's output SQNR in dB,
``10·log10(Σ y² / Σ (y - ŷ)²)`` of the product ``x·W`` against the shifted one on the layer's own
calibrated inputs (a Conv: its output on the first ``_CONV_SAMPLES`` calibrated items), is stamped
on the new node (``pkg.graphopt.shift.sqnr_db``) and summarised in the pass's notes. ``layers``:
fnmatch patterns (``|``-separated in a pipeline string) on the node's name, its output's name or its
weight's name, ``!pattern`` excludes; empty: every linear layer. ``min_sqnr``: a layer whose
calibrated SQNR is below it stays dense (ShiftAddViT's Mult/Shift mixture keeps the
accuracy-critical layers multiplications). ``latency=auto``: the other half of that choice: a
MatMul/Gemm layer is shifted only where ``ShiftMatMul`` measures faster than the dense layer on the
host's tvm-llvm at the layer's calibrated shape (``graphopt/shift_latency.py``, cached on disk per
target and shape); both times are stamped on the node (``pkg.graphopt.shift.dense_ms`` /
``shift_ms``; on the dense node too when it stays dense). Under ``latency=auto`` a Conv stays dense:
TVM runs ShiftConv as the same dense conv (its codes decoded at compile time), never faster.

Declined, with the reason: the weight is not a constant float32 rank-2 matrix (attention's
activation MatMuls, a weight fed at run time) or rank 3-5 conv weight, or has non-finite values; the
input is not float32; Gemm with transA=1; a non-constant C with beta != 1; a Conv with auto_pad
SAME_UPPER / SAME_LOWER or a bias that is not float32; the layer is not selected by ``layers``; its
calibrated SQNR is below ``min_sqnr`` or it has no calibration values; under ``latency=auto`` the
shift form is not faster; the model's opset is below 13 (the op's body; run opset-upgrade); the
node is inside a function (initializers; inline first).

Why: a shifted weight is 5.33 bits instead of 32 (the model file shrinks ~6x for these layers) and a
batch-1 GEMV, bound by the bytes of W it loads, streams 6x fewer; the product with ±2^-e needs no
multiplier (a shift on integer activations, an exponent add on float ones). The TVM kernel
(``backends/tvm/kernels/shift_matmul.py``) decodes with integer shifts and builds each weight float
from its bits; measurements in ``docs/shift-add.md``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt import ops
from graphopt.calibrate import Scales
from graphopt.ops.shift_conv import OP_NAME as CONV_OP_NAME
from graphopt.ops.shift_conv import conv_reference, weight_matrix
from graphopt.ops.shift_matmul import OP_NAME, SQNR_KEY, codes_per_word, decode, encode, max_exponent, pack
from graphopt.pass_base import RulePass
from graphopt.passes._canonical_utils import constant, dequantized_constant, unique_initializer_name
from graphopt.registry import register_pass
from graphopt.shift_latency import DENSE_MS_KEY, SHIFT_MS_KEY

__all__ = ["DENSE_MS_KEY", "SHIFT_MS_KEY", "Shifted", "ShiftLinearOptions", "ShiftLinearPass", "quantize_shift", "sqnr_db"]

_MIN_OPSET = 13
_WEIGHT_ELEMENTS = 1 << 31
_SAMPLE_ROWS = 4096  # calibration rows per layer the SQNR is measured on (evenly spaced)
_REFITS = 2  # least-squares scale refits
_CONV_SAMPLES = 2  # calibrated batch items a Conv's SQNR is measured on (numpy convolutions are slow)
_LATENCY_THREADS = 2  # the tvm-llvm build's default thread count


@dataclasses.dataclass(frozen=True)
class ShiftLinearOptions:
    bits: int = dataclasses.field(default=5, metadata={"range": (2, 7)})  # code width: 1 sign bit + exponent bits
    zero_free: bool = False  # DenseShift's zero-free set; False: DeepShift-PS's ternary set (a zero code)
    layers: tuple[str, ...] = ()  # fnmatch patterns on node / output / weight names ("!p" excludes); empty: all
    min_sqnr: float = dataclasses.field(default=0.0, metadata={"range": (0.0, 200.0)})  # dB; layers below stay dense
    latency: str = dataclasses.field(default="off", metadata={"choices": ("off", "auto")})  # auto: shift only where faster


@dataclasses.dataclass(frozen=True)
class Shifted:
    """One layer's plan: the packed codes, the per-column scale, the calibrated SQNR (None: not measured)."""

    packed: np.ndarray
    scale: np.ndarray
    sqnr_db: float | None
    times: tuple[float, float] | None = None  # (dense ms, shift ms) measured under latency=auto


def _codes(w: np.ndarray, s: np.ndarray, bits: int, zero_free: bool) -> np.ndarray:
    """DeepShift-Q rounding of ``w [K, N]`` against column scales ``s``: codes ``sign << (bits-1) | e``."""
    codes = encode(w / np.where(s > 0, s, 1.0), bits, zero_free)
    if zero_free:
        return codes
    return np.where(s <= 0, max_exponent(bits), codes)  # a zero column: the zero code


def _least_squares_scale(w: np.ndarray, d: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Per column, the s minimising ``|d·s - w|²`` (``fallback`` where that is not positive)."""
    power = np.square(d).sum(axis=0)
    s = (d * w).sum(axis=0) / np.where(power > 0, power, 1.0)
    return np.where((power > 0) & (s > 0), s, fallback)


def quantize_shift(w: np.ndarray, bits: int = 5, zero_free: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``w [K, N]`` -> (codes [K, N], float32 scale [N]) with ``w ≈ decode(codes) · scale``."""
    w = np.asarray(w, np.float64)
    zf = int(zero_free)
    s = np.abs(w).max(axis=0) if w.size else np.zeros(w.shape[1])
    codes = _codes(w, s, bits, zero_free)
    s = _least_squares_scale(w, decode(codes, bits, zf).astype(np.float64), s)
    err = np.square(decode(codes, bits, zf) * s - w).sum(axis=0)
    for _ in range(_REFITS):  # re-round against the fitted scale, refit; keep a column's codes where it helped
        c = _codes(w, s, bits, zero_free)
        d = decode(c, bits, zf).astype(np.float64)
        s_new = _least_squares_scale(w, d, s)
        e_new = np.square(d * s_new - w).sum(axis=0)
        better = e_new < err
        codes, s, err = np.where(better[None, :], c, codes), np.where(better, s_new, s), np.where(better, e_new, err)
    return codes, s.astype(np.float32)


def sqnr_db(reference: np.ndarray, approximation: np.ndarray) -> float:
    """``10·log10(Σ ref² / Σ (ref - approx)²)`` (inf when equal)."""
    noise = float(np.square(np.asarray(reference, np.float64) - approximation).sum())
    signal = float(np.square(np.asarray(reference, np.float64)).sum())
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def _weight(w: ir.Value | None) -> np.ndarray | None:
    if w is None or w.is_graph_input() or w.dtype != ir.DataType.FLOAT:
        return None
    array = constant(w, max_size=_WEIGHT_ELEMENTS)
    if array is None:
        array = dequantized_constant(w, _WEIGHT_ELEMENTS)
    return array if array is not None and array.ndim == 2 else None


def _linear_weight(node: ir.Node) -> np.ndarray | None:
    """The [K, N] float weight of a MatMul/Gemm with a constant one (Gemm: alpha·Bᵀ or alpha·B), else None."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm") or len(node.inputs) < 2:
        return None
    w = _weight(node.inputs[1])
    if w is None or node.op_type == "MatMul":
        return w
    attrs = node.attributes
    if attrs.get_int("transA", 0):
        return None
    w = w.T if attrs.get_int("transB", 0) else w
    return (w.astype(np.float64) * attrs.get_float("alpha", 1.0)).astype(np.float32)


def _conv_weight(node: ir.Node) -> np.ndarray | None:
    """The float weight ``[M, C/group, k...]`` of a Conv with a constant one (1-D to 3-D), else None."""
    if node.domain not in ("", "ai.onnx") or node.op_type != "Conv" or len(node.inputs) < 2:
        return None
    w = node.inputs[1]
    if w is None or w.is_graph_input() or w.dtype != ir.DataType.FLOAT:
        return None
    array = constant(w, max_size=_WEIGHT_ELEMENTS)
    if array is None:
        array = dequantized_constant(w, _WEIGHT_ELEMENTS)
    return array if array is not None and 3 <= array.ndim <= 5 else None


def _layer_matrix(node: ir.Node) -> np.ndarray | None:
    """The ``[K, N]`` weight matrix a layer is quantized as (a Conv's: ``weight_matrix``), or None."""
    if node.op_type == "Conv":
        w = _conv_weight(node)
        return None if w is None else weight_matrix(w)
    return _linear_weight(node)


def _conv_attributes(node: ir.Node) -> dict:
    """Conv's group / strides / pads / dilations as the node has them (auto_pad VALID: no pads)."""
    attrs = {"group": node.attributes.get_int("group", 1)}
    for name in ("strides", "pads", "dilations"):
        if name in node.attributes:
            attrs[name] = list(node.attributes.get_ints(name))
    if node.attributes.get_string("auto_pad", "NOTSET") == "VALID":
        attrs.pop("pads", None)
    return attrs


def _same_padded(node: ir.Node) -> bool:
    return node.attributes.get_string("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER")


def _names(node: ir.Node) -> list[str]:
    return [n for n in (node.name, node.outputs[0].name, node.inputs[1].name if node.inputs[1] is not None else None) if n]


def selected(node: ir.Node, patterns: tuple[str, ...]) -> bool:
    """Whether ``layers`` selects the node: some include pattern (or none given) and no ``!`` pattern matches."""
    names = _names(node)
    include = [p for p in patterns if not p.startswith("!")]
    exclude = [p[1:] for p in patterns if p.startswith("!")]
    if any(fnmatch.fnmatchcase(n, p) for p in exclude for n in names):
        return False
    return not include or any(fnmatch.fnmatchcase(n, p) for p in include for n in names)


def _opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))


class _ShiftRule(pattern.RewriteRuleClassBase):
    """MatMul(x, W) or Gemm(a, B[, C]) with a planned layer -> ShiftMatMul (+ Add of beta·C)."""

    def __init__(self, name: str, plans: Scales[Shifted], options: ShiftLinearOptions, linear: str, bias: bool) -> None:
        super().__init__(name)
        self.plans, self.options, self.linear, self.bias = plans, options, linear, bias

    def pattern(self, op, x, w, c):
        if self.linear == "MatMul":
            return op.MatMul(x, w, _outputs=["out"])
        if self.bias:
            return op.Gemm(x, w, c, _allow_other_attributes=True, _outputs=["out"])
        return op.Gemm(x, w, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, x, w, out, c=None, **_) -> pattern.MatchResult:
        result, node = pattern.MatchResult(), out.producer()
        if x.dtype != ir.DataType.FLOAT:
            return result.fail(f"the input {x.name} is {x.dtype.name if x.dtype else 'of unknown type'}, not float32", x)
        if self.linear == "Gemm" and node.attributes.get_int("transA", 0):
            return result.fail("Gemm with transA=1 (a transposed input) is not taken", node)
        if _linear_weight(node) is None:
            return result.fail(f"the weight {w.name} of {node.op_type} {node.name} is not a constant float32 2-D matrix", w)
        if c is not None and node.attributes.get_float("beta", 1.0) != 1.0 and constant(c, _WEIGHT_ELEMENTS) is None:
            return result.fail("Gemm's C is not a constant and beta != 1", c)
        if isinstance(context.graph_or_function, ir.Function):
            return result.fail("the packed weights are initializers but the node is inside a function; inline first")
        if _opset(context.model) < _MIN_OPSET:
            return result.fail(f"ShiftMatMul's body needs opset >= {_MIN_OPSET}, model has {_opset(context.model)}; "
                               "run opset-upgrade")
        if not selected(node, self.options.layers):
            return result.fail(f"{node.name or out.name} is not selected by layers={'|'.join(self.options.layers)}", node)
        if self.plans.get(out.name) is None:
            return result.fail(self.plans.reason(out.name), node)
        return result

    def rewrite(self, op, x, out, c=None, **_):
        node, plan, graph = out.producer(), self.plans.get(out.name), out.graph
        base = f"shift_linear_{node.name or out.name}"

        def init(suffix: str, array: np.ndarray) -> ir.Value:
            name = unique_initializer_name(graph, f"{base}_{suffix}")
            return op.initializer(ir.tensor(array, name=name), name=name)

        y = getattr(op, OP_NAME)(x, init("codes", plan.packed), init("scale", plan.scale), bits=self.options.bits,
                                 zero_free=int(self.options.zero_free), _domain=ops.DOMAIN, _version=ops.OPSET_VERSION)
        _stamp(y.producer(), plan, node)
        if c is None:
            return y
        beta = node.attributes.get_float("beta", 1.0)
        if beta == 0.0:
            return y
        if beta != 1.0:
            c = init("bias", (constant(c, _WEIGHT_ELEMENTS).astype(np.float64) * beta).astype(np.float32))
        return op.Add(y, c)


def _stamp(node: ir.Node, plan: Shifted, replaced: ir.Node) -> None:
    """The layer's name (the report lists layers by it), its calibrated SQNR and its measured times."""
    if replaced.name:
        node.name = replaced.name
    if plan.sqnr_db is not None:
        node.metadata_props[SQNR_KEY] = f"{plan.sqnr_db:.2f}"
    if plan.times is not None:
        node.metadata_props[DENSE_MS_KEY], node.metadata_props[SHIFT_MS_KEY] = (f"{t:.4f}" for t in plan.times)


class _ShiftConvRule(pattern.RewriteRuleClassBase):
    """Conv(x, W[, B]) with a planned layer -> ShiftConv(x, P, S, B or zeros)."""

    def __init__(self, name: str, plans: Scales[Shifted], options: ShiftLinearOptions) -> None:
        super().__init__(name)
        self.plans, self.options = plans, options

    def pattern(self, op, x, w):
        return op.Conv(x, w, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, x, w, out, **_) -> pattern.MatchResult:
        result, node = pattern.MatchResult(), out.producer()
        if x.dtype != ir.DataType.FLOAT:
            return result.fail(f"the input {x.name} is {x.dtype.name if x.dtype else 'of unknown type'}, not float32", x)
        if _conv_weight(node) is None:
            return result.fail(f"the weight {w.name} of Conv {node.name} is not a constant float32 conv weight (rank 3-5)", w)
        if _same_padded(node):
            return result.fail(f"Conv {node.name} uses auto_pad={node.attributes.get_string('auto_pad')}; "
                               "run canonicalize (explicit pads)", node)
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if bias is not None and bias.dtype != ir.DataType.FLOAT:
            return result.fail(f"the bias {bias.name} of Conv {node.name} is not float32", bias)
        if isinstance(context.graph_or_function, ir.Function):
            return result.fail("the packed weights are initializers but the node is inside a function; inline first")
        if _opset(context.model) < _MIN_OPSET:
            return result.fail(f"ShiftConv's body needs opset >= {_MIN_OPSET}, model has {_opset(context.model)}; "
                               "run opset-upgrade")
        if not selected(node, self.options.layers):
            return result.fail(f"{node.name or out.name} is not selected by layers={'|'.join(self.options.layers)}", node)
        if self.plans.get(out.name) is None:
            return result.fail(self.plans.reason(out.name), node)
        return result

    def rewrite(self, op, x, out, **_):
        node, plan, graph = out.producer(), self.plans.get(out.name), out.graph
        base = f"shift_linear_{node.name or out.name}"

        def init(suffix: str, array: np.ndarray) -> ir.Value:
            name = unique_initializer_name(graph, f"{base}_{suffix}")
            return op.initializer(ir.tensor(array, name=name), name=name)

        bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] is not None else None
        if bias is None:
            bias = init("bias", np.zeros(plan.scale.shape, np.float32))
        kernel = list(_conv_weight(node).shape[2:])
        y = getattr(op, CONV_OP_NAME)(x, init("codes", plan.packed), init("scale", plan.scale), bias, bits=self.options.bits,
                                      zero_free=int(self.options.zero_free), kernel_shape=kernel, **_conv_attributes(node),
                                      _domain=ops.DOMAIN, _version=ops.OPSET_VERSION)
        _stamp(y.producer(), plan, node)
        return y


@register_pass("shift-linear", options=ShiftLinearOptions, category="rewrite")
class ShiftLinearPass(RulePass):
    """MatMul/Gemm weights -> signed powers of two (DeepShift-Q / DenseShift), packed; per-layer calibrated SQNR."""

    needs_calibration = True

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self._plans: Scales[Shifted] = Scales()

    def rules(self):
        plans, options = self._plans, self.options
        return [(_ShiftRule.rule("shift-gemm", plans, options, "Gemm", True),
                 _ShiftRule.rule("shift-gemm", plans, options, "Gemm", False),
                 _ShiftRule.rule("shift-matmul", plans, options, "MatMul", False),
                 _ShiftConvRule.rule("shift-conv", plans, options))]

    def _candidates(self, model: ir.Model) -> dict[str, tuple[ir.Node, np.ndarray]]:
        found = {}
        for node in model.graph:
            if node.op_type not in ("MatMul", "Gemm", "Conv") or not selected(node, self.options.layers):
                continue
            if node.op_type == "Conv" and _same_padded(node):
                continue
            weight = _layer_matrix(node)
            x = node.inputs[0]
            if weight is None or x is None or x.dtype != ir.DataType.FLOAT or not x.name or not np.isfinite(weight).all():
                continue
            found[node.outputs[0].name] = (node, weight)
        return found

    def _sqnr(self, node: ir.Node, weight: np.ndarray, codes: np.ndarray, scale: np.ndarray, arrays) -> float | None:
        """The layer's calibrated output SQNR (None without calibration values for its input)."""
        if not arrays:
            return None
        d = decode(codes, self.options.bits, int(self.options.zero_free))
        if node.op_type == "Conv":
            dense = _conv_weight(node)
            shifted = (d * scale).T.reshape(dense.shape)
            return sqnr_db(conv_reference(arrays[0][:_CONV_SAMPLES], dense, **_conv_attributes(node)),
                           conv_reference(arrays[0][:_CONV_SAMPLES], shifted, **_conv_attributes(node)))
        x = np.concatenate([np.asarray(a, np.float32).reshape(-1, weight.shape[0]) for a in arrays])
        x = x[np.linspace(0, len(x) - 1, min(len(x), _SAMPLE_ROWS)).astype(np.int64)] if len(x) > _SAMPLE_ROWS else x
        return sqnr_db(x.astype(np.float64) @ weight.astype(np.float64), (x @ d) * scale)

    def _latency(self, node: ir.Node, weight: np.ndarray, arrays) -> tuple[tuple[float, float] | None, str | None]:
        """(dense ms, shift ms) at the layer's calibrated shape and, when the shift form is not faster, why it stays dense."""
        name = node.name or node.outputs[0].name
        if node.op_type == "Conv":
            return None, (f"{name}: latency=auto keeps convolutions dense: TVM runs ShiftConv as the same dense conv "
                          "(codes decoded at compile time), never faster")
        if not arrays:
            return None, f"{name}: no calibration values for its input: its shape for latency=auto is unknown"
        from graphopt import shift_latency  # noqa: PLC0415  (TVM loads only when asked)

        k, n = weight.shape
        rows = max(1, int(np.asarray(arrays[0]).size) // k)
        times = shift_latency.layer_times(rows, k, n, self.options.bits, self.options.zero_free, _LATENCY_THREADS)
        measured = (times.dense_ms, times.shift_ms)
        node.metadata_props[DENSE_MS_KEY], node.metadata_props[SHIFT_MS_KEY] = (f"{v:.4f}" for v in measured)
        if times.shift_is_faster:
            return measured, None
        return measured, (f"{name}: shift form {times.shift_ms:.4f} ms is not faster than dense {times.dense_ms:.4f} ms "
                          f"at [{rows}, {k}] x [{k}, {n}] on tvm-llvm: kept dense")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Quantize every selected layer's weight, measure its SQNR on its calibrated inputs (one run) and, with
        latency=auto, both forms' latency at its shape; then run the rules with the plans."""
        candidates = self._candidates(model)
        options = self.options
        plans, reasons = {}, {}
        if candidates:
            calibration = self.calibrate(model, sorted({node.inputs[0].name for node, _ in candidates.values()}))
            for key, (node, weight) in candidates.items():
                codes, scale = quantize_shift(weight, options.bits, options.zero_free)
                arrays = list(calibration.arrays.get(node.inputs[0].name, ()))
                sqnr = self._sqnr(node, weight, codes, scale, arrays)
                if sqnr is None and options.min_sqnr > 0.0:
                    reasons[key] = f"no calibration values for the input of {node.name or key}: cannot check min_sqnr"
                    continue
                if sqnr is not None and sqnr < options.min_sqnr:
                    reasons[key] = (f"{node.name or key}: calibrated output SQNR {sqnr:.1f} dB is below "
                                    f"min_sqnr={options.min_sqnr:g}: kept dense")
                    continue
                times = None
                if options.latency == "auto":
                    times, slower = self._latency(node, weight, arrays)
                    if slower is not None:
                        reasons[key] = slower
                        continue
                plans[key] = Shifted(pack(codes, options.bits), scale, sqnr, times)
        self._plans = Scales(plans, reasons)
        try:
            result = super().call(model)
        finally:
            self._plans = Scales()
        shifted = [float(n.metadata_props[SQNR_KEY]) for n in model.graph
                   if n.op_type in (OP_NAME, CONV_OP_NAME) and n.domain == ops.DOMAIN and SQNR_KEY in n.metadata_props]
        if shifted:
            self.notes.append(f"{len(shifted)} layers shifted ({options.bits}-bit codes, {codes_per_word(options.bits)} per "
                              f"int32 word); calibrated output SQNR min {min(shifted):.1f} / median "
                              f"{float(np.median(shifted)):.1f} dB (per layer: node metadata {SQNR_KEY})")
        return result
