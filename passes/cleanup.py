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
        onnxscript.optimizer.optimize(
            model,
            num_iterations=self.options.iterations,
            input_size_limit=self.options.fold_limit,
            output_size_limit=self.options.fold_limit,
            inline=True,
        )
        common_passes.IdentityEliminationPass()(model)
        common_passes.RemoveUnusedNodesPass()(model)
        common_passes.RemoveUnusedFunctionsPass()(model)
        after = _fingerprint(model)
        removed = len(before) - len(after)
        if removed:
            self.rewrites["nodes-removed"] = removed
        return ir.passes.PassResult(model, modified=before != after)
