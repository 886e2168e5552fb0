"""TE kernel for ``pkg.graphopt::IntLayerNorm`` (I-ViT integer LayerNorm over the last axis), int64 inside.

Stages: row sum (reduction), variance ``Σ(x - mean)²`` (reduction, mean recomputed from the sum),
the per-row factor ``floor((2^31-1) / isqrt(var))`` (10 floor-Newton steps from 2^16, chained with
``Let`` so the expression stays linear in size), and the injective output
``floor(floor((x - mean)·f / 2)·Mult / 2^shift) + Bias``. ``center=0`` (integer RMSNorm) has no
mean: no row-sum stage, ``Σx²`` and ``x·f``. Spec: ``graphopt/ops/int_layer_norm.py``.
"""

from __future__ import annotations

from tvm import relax, te, tirx

from graphopt import ops

from ._common import INT64, broadcast_load, emit_kernel, floor_shift, i64, op_attributes, row_reduce_axis, to_i64

NEWTON_START = 1 << 16
NEWTON_ITERATIONS = 10
F_NUMERATOR = (1 << 31) - 1


def _newton_isqrt(var: tirx.Expr) -> tirx.Expr:
    """I-ViT's ``k = (k + var // k) // 2`` ten times from 2^16 (k > 0, var >= 0: truncdiv == floordiv)."""
    steps = [tirx.Var(f"k{i}", INT64) for i in range(NEWTON_ITERATIONS + 1)]
    body = steps[-1]
    for i in reversed(range(NEWTON_ITERATIONS)):
        body = tirx.Let(steps[i + 1], floor_shift(steps[i] + tirx.truncdiv(var, steps[i]), 1), body)
    return tirx.Let(steps[0], i64(NEWTON_START), body)


@ops.implements("IntLayerNorm", "tvm", part="te")
def int_layer_norm(x: te.Tensor, mult: te.Tensor, bias: te.Tensor, shift: int = 16, center: int = 1) -> te.Tensor:
    shift = int(shift)
    rows = x.shape[:-1]
    width = to_i64(x.shape[-1])
    if int(center):
        k = row_reduce_axis(x, "k")
        total = te.compute(rows, lambda *r: te.sum(to_i64(x(*r, k)), axis=k), name="ilayernorm_row_sum")

        def mean(row):
            return tirx.floordiv(total(*row) * i64(2) + width, width * i64(2))  # half up, floor for negative sums
    else:

        def mean(row):
            return i64(0)  # RMSNorm: no centering

    j = row_reduce_axis(x, "j")

    def square(row, col):
        centered = to_i64(x(*row, col)) - mean(row)
        return centered * centered

    var = te.compute(rows, lambda *r: te.sum(square(r, j), axis=j), name="ilayernorm_row_var")
    factor = te.compute(rows, lambda *r: tirx.truncdiv(i64(F_NUMERATOR), _newton_isqrt(var(*r))),
                        name="ilayernorm_factor")  # the isqrt is >= 2^6 after 10 steps: never 0

    def affine(*index):
        row = index[:-1]
        normalized = floor_shift((to_i64(x(*index)) - mean(row)) * factor(*row), 1)
        scaled = floor_shift(normalized * to_i64(broadcast_load(mult, index)), shift)
        return (scaled + to_i64(broadcast_load(bias, index))).astype("int32")

    return te.compute(x.shape, affine, name="ilayernorm")


@ops.implements("IntLayerNorm", "tvm")
def convert(bb: relax.BlockBuilder, inputs: list, attrs: dict) -> relax.Expr:
    return emit_kernel(bb, int_layer_norm, inputs[:3], "int_layer_norm", op_attributes("IntLayerNorm", attrs))
