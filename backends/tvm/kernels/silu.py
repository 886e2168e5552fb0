"""TE kernel for ``pkg.graphopt::SigmoidLinearUnit``: ``x / (1 + exp(-x))``, one elementwise stage.

float16 inputs are computed in float32 and rounded back once (numpy's float16 reference rounds
every step, so float32 inside is closer to the exact value, within the op tests' 2e-3).
"""

from __future__ import annotations

from tvm import relax, te, tirx

from graphopt import ops

from ._common import emit_kernel, op_attributes


@ops.implements("SigmoidLinearUnit", "tvm", part="te")
def silu(x: te.Tensor) -> te.Tensor:
    dtype = str(x.dtype)
    wide = "float32" if dtype in ("float16", "bfloat16") else dtype

    def unit(*index):
        v = x(*index).astype(wide)
        return (v / (tirx.const(1, wide) + te.exp(-v))).astype(dtype)

    return te.compute(x.shape, unit, name="silu")


@ops.implements("SigmoidLinearUnit", "tvm")
def convert(bb: relax.BlockBuilder, inputs: list, attrs: dict) -> relax.Expr:
    return emit_kernel(bb, silu, inputs[:1], "silu", op_attributes("SigmoidLinearUnit", attrs))
