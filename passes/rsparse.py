"""R-Sparse (Zhang et al., ICLR 2025): sparse input channels plus a rank-r SVD path for the rest.

    MatMul(x, W)          W a constant 2-D weight [in, out]
      ->  Add(MatMul(xs, W), MatMul(MatMul(Sub(x, xs), A), B))
          xs = pkg.graphopt.ActivationThreshold(x, t / c)                 c_j = ‖W[j, :]‖₂, per channel
    Gemm(x, W, ...)   ->  the same around Gemm(xs, W, ...) (transA = 0; W_eff = alpha · (Wᵀ if transB else W))

R-Sparse's mask ``m_j = 1[|x_j · c_j| > t]``, c_j the norm of the weights input channel j meets
(``‖W[:, j]‖`` of torch's out×in weight), is the threshold op with one threshold per channel of
x's last axis, ``t / c_j``. ``A B`` is the rank-r truncated SVD of W_eff (SVD in float64, A = U_r S_r,
B = V_rᵀ, stored in W's type). Budget for target sparsity s and split ``alpha`` (R-Sparse's α):
the sparse path keeps ``in·(1-s)·alpha`` channels, so t is the ``1-(1-s)·alpha``-quantile of
|x·c| over the calibration samples (each node's stamped target), and the rank is
``r = floor((in·out·(1-s) - kept·out) / (in+out))``: sparse and low-rank paths together cost the
dense layer's ``(1-s)`` share of multiply-adds. r = 0 leaves out the low-rank path (``alpha = 1``).
Every linear layer, as ``teal`` (its rule, subclassed; the head stays dense unless ``head=true``);
one (alpha, s) for all layers (R-Sparse searches them per layer, evolutionarily: not done here).
Calibrated twice, like ``teal`` (``_threshold_rules.calibrated_thresholds``).

Declined, with the reason: what ``teal`` declines; a weight whose values the graph computes (int8
dequantized in the graph: no SVD of it here); a Gemm with ``transA = 1``.

Why: the channels a threshold drops still contribute through the low-rank path, so at the same
compute R-Sparse loses less than thresholding alone (50% model-level sparsity comparable to the
dense model on Llama-2/3 and Mistral; 43% end-to-end efficiency with its kernels). The low-rank
path's MatMuls carry ``pkg.graphopt.rsparse.low_rank`` in their metadata.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt.calibrate import Calibration, Scales
from graphopt.passes._canonical_utils import is_dequantized_constant
from graphopt.passes._threshold_rules import (
    LINEAR_OPS,
    CalibratedThresholdPass,
    Plan,
    Threshold,
    ThresholdOptions,
    float_value,
    insert_threshold,
    linear_weight_shape,
    same_node,
)
from graphopt.passes.teal import _OWN_THRESHOLD, _LinearInputRule, site
from graphopt.registry import register_pass

__all__ = ["RsparseOptions", "RsparsePass", "budget", "effective_weight", "low_rank"]

_OWN_PATH = "a linear layer of this pass's own low-rank path"
_LOW_RANK_KEY = "pkg.graphopt.rsparse.low_rank"  # node metadata on the low-rank path's MatMuls


@dataclasses.dataclass(frozen=True)
class RsparseOptions(ThresholdOptions):
    """``alpha``: the share of the (1 - sparsity) budget spent on sparse channels; the rest is the rank-r path.
    ``head``: as ``teal``'s (also the model's head)."""

    head: bool = False
    alpha: float = dataclasses.field(default=0.8, metadata={"range": (0.01, 1.0)})


def effective_weight(node: ir.Node) -> np.ndarray | None:
    """W_eff [in, out] with ``x @ W_eff`` the layer's product (Gemm: alpha, transB), None when W's values are not constants."""
    tensor = ir.convenience.get_const_tensor(node.inputs[1])
    if tensor is None:
        return None
    weight = tensor.numpy().astype(np.float64)
    if node.op_type == "Gemm":
        weight = weight.T if node.attributes.get_int("transB", 0) else weight
        weight = weight * node.attributes.get_float("alpha", 1.0)
    return weight


def budget(n_in: int, n_out: int, sparsity: float, alpha: float) -> tuple[float, int]:
    """(fraction of channels the threshold drops, rank r) for an in×out layer."""
    kept = n_in * (1 - sparsity) * alpha
    rank = math.floor((n_in * n_out * (1 - sparsity) - kept * n_out) / (n_in + n_out) + 1e-9)
    return 1 - (1 - sparsity) * alpha, max(0, min(rank, n_in, n_out))


def low_rank(weight: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(A [in, r], B [r, out]) with A·B the rank-r truncated SVD of ``weight``."""
    u, s, vt = np.linalg.svd(weight, full_matrices=False)
    return u[:, :rank] * s[:rank], vt[:rank]


