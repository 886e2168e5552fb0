"""Cleanups every pipeline needs: constant folding, dead code, identities, no-op Dropout/Cast.

    Identity(x) -> x;  Dropout(x) (inference) -> x;  Add(x, 0) / Mul(x, 1) -> x
    Shape/Gather/Concat chains on static shapes -> constants;  unused nodes/functions -> removed

Reuses onnxscript's optimizer (fold_constants + its default no-op rules + unused removal) and
onnx_ir's identity elimination. Constant tensors larger than ``fold_limit`` elements are not
materialized, so folding never duplicates weights.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import onnxscript.optimizer

from graphopt.pass_base import GraphoptPass
from graphopt.registry import register_pass

__all__ = ["Cleanup", "CleanupOptions"]


@dataclasses.dataclass(frozen=True)
class CleanupOptions:
    fold_limit: int = 65536  # largest constant (elements) folding may create
    iterations: int = 2


def _fingerprint(model: ir.Model) -> tuple:
    return tuple((n.op_type, n.domain, len(n.inputs)) for n in ir.traversal.RecursiveGraphIterator(model.graph))


@register_pass("cleanup", options=CleanupOptions, category="cleanup")
class Cleanup(GraphoptPass):
    """Fold constants, drop dead code, identities and inference no-ops (onnxscript optimizer)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = _fingerprint(model)
        # Optimize a copy (tensors are shared, so it is cheap): if onnxscript's optimizer fails
        # halfway on an unusual graph, the model stays as it was instead of half-rewritten.
        work = model.clone()
        try:
            onnxscript.optimizer.optimize(
                work,
                num_iterations=self.options.iterations,
                input_size_limit=self.options.fold_limit,
                output_size_limit=self.options.fold_limit,
                inline=True,
            )
            common_passes.IdentityEliminationPass()(work)
        except Exception as e:  # the optimizer raises whatever its evaluators raise
            self.notes.append(f"constant folding skipped: {str(e).strip().splitlines()[0][:200]}")
            work = model.clone()
        common_passes.RemoveUnusedNodesPass()(work)
        common_passes.RemoveUnusedFunctionsPass()(work)
        # Identity elimination can leave one value as two (sub)graph outputs: give each its own.
        common_passes.OutputFixPass()(work)
        model.graph = work.graph
        model.functions.clear()
        model.functions.update(work.functions)
        after = _fingerprint(model)
        removed = len(before) - len(after)
        if removed:
            self.rewrites["nodes-removed"] = removed
        return ir.passes.PassResult(model, modified=before != after)
