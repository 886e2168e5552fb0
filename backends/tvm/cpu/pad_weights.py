"""Pad constant matmul weights with a ragged output width to whole register tiles, once, at compile time.

    matmul(x, W[K, N])  ->  strided_slice(matmul(x, W'[K, N']), axis -1, [0, N))     N' = N rounded up

A language model's vocabulary projection has a width like GPT-2's 50,257: no vector width divides
it, so the matmul rule either pads the operands on every call (``pad_einsum``: a 154 MB copy of the
weight per decode step) or falls back to scalar tiles. Zero columns added here are computed and
never read: the slice keeps the first N, and it fuses into the matmul's epilogue. Exact.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant  # relax constants (GenericConst) derive from it
from tvm.target import Target

from .common import vector_lanes

__all__ = ["PadRaggedWeights", "padded_width"]

# Wide projections are padded to three vectors (the matmul rule's widest register tile), narrow ones
# to one, so little is computed for nothing either way.
WIDE = 16  # in vectors


def padded_width(n: int, lanes: int) -> int:
    """``n`` rounded up to whole tiles (unchanged when a vector already divides it, or n < a vector)."""
    if n <= lanes or n % lanes == 0:
        return n
    multiple = 3 * lanes if n >= WIDE * lanes else lanes
    return -(-n // multiple) * multiple


@relax.expr_functor.mutator
class _Padder(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, target: Target):
        super().__init__(mod)
        self.target = target
        self.matmul = tvm.ir.Op.get("relax.matmul")

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if call.op != self.matmul or not isinstance(call.args[1], Constant):
            return call
        weight = call.args[1].value.numpy()
        if weight.ndim != 2 or not np.issubdtype(weight.dtype, np.floating):
            return call
        k, n = weight.shape
        width = padded_width(n, vector_lanes(self.target, str(weight.dtype)))
        if width == n:
            return call
        padded = np.zeros((k, width), weight.dtype)
        padded[:, :n] = weight
        product = self.builder_.emit(relax.op.matmul(call.args[0], relax.const(padded), out_dtype=call.attrs.out_dtype))
        return relax.op.strided_slice(product, axes=[-1], begin=[0], end=[n])


@tvm.transform.module_pass(opt_level=0, name="PadRaggedWeights")
class PadRaggedWeights:
    """``matmul`` with a constant 2-D weight of ragged width -> padded matmul + slice (module docstring)."""

    def __init__(self, target: Target):
        self.target = target

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        padder = _Padder(mod, self.target)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                padder.builder_.update_func(gvar, padder.visit_expr(func))
        return relax.transform.Normalize()(padder.builder_.get())