@dataclasses.dataclass(frozen=True)
class _Layer:
    norms: np.ndarray  # c_j
    drop: float  # the fraction of channels the threshold drops (the node's target)
    factors: tuple[np.ndarray, np.ndarray] | None  # (A, B), None when r = 0


class _RsparseRule(_LinearInputRule):
    """teal's rule, with the per-channel threshold t/c and the low-rank path for what it drops."""

    def __init__(self, name: str, thresholds: Scales[Threshold], options: RsparseOptions, linear: str,
                 layers: Mapping[str, _Layer]) -> None:
        super().__init__(name, thresholds, options, linear)
        self.layers = layers

    def check(self, context, x, out, **kwargs) -> pattern.MatchResult:
        node = out.producer()
        if _LOW_RANK_KEY in node.metadata_props:
            return pattern.MatchResult().fail(_OWN_PATH, out)
        if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
            return pattern.MatchResult().fail(f"Gemm {node.name} has transA = 1", out)
        if is_dequantized_constant(node.inputs[1]):
            return pattern.MatchResult().fail(f"the weight of {node.name} is computed in the graph (int8 dequantized): "
                                              "rsparse needs its values for the SVD", out)
        return super().check(context, x, out, **kwargs)

    def rewrite(self, op, x, out, **_):
        key, node = site(x, out), out.producer()
        sparse = insert_threshold(op, x, self.thresholds.get(key), like=x, site=key)
        dense = same_node(op, node, sparse)
        factors = self.layers[key].factors
        if factors is None:
            return dense
        dtype = node.inputs[1].dtype.numpy()
        a, b = (op.Constant(value=ir.tensor(f.astype(dtype))) for f in factors)
        inner = op.MatMul(op.Sub(x, sparse), a)
        low = op.MatMul(inner, b)
        for value in (inner, low):  # the low-rank path's own linear layers: not matched again
            value.producer().metadata_props[_LOW_RANK_KEY] = "1"
        return op.Add(dense, low)


def _rsparse_plan(dtypes: Mapping[str, ir.DataType], layers: Mapping[str, _Layer]) -> Plan:
    """Key k's per-channel thresholds t/c_j, t the layer's drop-quantile of |x·c| over the samples."""
    def plan(calibration: Calibration, reaching: Mapping[str, str]) -> Scales[Threshold]:
        found, reasons = {}, {}
        for key, name in reaching.items():
            layer = layers[key]
            rows = [np.asarray(a, np.float64).reshape(-1, layer.norms.size) for a in calibration.arrays.get(name) or []]
            scaled = np.abs(np.concatenate(rows) * layer.norms) if rows else np.zeros(0)
            scaled = scaled[np.isfinite(scaled)]
            if not scaled.size:
                reasons[key] = f"no calibration statistics for {name}"
                continue
            t = float(np.quantile(scaled, layer.drop)) if layer.drop > 0 else 0.0
            with np.errstate(divide="ignore"):
                per_channel = np.where(layer.norms > 0, t / np.maximum(layer.norms, 1e-300), np.inf)
            found[key] = Threshold(tuple(float(v) for v in per_channel.astype(dtypes[key].numpy())), layer.drop)
        return Scales(found, reasons)
    return plan


@register_pass("rsparse", options=RsparseOptions, category="rewrite")
class RsparsePass(CalibratedThresholdPass):
    """R-Sparse: threshold each linear input at t / ‖W's input-channel row‖, add a rank-r SVD path for the dropped rest."""

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self._layers: dict[str, _Layer] = {}

    def _rules(self, thresholds: Scales[Threshold]) -> list:
        return [tuple(_RsparseRule.rule(f"rsparse-{linear.lower()}", thresholds, self.options, linear, self._layers)
                      for linear in LINEAR_OPS)]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Each linear layer's norms, budget and SVD (``_layer``), its calibrated thresholds, then the rules."""
        nodes = {site(n.inputs[0], n.outputs[0]): n for n in model.graph
                 if linear_weight_shape(n) and float_value(n.inputs[0])}
        self._layers = {key: layer for key, node in nodes.items() if (layer := self._layer(node)) is not None}
        values = {key: nodes[key].inputs[0].dtype for key in self._layers}
        self.calibrate_thresholds(model, values, plan=_rsparse_plan(values, self._layers),
                                  sources={key: nodes[key].inputs[0].name for key in values})
        result = super().call(model)
        self.declines = [d for d in self.declines if d.reason not in (_OWN_THRESHOLD, _OWN_PATH)]
        return result

    def _layer(self, node: ir.Node) -> _Layer | None:
        weight = effective_weight(node)
        if weight is None:
            return None
        drop, rank = budget(*weight.shape, self.options.sparsity, self.options.alpha)
        return _Layer(np.linalg.norm(weight, axis=1), drop, low_rank(weight, rank) if rank else None)
