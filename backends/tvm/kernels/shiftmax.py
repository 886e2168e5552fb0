"""TE kernel for ``pkg.graphopt::Shiftmax`` (I-ViT integer softmax over the last axis), int64 inside.

Stages, as TVM's own softmax: row max (reduction), the shift exponential ``e`` (injective), row sum
(reduction), the per-row factor ``floor((2^31-1) / min(sum, 2^31-1))`` (one division per row,
not per element), and the output ``(e · f) >> (32 - out_bits)`` (injective). The spec is
``shiftmax_reference`` in ``passes/_shiftmax_op.py``.
"""

from __future__ import annotations

from tvm import relax, te, tirx

from ._common import INT31, emit_kernel, floor_shift, i64, op_attributes, row_reduce_axis, shift_exp, to_i64


def shiftmax(x: te.Tensor, x0: int, n: int = 15, out_bits: int = 16) -> te.Tensor:
    x0, n, out_bits = int(x0), int(n), int(out_bits)
    if x0 > -1 or not 0 <= n <= 30 or not 2 <= out_bits <= 31:
        raise ValueError(f"Shiftmax needs x0 <= -1, 0 <= n <= 30, 2 <= out_bits <= 31; got {x0}, {n}, {out_bits}")
    rows = x.shape[:-1]
    k = row_reduce_axis(x, "k")
    row_max = te.compute(rows, lambda *r: te.max(to_i64(x(*r, k)), axis=k), name="shiftmax_row_max")
    e = te.compute(x.shape, lambda *i: tirx.max(shift_exp(to_i64(x(*i)) - row_max(*i[:-1]), x0, n), i64(0)),
                   name="shiftmax_exp")
    j = row_reduce_axis(x, "j")
    total = te.compute(rows, lambda *r: te.sum(e(*r, j), axis=j), name="shiftmax_row_sum")
    factor = te.compute(rows, lambda *r: tirx.truncdiv(i64(INT31), tirx.min(total(*r), i64(INT31))),
                        name="shiftmax_factor")  # total >= e(row max) > 0: truncdiv == floordiv
    return te.compute(x.shape, lambda *i: floor_shift(e(*i) * factor(*i[:-1]), 32 - out_bits).astype("int32"),
                      name="shiftmax")


def convert(bb: relax.BlockBuilder, inputs: list, attrs: dict) -> relax.Expr:
    return emit_kernel(bb, shiftmax, inputs[:1], "shiftmax", op_attributes("Shiftmax", attrs, required=("x0",)))
