"""TE kernel for ``pkg.graphopt::ActivationThreshold``: ``x if |x| > t else 0``, one elementwise stage.

The threshold is read with numpy broadcasting (a scalar or a per-channel vector over the last
axis), so FuseOps can fuse the stage into the op that produces x. No arithmetic: a compare and a
select in x's dtype, bit-exact with the numpy reference (NaN compares false and becomes 0, as there).
"""

from __future__ import annotations

from tvm import relax, te, tirx

from graphopt import ops

from ._common import broadcast_load, broadcast_shape, emit_kernel, op_attributes


@ops.implements("ActivationThreshold", "tvm", part="te")
def activation_threshold(x: te.Tensor, t: te.Tensor) -> te.Tensor:
    dtype = str(x.dtype)
    shape = broadcast_shape(x.shape, t.shape)

    def select(*index):
        value = broadcast_load(x, index)
        keep = tirx.abs(value) > broadcast_load(t, index).astype(dtype)
        return tirx.Select(keep, value, tirx.const(0, dtype))

    return te.compute(shape, select, name="activation_threshold")


@ops.implements("ActivationThreshold", "tvm")
def convert(bb: relax.BlockBuilder, inputs: list, attrs: dict) -> relax.Expr:
    return emit_kernel(bb, activation_threshold, inputs[:2], "activation_threshold",
                       op_attributes("ActivationThreshold", attrs))
