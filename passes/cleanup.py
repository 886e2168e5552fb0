"""Cleanups every pipeline needs: constant folding, dead code, identities, exact no-ops.

    Identity(x) -> x;  Dropout(x) (inference) -> x;  Add(x, 0) / Sub(x, 0) / Mul(x, 1) / Div(x, 1) -> x
    Sum(a, b) -> Add(a, b);  Sum(x) -> x   (so later patterns only meet Add)
    Cast(x, to=type of x) / Expand(x, shape of x) / Transpose(x, identity perm) -> x
    Transpose(Transpose(x)) -> Transpose(x);  Reshape(Reshape(x)) -> Reshape(x)
    Conv(Pad(x, spatial zeros)) -> Conv(x, pads += those zeros)   (``_conv_pad_rule.py``)
    Shape/Gather/Concat chains on static shapes -> constants;  unused nodes/functions -> removed

Constant folding is onnxscript's; the rewrite rules are a curated list. The arithmetic no-ops
match their constant *exactly*: onnxscript's own Add-0 rule accepts |c| < 1e-8 and would delete
LayerNorm's `Add(var, 1e-12)`. Constants larger than ``fold_limit`` elements are not created, so
folding never duplicates weights. Runs on a copy (tensors shared): if the optimizer fails on an
unusual graph, the model is left as it was and the report says why.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import onnxscript.optimizer
from onnxscript.rewriter import pattern
from onnxscript.rewriter.rules import common as onnxscript_rules

from graphopt import ops, rewrite
from graphopt.pass_base import GraphoptPass
from graphopt.passes._conv_pad_rule import pad_into_conv_rule
from graphopt.registry import register_pass

__all__ = ["CleanupPass", "CleanupOptions"]


@dataclasses.dataclass(frozen=True)
class CleanupOptions:
    fold_limit: int = 65536  # largest constant (elements) folding may create
    iterations: int = 2


def _exactly(value: float):
    return pattern.Constant(value, rel_tol=0.0, abs_tol=0.0)


def _identity(op, x, **_):
    return op.Identity(x)


# Exact no-ops with no order among them: one rule set, one traversal per iteration.
RULES = [rewrite.RuleSet([
    *pattern.RewriteRule(lambda op, x: op.Add(x, _exactly(0.0)), _identity, name="add-zero").commute(),  # x+0 -> x
    pattern.RewriteRule(lambda op, x: op.Sub(x, _exactly(0.0)), _identity, name="sub-zero"),  # x-0 -> x
    *pattern.RewriteRule(lambda op, x: op.Mul(x, _exactly(1.0)), _identity, name="mul-one").commute(),  # x*1 -> x
    pattern.RewriteRule(lambda op, x: op.Div(x, _exactly(1.0)), _identity, name="div-one"),  # x/1 -> x
    pattern.RewriteRule(lambda op, a, b: op.Sum(a, b), lambda op, a, b: op.Add(a, b), name="sum-of-two"),  # Sum(a,b) -> a+b
    pattern.RewriteRule(lambda op, x: op.Sum(x), _identity, name="sum-of-one"),  # Sum(x) -> x
    onnxscript_rules.dropout_inference_rule,
    onnxscript_rules.dropout_zero_rule,
    onnxscript_rules.no_op_cast_rule,
    onnxscript_rules.no_op_expand_rule,
    onnxscript_rules.no_op_transpose_rule,
    onnxscript_rules.transpose_transpose_rule,
    onnxscript_rules.reshape_reshape_rule,
    onnxscript_rules.unsqueeze_unsqueeze_rule,
    onnxscript_rules.materialize_reshape_shape_rule,
    pad_into_conv_rule,
])]


def _fingerprint(model: ir.Model) -> tuple:
    return tuple((n.op_type, n.domain, len(n.inputs)) for n in ir.traversal.RecursiveGraphIterator(model.graph))


def _inline_foreign_functions(model: ir.Model) -> None:
    """Inline model-local functions, except graphopt's own ops (they are canonical forms)."""
    kept = {k: f for k, f in model.functions.items() if f.domain == ops.DOMAIN}
    for key in kept:
        del model.functions[key]
    common_passes.InlinePass()(model)
    model.functions.update(kept)


def _initializer_shapes_from_data(model: ir.Model) -> None:
    """A folded constant keeps the symbolic shape the exporter wrote on the value it replaced; its data says the real one."""
    for value in model.graph.initializers.values():
        if value.const_value is not None:
            value.shape = ir.Shape(list(value.const_value.shape))


@register_pass("cleanup", options=CleanupOptions, category="cleanup")
class CleanupPass(GraphoptPass):
    """Fold constants, drop dead code, identities and exact no-ops (Add 0, Mul 1, inference Dropout)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = _fingerprint(model)
        work = model.clone()
        try:
            _inline_foreign_functions(work)
            for _ in range(self.options.iterations):
                folded = onnxscript.optimizer.fold_constants(
                    work, input_size_limit=self.options.fold_limit, output_size_limit=self.options.fold_limit
                ).modified
                outcome = rewrite.apply_rules(work, RULES, explain=False)
                self.rewrites.update(outcome.rewrites)
                common_passes.RemoveUnusedNodesPass()(work)
                if not folded and not outcome.total:
                    break
            for cleanup in (
                common_passes.IdentityEliminationPass(),
                common_passes.RemoveUnusedNodesPass(),
                common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
                common_passes.LiftSubgraphInitializersToMainGraphPass(),
                common_passes.DeduplicateInitializersPass(),
                common_passes.CommonSubexpressionEliminationPass(),
            ):
                cleanup(work)
            _initializer_shapes_from_data(work)
        except Exception as e:  # the folder raises whatever its evaluators raise
            self.notes.append(f"constant folding skipped: {str(e).strip().splitlines()[0][:200]}")
            self.rewrites.clear()
            work = model.clone()
        common_passes.RemoveUnusedNodesPass()(work)
        common_passes.RemoveUnusedFunctionsPass()(work)
        # Identity elimination can leave one value as two (sub)graph outputs: give each its own.
        common_passes.OutputFixPass()(work)
        model.graph = work.graph
        model.functions.clear()
        model.functions.update(work.functions)
        after = _fingerprint(model)
        if len(before) > len(after):
            self.rewrites["nodes-removed"] = len(before) - len(after)
        return ir.passes.PassResult(model, modified=before != after)
