"""TE kernel for ``pkg.graphopt::Shiftmax`` (I-ViT integer softmax over the last axis), int32 where exact.

Stages, as TVM's own softmax: row max (reduction), the shift exponential ``e`` (injective), row sum
(reduction), the per-row factor ``floor((2^31-1) / min(sum, 2^31-1))`` (one division per row,
not per element), and the output ``(e · f) >> (32 - out_bits)`` (injective). The spec is
``shiftmax_reference`` in ``graphopt/ops/shiftmax.py``; it computes in int64.

AVX2 has no 64-bit vector multiply, shift-right or division, so when ``shift_exp_fits_int32(x0, n)``
(ivit's attributes always do) the per-element stages run in int32, bit-exact (proofs inline); the
row sum stays int64 unless ``width·|x0|·2^n < 2^31`` proves the int32 sum cannot overflow.
``mask_below``: inputs below it get ``e = 0``; the divisor is ``max(min(sum, 2^31-1), 1)`` (a fully
masked row is all zeros).
"""

from __future__ import annotations

from tvm import relax, te, tirx

from graphopt import ops

from ._common import (
    INT31,
    SHIFT_EXP_T_MIN,
    emit_kernel,
    floor_shift,
    i32,
    i64,
    op_attributes,
    row_reduce_axis,
    shift_exp,
    shift_exp_fits_int32,
    shift_exp_i32,
    to_i64,
)



def _masked(x: te.Tensor, index, e, mask_below: int, zero):
    """``e`` where ``x >= mask_below`` (no select at all for the default, which masks nothing)."""
    if mask_below <= -(2**31):
        return e
    return tirx.Select(to_i64(x(*index)) >= i64(mask_below), e, zero)


@ops.implements("Shiftmax", "tvm", part="te")
def shiftmax(x: te.Tensor, x0: int, n: int = 15, out_bits: int = 16, mask_below: int = -(2**31)) -> te.Tensor:
    x0, n, out_bits, mask_below = int(x0), int(n), int(out_bits), int(mask_below)
    if x0 > -1 or not 0 <= n <= 30 or not 2 <= out_bits <= 31:
        raise ValueError(f"Shiftmax needs x0 <= -1, 0 <= n <= 30, 2 <= out_bits <= 31; got {x0}, {n}, {out_bits}")
    if str(x.dtype) != "int32" or not shift_exp_fits_int32(x0, n):
        return _shiftmax_int64(x, x0, n, out_bits, mask_below)
    rows = x.shape[:-1]
    k = row_reduce_axis(x, "k")
    row_max = te.compute(rows, lambda *r: te.max(x(*r, k), axis=k), name="shiftmax_row_max")

    def exponent(*index):
        # x - row_max (down to -(2^32 - 1)) subtracted in int64 and clamped at -2^29 (harmless, see
        # shift_exp_i32) before narrowing: int32 tricks that avoid the overflow get undone by TVM's simplifier
        d = tirx.max(to_i64(x(*index)) - to_i64(row_max(*index[:-1])), i64(SHIFT_EXP_T_MIN)).astype("int32")
        e = tirx.max(shift_exp_i32(d, x0, n), i32(0))  # e in [1, |x0|·2^n] (shift_exp_fits_int32)
        return _masked(x, index, e, mask_below, i32(0))

    e = te.compute(x.shape, exponent, name="shiftmax_exp")
    width = x.shape[-1]
    narrow_sum = isinstance(width, tirx.IntImm) and int(width) * ((-x0) << n) < 2**31
    acc = "int32" if narrow_sum else "int64"
    j = row_reduce_axis(x, "j")
    total = te.compute(rows, lambda *r: te.sum(e(*r, j).astype(acc), axis=j), name="shiftmax_row_sum")
    cap = tirx.const(INT31, acc)
    # divisor >= 1: truncdiv == floordiv; the factor is <= 2^31 - 1 (fits int32)
    factor = te.compute(rows, lambda *r: tirx.truncdiv(cap, tirx.max(tirx.min(total(*r), cap), tirx.const(1, acc))).astype("int32"),
                        name="shiftmax_factor")
    # e·f fits int32: if total <= 2^31-1 then e <= total and e·f <= total·floor((2^31-1)/total) <= 2^31-1;
    # otherwise f = 1 and e < 2^31.
    return te.compute(x.shape, lambda *i: tirx.shift_right(e(*i) * factor(*i[:-1]), i32(32 - out_bits)),
                      name="shiftmax")


def _shiftmax_int64(x: te.Tensor, x0: int, n: int, out_bits: int, mask_below: int) -> te.Tensor:
    """The spec as written, int64 throughout (attributes for which int32 is not proven exact)."""
    rows = x.shape[:-1]
    k = row_reduce_axis(x, "k")
    row_max = te.compute(rows, lambda *r: te.max(to_i64(x(*r, k)), axis=k), name="shiftmax_row_max")
    e = te.compute(x.shape, lambda *i: _masked(x, i, tirx.max(shift_exp(to_i64(x(*i)) - row_max(*i[:-1]), x0, n), i64(0)),
                                               mask_below, i64(0)), name="shiftmax_exp")
    j = row_reduce_axis(x, "j")
    total = te.compute(rows, lambda *r: te.sum(e(*r, j), axis=j), name="shiftmax_row_sum")
    factor = te.compute(rows, lambda *r: tirx.truncdiv(i64(INT31), tirx.max(tirx.min(total(*r), i64(INT31)), i64(1))),
                        name="shiftmax_factor")  # divisor >= 1: truncdiv == floordiv
    return te.compute(x.shape, lambda *i: floor_shift(e(*i) * factor(*i[:-1]), 32 - out_bits).astype("int32"),
                      name="shiftmax")


@ops.implements("Shiftmax", "tvm")
def convert(bb: relax.BlockBuilder, inputs: list, attrs: dict) -> relax.Expr:
    return emit_kernel(bb, shiftmax, inputs[:1], "shiftmax", op_attributes("Shiftmax", attrs, required=("x0",)))
