"""Rewrite float linear layers into I-ViT int8 islands: int8 operands, int32 accumulation.

Four rules (run in this order by the one driver; X may be N-D)::

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
          (``activation_matmuls=False`` leaves them float; a never-negative operand only
          activation MatMuls read is uint8 with scale max/255, ``unsigned_activations=True``)

    int8-conv         Conv(X, W[, B]), W a float32 constant [M, C/group, k1, ..., kn]: any group
                      (depthwise included), 1-D, 2-D, 3-D, ...
      ->  the same island with ConvInteger (the Conv's attributes, group included), B_q int32
          [M, 1, ..., 1], DequantizeLinear(acc, s_x·s_w, int32 0, axis=1); W per output channel m
          An input whose calibrated range is lopsided (SiLU / ReLU outputs, ``asymmetric_conv_inputs``):
          xq = QuantizeLinear(X, s_x, uint8 z), s_x = (max - min)/255, z = round(-min/s_x);
          ConvInteger(xq, Wq + 128 as uint8, z, uint8 128) (the same integers after the zero points)

Weights are int8 symmetric per output channel (``per_channel``); activations int8 symmetric per
tensor from one calibration run of the float model (``CalibrationOptions``: max|x|, or a
percentile of |x|), a Conv input with a lopsided range uint8 with a zero point where that step is
at most 0.8 of int8's (``_int8_maths.affine_uint8``); the bias is int32 at the accumulator's scale.
``smoothing=α`` is SmoothQuant for the MatMul/Gemm weight rules (the ``ivit`` preset uses 0.8); Conv inputs stay per tensor. In ``ivit`` the ``integer-chain`` pass then
turns the DequantizeLinear -> float glue -> QuantizeLinear paths into integer requantization.
The scale layout, the SmoothQuant measurements, the int32 ranges and the ONNX Runtime kernel
notes are in ``docs/int8-linear.md``. The code: ``_int8_maths.py`` (scales, rounding, smoothing),
``_int8_weight_rules.py`` (the weight rules and the island builder), ``_int8_activation_rules.py``.

Declined, with the reason: an input that is not float32; a weight (MatMul's B, Gemm's B, Conv's
W) that is not a float32 constant, a MatMul weight that is not rank 2, a Conv weight without a
spatial axis or whose shape does not match its ``group``; a bias / C that is not a constant
per-column vector; an activation without a
calibration scale (not captured, or a zero or non-finite range); a per-channel scale on an
opset < 13 model; an operand of an activation MatMul that is a constant; a matched node inside
a function (initializers; inline first); a static K too large for int32 accumulation (a Conv's
K is C/group·k1···kn, what one output reads; a uint8 Conv input counts 255·127 per product); with
smoothing, an input whose calibration values lack K channels on the last axis. Canonicalized
attention (``pkg.graphopt`` DotProductAttention) holds its Q·Kᵀ and P·V inside the op, so
``int8-matmul-activations`` only sees attention MatMuls of un-canonicalized graphs.

Why: I-ViT / I-BERT integer-only inference: int8 GEMMs with int32 accumulators are what integer
units (VNNI, DP4A, tensor cores, TVM's ``qnn`` kernels) run 2-4x faster than float; the scales
live only in the pass (compile time).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from graphopt.calibrate import CalibrationOptions, Scales, bits_option
from graphopt.pass_base import RulePass
from graphopt.passes._int8_activation_rules import MatMulActivations
from graphopt.passes._int8_maths import QMAX, UQMAX, affine_uint8, quantize_weight, smoothing_factors
from graphopt.passes._int8_weight_rules import Calibrated, Conv, Gemm, MatMulWeight, is_constant
from graphopt.registry import register_pass

__all__ = ["Int8LinearOptions", "Int8LinearPass", "quantize_weight", "smoothing_factors"]


@dataclasses.dataclass(frozen=True)
class Int8LinearOptions(CalibrationOptions):
    # calibration, percentile: CalibrationOptions (activation range: max|x| or a percentile of |x|)
    input_bits: int = bits_option(8, choices=(8,))  # activations are int8 (uint8 for never-negative MatMul operands)
    per_channel: bool = True  # weight scale per output channel (I-ViT); False: one per tensor
    activation_matmuls: bool = True  # also MatMul(activation, activation): attention's Q·Kᵀ and P·V
    smoothing: float = dataclasses.field(default=0.0, metadata={"range": (0.0, 1.0)})  # SmoothQuant α for weight MatMul/Gemm inputs; 0 = off (I-ViT)
    unsigned_activations: bool = True  # uint8 (0..255) for never-negative operands of activation MatMuls (softmax P)
    asymmetric_conv_inputs: bool = True  # uint8 with a zero point for a Conv input with a lopsided range (SiLU/ReLU outputs)


@register_pass("int8-linear", options=Int8LinearOptions, category="rewrite")
class Int8LinearPass(RulePass):
    """MatMul/Gemm/Conv -> int8 x int8 -> int32 islands (I-ViT): per-channel weights, calibrated activations."""

    needs_calibration = True

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self._calibrated = Calibrated()

    def rules(self):
        calibrated, options = self._calibrated, self.options
        rules = [
            MatMulWeight.rule("int8-matmul", calibrated, options, variant="right"),
            MatMulWeight.rule("int8-matmul", calibrated, options, variant="left"),
            MatMulWeight.rule("int8-matmul", calibrated, options, variant=""),
            Gemm.rule("int8-gemm", calibrated, options, variant="bias"),
            Gemm.rule("int8-gemm", calibrated, options, variant=""),
        ]
        if options.activation_matmuls:
            rules.append(MatMulActivations.rule("int8-matmul-activations", calibrated, options))
        rules += [
            Conv.rule("int8-conv", calibrated, options, variant="bias"),
            Conv.rule("int8-conv", calibrated, options, variant=""),
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
                            and not any(is_constant(i) for i in n.inputs) for n in uses):
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
            if node.op_type == "MatMul" and not is_constant(b):
                candidates = [a, b] if self.options.activation_matmuls else []
            else:
                candidates = [a]
            names.update(v.name for v in candidates if v.name and v.dtype == ir.DataType.FLOAT and not is_constant(v))
        return sorted(names)

    def _affine_conv_inputs(self, model: ir.Model, calibration, scales: Scales[float]) -> dict[str, tuple[float, int]]:
        """uint8 (scale, zero point) of each Conv input whose calibrated range is lopsided enough to gain
        (``affine_uint8``); the others stay int8 symmetric."""
        if not self.options.asymmetric_conv_inputs:
            return {}
        names = {node.inputs[0].name for node in model.graph if node.op_type == "Conv" and node.domain in ("", "ai.onnx")
                 and node.inputs and node.inputs[0] is not None and scales.get(node.inputs[0].name) is not None}
        found = {name: affine_uint8(calibration.values(name), self.options, scales.get(name)) for name in sorted(names)}
        return {name: plan for name, plan in found.items() if plan is not None}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Calibrate every activation the rules may quantize (one run), then build and run the rules."""
        names = self._activations(model)
        self._calibrated = Calibrated()
        if names:
            only_activation_matmuls = self._read_only_by_activation_matmuls(model, names)
            calibration = self.calibrate(model, names)
            candidates = {name for name in names if self.options.unsigned_activations and name in only_activation_matmuls
                          and all(np.nanmin(a) >= 0 for a in calibration.arrays.get(name, ()) if np.size(a))}
            scales: Scales[float] = calibration.symmetric_scales(
                names, self.options, qmax=lambda name: UQMAX if name in candidates else QMAX)
            self._calibrated = Calibrated(scales, frozenset(candidates & set(scales.found)),
                                          calibration if self.options.smoothing > 0.0 else None,
                                          self._affine_conv_inputs(model, calibration, scales))
        try:
            return super().call(model)
        finally:
            self._calibrated = Calibrated()  # the captured values are not kept past the run
