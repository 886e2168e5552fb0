"""CATS (Lee et al., COLM 2024): threshold the gate activation of every MLP (calibrated, one t per layer).

    Mul(act(g), u)            gated MLP (SwiGLU: down(silu(gate(x)) * up(x)); GeGLU with a Gelu gate)
      ->  Mul(pkg.graphopt.ActivationThreshold(act(g), t), u)
    MatMul(act(h), W)         plain MLP (BERT/ViT: fc2(gelu(fc1(x)))); also Gemm(act(h), W, ...), and
      ->  MatMul(pkg.graphopt.ActivationThreshold(act(h), t), W)         either behind a Reshape (GPT-2)

``act`` is the canonical SiLU (``pkg.graphopt.SigmoidLinearUnit``, from the ``silu`` pass) or the
ONNX ``Gelu`` (from the ``gelu`` pass): run ``canonicalize`` first. ``t`` is per activation node
(per layer), the ``sparsity``-quantile of |act| over the calibration samples, so that a fraction
``sparsity`` of the gate's entries become 0 (``_threshold_rules``). The node carries its target.

Declined, with the reason: the activation has no statistics (not captured, or no finite value
over the samples); a gated product that feeds no linear layer with a constant weight (directly or
through a Reshape) (a
Mul of a SiLU that is not an MLP's gate); a plain MLP whose second linear layer's weight is not a
constant.

Why: where the gate is 0, a decode-time kernel skips the matching rows of W_up and columns of
W_down (CATS keeps W_gate dense): at 50% gate sparsity CATS stays within 1-2% of the base model
on downstream tasks. The dense graph is only the portable meaning; the speed is in a sparse kernel.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt import ops
from graphopt.calibrate import Scales
from graphopt.passes._threshold_rules import (
    LINEAR_OPS,
    CalibratedThresholdPass,
    Threshold,
    ThresholdOptions,
    float_value,
    insert_threshold,
    linear_weight_shape,
    readers,
    same_node,
)
from graphopt.registry import register_pass

__all__ = ["ACTIVATIONS", "CatsPass", "cats_rules", "gate_rules", "is_activation"]

# (op type, domain, rule tag): the canonical activations a gate can be
ACTIVATIONS = (("SigmoidLinearUnit", ops.DOMAIN, "silu"), ("Gelu", "", "gelu"))


class _GateRule(pattern.RewriteRuleClassBase):
    """Shared by both MLP forms: the activation's pattern, its checks and its rebuilt form."""

    def __init__(self, name: str, thresholds: Scales[Threshold], op_type: str, domain: str) -> None:
        super().__init__(name)
        self.thresholds, self.op_type, self.domain = thresholds, op_type, domain

    def activation(self, op, x):
        return getattr(op, self.op_type)(x, _domain=self.domain, _allow_other_attributes=True, _outputs=["gate"])

    def check_gate(self, gate: ir.Value) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if self.thresholds.get(gate.name) is None:
            return result.fail(self.thresholds.reason(gate.name), gate)
        return result

    def thresholded_gate(self, op, x: ir.Value, gate: ir.Value) -> ir.Value:
        """The activation rebuilt with its own attributes, then thresholded (the matched node is removed)."""
        rebuilt = same_node(op, gate.producer(), x)
        return insert_threshold(op, rebuilt, self.thresholds.get(gate.name), like=gate, site=gate.name)


class _GatedMlpRule(_GateRule):
    """Mul(act(g), u) whose product feeds a linear layer -> Mul(ActivationThreshold(act(g), t), u)."""

    def pattern(self, op, g, up):
        return op.Mul(self.activation(op, g), up, _outputs=["product"])

    def check(self, context, g, up, gate, product, **_) -> pattern.MatchResult:
        if not any(linear_weight_shape(reader) for reader in readers(product)):
            return pattern.MatchResult().fail(
                f"{product.name} = {self.op_type}(..) * {up.name} feeds no linear layer with a constant weight: not a gated MLP", product)
        return self.check_gate(gate)

    def rewrite(self, op, g, up, gate, **_):
        return op.Mul(self.thresholded_gate(op, g, gate), up)


class _PlainMlpRule(_GateRule):
    """linear([Reshape](act(h)), W, ...) -> linear([Reshape](ActivationThreshold(act(h), t)), W, ...),
    linear MatMul or Gemm; the Reshape (the exporters' 3-D -> 2-D before a Gemm) kept when there."""

    def __init__(self, name: str, thresholds: Scales[Threshold], op_type: str, domain: str, linear: str,
                 reshaped: bool) -> None:
        super().__init__(name, thresholds, op_type, domain)
        self.linear, self.reshaped = linear, reshaped

    def pattern(self, op, h):
        gate = self.activation(op, h)
        if self.reshaped:
            gate = op.Reshape(gate, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["flat"])
        return getattr(op, self.linear)(gate, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, h, gate, out, **_) -> pattern.MatchResult:
        if linear_weight_shape(out.producer()) is None:
            return pattern.MatchResult().fail(f"the weight of {self.linear} {out.producer().name} is not a 2-D constant", out)
        return self.check_gate(gate)

    def rewrite(self, op, h, gate, out, flat=None, **_):
        sparse = self.thresholded_gate(op, h, gate)
        if flat is not None:
            sparse = same_node(op, flat.producer(), sparse)
        return same_node(op, out.producer(), sparse)


def is_activation(node: ir.Node) -> bool:
    domain = "" if node.domain == "ai.onnx" else node.domain
    return any(node.op_type == op_type and domain == op_domain for op_type, op_domain, _ in ACTIVATIONS)


def gate_rules(prefix: str, gated: type[_GateRule], plain: type[_GateRule], argument) -> list:
    """Both MLP forms' rules for every activation (``argument``: what the rule classes take second:
    the thresholds, or relufy's threshold), as two rule sets; ``prefix``: the rule names' first word."""
    gated_rules = [rule for op_type, domain, tag in ACTIVATIONS
                   for rule in gated.rule(f"{prefix}-{tag}-gated-mlp", argument, op_type, domain).commute()]
    plain_rules = [plain.rule(f"{prefix}-{tag}-mlp-{linear.lower()}", argument, op_type, domain, linear, reshaped)
                   for linear in LINEAR_OPS for reshaped in (False, True) for op_type, domain, tag in ACTIVATIONS]
    return [tuple(gated_rules), tuple(plain_rules)]


def cats_rules(thresholds: Scales[Threshold], prefix: str = "cats") -> list:
    """The gate rules (``prefix``: their names' first word; ``chess`` runs them with per-channel thresholds)."""
    return gate_rules(prefix, _GatedMlpRule, _PlainMlpRule, thresholds)


@register_pass("cats", options=ThresholdOptions, category="rewrite")
class CatsPass(CalibratedThresholdPass):
    """CATS: threshold each MLP's gate activation (SiLU/GELU) at its calibrated sparsity-quantile of |x|."""

    def _rules(self, thresholds: Scales[Threshold]) -> list:
        return cats_rules(thresholds)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Calibrate every float activation output into its threshold (``calibrated_thresholds``), then run the rules."""
        self.calibrate_thresholds(model, {node.outputs[0].name: node.outputs[0].dtype for node in model.graph
                                          if is_activation(node) and float_value(node.outputs[0])})
        return super().call(model)
