"""TEAL (Liu et al., ICLR 2025): threshold the input of every linear layer (calibrated, per layer and projection).

    MatMul(x, W)          W a constant 2-D weight (initializer, Constant, or int8 dequantized in the graph)
      ->  MatMul(pkg.graphopt.ActivationThreshold(x, t), W)
    Gemm(x, W, ...)   ->  Gemm(pkg.graphopt.ActivationThreshold(x, t), W, ...)

Each linear layer gets its own threshold node (q, k and v read the same x and get three, as in
TEAL, where each projection has its own threshold). ``t`` is the ``sparsity``-quantile of |x| over
the calibration samples (``_threshold_rules``; TEAL's ``F⁻¹(0.5 + s/2)`` of the signed value is the
same under its symmetry assumption, this needs none). The node carries its target. Run
``canonicalize`` first so attention's activation×activation products are not MatMuls with a
constant operand anyway. Thresholds are keyed by site (``"x -> linear node"``), one per projection.

``greedy=true``: TEAL's block-wise greedy allocation (``_teal_greedy``): per block (the linear
layers after one normalization), starting from 0, step by step the projection whose next step costs
the least output error on the calibration samples gets it, until the block's parameter-weighted
sparsity is ``sparsity``; each projection's node then carries its own target, and the model-wide
(parameter-weighted) target is ``sparsity``.

Declined, with the reason: the weight is not a constant 2-D matrix (attention's Q·Kᵀ and P·V, a
weight fed at run time); x is not float; x has no usable statistics; x is already thresholded
(``cats`` on a GELU MLP's fc2 input); the layer is the model's head (its output, or its output
plus a constant bias, is a graph output: TEAL keeps lm_head dense, ``head=true`` thresholds it too).

Why: a zero input channel of a linear layer is a weight row a decode-time GEMV need not load; TEAL
reaches 40-50% model-wide sparsity with little degradation and 1.53x / 1.8x single-batch decode
at 40% / 50% with its kernel. The dense graph is the portable meaning; the speed is in the kernel.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt import rewrite
from graphopt.calibrate import Scales
from graphopt.ops.threshold import SITE_KEY
from graphopt.passes._teal_greedy import greedy_sparsities
from graphopt.passes._threshold_rules import (
    LINEAR_OPS,
    CalibratedThresholdPass,
    Threshold,
    ThresholdOptions,
    float_value,
    insert_threshold,
    is_threshold,
    is_thresholded,
    linear_weight_shape,
    quantile_plan,
    same_node,
)
from graphopt.registry import register_pass

__all__ = ["TealOptions", "TealPass", "site"]

_OWN_THRESHOLD = "its input is already thresholded by this pass"


@dataclasses.dataclass(frozen=True)
class TealOptions(ThresholdOptions):
    head: bool = False  # also threshold the model's head (a linear layer whose output is a graph output)
    greedy: bool = False  # per-projection sparsities by TEAL's block-wise greedy search (``_teal_greedy``)


def _is_head(out: ir.Value) -> bool:
    """Whether ``out`` is a graph output, or its only consumer adds a constant bias and that is one
    (a residual Add into the output is not a head: its other operand is not a constant)."""
    if out.is_graph_output():
        return True
    consumers = out.consumers()
    if len(consumers) != 1 or consumers[0].op_type != "Add" or not consumers[0].outputs[0].is_graph_output():
        return False
    other = [v for v in consumers[0].inputs if v is not out]
    return len(other) == 1 and other[0] is not None and ir.convenience.get_const_tensor(other[0]) is not None


def site(x: ir.Value, out: ir.Value) -> str:
    """A projection's site, its thresholds' key: ``"x -> linear node"`` (the node's output name when it has none)."""
    return f"{x.name} -> {out.producer().name or out.name}"


class _LinearInputRule(pattern.RewriteRuleClassBase):
    """linear(x, W, ...) -> linear(ActivationThreshold(x, t), W, ...), linear MatMul or Gemm, W constant."""

    def __init__(self, name: str, thresholds: Scales[Threshold], options: TealOptions, linear: str) -> None:
        super().__init__(name)
        self.thresholds, self.options, self.linear = thresholds, options, linear

    def pattern(self, op, x):
        return getattr(op, self.linear)(x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, x, out, **_) -> pattern.MatchResult:
        result, node = pattern.MatchResult(), out.producer()
        if linear_weight_shape(node) is None:
            return result.fail(f"the weight of {self.linear} {node.name} is not a constant 2-D matrix", out)
        if is_thresholded(x):
            made_by = x.producer().metadata_props.get("pkg.graphopt.pass")
            return result.fail(f"its input is already thresholded by {made_by}" if made_by else _OWN_THRESHOLD, x)
        if not float_value(x):
            return result.fail(f"its input {x.name} is {x.dtype.name if x.dtype else 'of unknown type'}, not float", x)
        if not self.options.head and _is_head(out):
            return result.fail(f"{node.name} is the model's head (it makes a graph output): TEAL keeps it dense; "
                               "head=true thresholds it", out)
        if self.thresholds.get(site(x, out)) is None:
            return result.fail(self.thresholds.reason(site(x, out)), x)
        return result

    def rewrite(self, op, x, out, **_):
        sparse = insert_threshold(op, x, self.thresholds.get(site(x, out)), like=x, site=site(x, out))
        return same_node(op, out.producer(), sparse)


@register_pass("teal", options=TealOptions, category="rewrite")
class TealPass(CalibratedThresholdPass):
    """TEAL: threshold the input of every linear layer at its calibrated sparsity-quantile of |x| (greedy: per-projection sparsities)."""

    def _rules(self, thresholds: Scales[Threshold]) -> list:
        return [tuple(_LinearInputRule.rule(f"teal-{linear.lower()}", thresholds, self.options, linear) for linear in LINEAR_OPS)]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Calibrate every float linear-layer input into its threshold (``calibrated_thresholds``; with ``greedy``
        each at the sparsity ``_greedy`` allocates), run the rules, and leave out of the declines the layers
        this run thresholded (their new node matches again)."""
        nodes = {site(node.inputs[0], node.outputs[0]): node for node in model.graph
                 if linear_weight_shape(node) and float_value(node.inputs[0])}
        values = {key: node.inputs[0].dtype for key, node in nodes.items()}
        sparsity = self._greedy(model, nodes) if self.options.greedy and nodes else self.options.sparsity
        self.calibrate_thresholds(model, values, plan=quantile_plan(values, sparsity),
                                  sources={key: node.inputs[0].name for key, node in nodes.items()})
        result = super().call(model)
        self.declines = [d for d in self.declines if d.reason != _OWN_THRESHOLD]
        return result

    def _greedy(self, model: ir.Model, nodes: dict[str, ir.Node]) -> dict[str, float]:
        """TEAL's block-wise greedy allocation (``_teal_greedy``) over the sites the rules threshold;
        the others (declined) keep the target."""
        probe = model.clone()
        zero = Scales({key: Threshold(0.0, 0.0) for key in nodes})
        rewrite.apply_rules(probe, self._rules(zero), explain=False, skip=rewrite.skipped_sites(self.pass_name))
        thresholded = {n.metadata_props[SITE_KEY] for n in probe.graph if is_threshold(n)}
        calibration = self.calibrate(model, sorted({nodes[key].inputs[0].name for key in thresholded}))
        absolute = {key: np.abs(calibration.values(nodes[key].inputs[0].name)) for key in thresholded}
        sites = {key: nodes[key].inputs[0] for key in nodes if key in thresholded and absolute[key].size}
        weights = {key: int(np.prod(linear_weight_shape(nodes[key]))) for key in sites}
        found = greedy_sparsities(model.graph, probe, self.samples, sites, absolute, weights, self.options.sparsity)
        return {key: found.get(key, self.options.sparsity) for key in nodes}
