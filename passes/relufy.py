"""ReLU-fication (ProSparse; Mirzadeh et al. 2023, stage 1): every MLP's activation becomes ReLU or FATReLU.

    Mul(act(g), u)            gated MLP (SwiGLU, GeGLU)
      ->  Mul(Relu(g), u)                                              threshold = 0
      ->  Mul(pkg.graphopt.ActivationThreshold(Relu(g), t), u)         threshold = t > 0 (FATReLU)
    MatMul(act(h), W)         plain MLP (BERT/ViT); also Gemm, either behind a Reshape (GPT-2)
      ->  MatMul(Relu(h), W)  /  MatMul(pkg.graphopt.ActivationThreshold(Relu(h), t), W)

``act`` is the canonical SiLU (``pkg.graphopt.SigmoidLinearUnit``) or ``Gelu``, matched exactly as
``cats`` matches an MLP's gate (its rules, subclassed): run ``canonicalize`` first. FATReLU is
``x if x > t else 0``; on ``Relu``'s output (never negative) that is ``|x| > t``, the threshold op.
The node whose output carries the zeros (``Relu``, or the threshold after it) is stamped with
``SITE_KEY`` (the original activation output's name) and no ``TARGET_KEY``: relufy has no target
sparsity, its zeros are whatever the data makes. ``graphopt.sparsity`` measures them.

Declined, with the reason: a gated product that feeds no linear layer with a constant weight (a
Mul of a SiLU that is not an MLP's gate); a plain MLP whose second linear layer's weight is not a
constant (``cats``' checks).

Why: ReLU MLPs are naturally sparse (ProSparse: ~89% on LLaMA2-7B) and a sparse kernel skips W_up's
rows and W_down's columns where the activation is 0. It changes the function: the papers fine-tune
afterwards (continued training, progressive L1); post-training the model loses accuracy, which the
report's validation shows (docs/sparsity.md has measured numbers).
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt import registry
from graphopt.calibrate import Scales
from graphopt.ops.threshold import SITE_KEY
from graphopt.pass_base import RulePass
from graphopt.passes._threshold_rules import Threshold, insert_threshold
from graphopt.passes.cats import _GatedMlpRule, _GateRule, _PlainMlpRule, gate_rules
from graphopt.registry import register_pass

__all__ = ["RelufyOptions", "RelufyPass"]


@dataclasses.dataclass(frozen=True)
class RelufyOptions:
    """``threshold``: 0 gives ReLU, t > 0 FATReLU (``x if x > t else 0``; ProSparse uses 0.01)."""

    threshold: float = dataclasses.field(default=0.0, metadata={"range": (0.0, 1e6)})

    def __post_init__(self) -> None:
        registry.check_options(self)


class _ReluGate(_GateRule):
    """cats' gate rule, but the activation is replaced by (FAT)ReLU rather than thresholded: no statistics needed."""

    def __init__(self, name: str, threshold: float, op_type: str, domain: str, *args) -> None:
        super().__init__(name, Scales(), op_type, domain, *args)
        self.threshold = threshold

    def check_gate(self, gate: ir.Value) -> pattern.MatchResult:
        return pattern.MatchResult()

    def thresholded_gate(self, op, x: ir.Value, gate: ir.Value) -> ir.Value:
        relu = op.Relu(x)
        relu.type, relu.shape = gate.type, gate.shape
        if self.threshold > 0:  # FATReLU: no target (None), the site stamped by insert_threshold
            return insert_threshold(op, relu, Threshold(self.threshold, None), like=gate, site=gate.name)
        relu.producer().metadata_props[SITE_KEY] = gate.name
        return relu


class _ReluGatedMlpRule(_ReluGate, _GatedMlpRule):
    """Mul(act(g), u) whose product feeds a linear layer -> Mul((FAT)ReLU(g), u)."""


class _ReluPlainMlpRule(_ReluGate, _PlainMlpRule):
    """linear([Reshape](act(h)), W, ...) -> linear([Reshape]((FAT)ReLU(h)), W, ...)."""


def relufy_rules(threshold: float) -> list:
    return gate_rules("relufy", _ReluGatedMlpRule, _ReluPlainMlpRule, threshold)


@register_pass("relufy", options=RelufyOptions, category="rewrite")
class RelufyPass(RulePass):
    """ReLU-fication: each MLP's activation (SiLU/GELU) becomes ReLU, or FATReLU (x if x > t else 0) with threshold=t."""

    def rules(self):
        return relufy_rules(self.options.threshold)
