"""TE kernel for ``pkg.graphopt::ShiftGelu`` (I-ViT integer GELU ``x·σ(1.702x)``), int32 where exact.

``row_max=1``: one row-max reduction (clamped at 0) then one injective stage; ``row_max=0``: a
single injective stage with ``m = max(x, 0)``. Per element: two ShiftExps (of ``x - m`` and ``-m``),
``f = floor((2^31-1) / min(e_d + e_m, 2^31-1))``, ``σ = (e_d·f) >> (32 - out_bits)``, ``Y = x·σ``
wrapped to int32 as the spec's ``astype`` does (``graphopt/ops/shift_gelu.py``).

The spec computes in int64; on AVX2 that costs a scalar 64-bit division and two scalar magic
multiplies per element. When ``shift_exp_fits_int32(x0, n, terms=2)`` (ivit's attributes always
do) everything runs in int32 instead, bit-exact (see ``_gelu_int32``); otherwise the int64 form.
The converter prefers the lookup table of ``shiftgelu_table`` for ``row_max=0`` (no division at all).
"""

from __future__ import annotations

from tvm import relax, te, tirx

from graphopt import ops

from . import shiftgelu_table
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


def _gelu_int64(xi: tirx.Expr, m: tirx.Expr, x0: int, n: int, out_bits: int) -> tirx.Expr:
    """The spec as written: int64 ``x``, ``m`` (m >= x, m >= 0)."""
    e_d = shift_exp(xi - m, x0, n)
    e_m = shift_exp(-m, x0, n)
    f = tirx.truncdiv(i64(INT31), tirx.min(e_d + e_m, i64(INT31)))  # e_d, e_m >= 1: truncdiv == floordiv
    sigma = floor_shift(e_d * f, 32 - out_bits)
    return (xi * sigma).astype("int32")


def _gelu_int32(x: tirx.Expr, m: tirx.Expr, x0: int, n: int, out_bits: int, row_max: int) -> tirx.Expr:
    """The spec in int32 for int32 ``x`` and ``m`` in [max(x, 0), 2^31 - 1] (``max(x, 0)`` itself when
    not ``row_max``), given ``shift_exp_fits_int32(x0, n, terms=2)``. Why each step is exact:

    - ``x - m`` and ``-m`` are clamped at SHIFT_EXP_T_MIN = -2^29 before ShiftExp (which does not change
      its value, see ``shift_exp_i32``). ``x - m`` is subtracted and clamped in int64, then narrowed:
      written in int32 as ``max(x, m - 2^29) - m`` it would be safe, but TVM's simplifier rewrites that
      back into ``max(x - m, -2^29)``, which overflows. With ``row_max=0``, ``x - m = min(x, 0)``.
    - e_d, e_m in [1, |x0|·2^n], so ``e_d + e_m < 2^31``: the spec's ``min(.., 2^31-1)`` never bites
      and f = floor((2^31-1) / (e_d + e_m)) is a division of positive int32 values.
    - ``e_d·f <= e_d·(2^31-1)/(e_d + e_m) < 2^31 - 1``: the product fits int32.
    - ``Y = x·σ`` wraps to int32 in the spec; it is computed as an int64 product truncated to int32,
      which LLVM narrows to one 32-bit multiply (an int32 multiply would be ``nsw``: overflow undefined).
    """
    if row_max:
        d = tirx.max(to_i64(x) - to_i64(m), i64(SHIFT_EXP_T_MIN)).astype("int32")
    else:
        d = tirx.max(tirx.min(x, i32(0)), i32(SHIFT_EXP_T_MIN))
    e_d = shift_exp_i32(d, x0, n)
    e_m = shift_exp_i32(-tirx.min(m, i32(-SHIFT_EXP_T_MIN)), x0, n)
    f = tirx.truncdiv(i32(INT31), e_d + e_m)
    sigma = tirx.shift_right(e_d * f, i32(32 - out_bits))
    return (to_i64(x) * to_i64(sigma)).astype("int32")


@ops.implements("ShiftGelu", "tvm", part="te")
def shift_gelu(x: te.Tensor, x0: int, n: int = 23, out_bits: int = 8, row_max: int = 1) -> te.Tensor:
    x0, n, out_bits, row_max = int(x0), int(n), int(out_bits), int(row_max)
    if x0 > -1:
        raise ValueError(f"ShiftGelu needs x0 <= -1, got {x0}")
    narrow = shift_exp_fits_int32(x0, n, terms=2) and str(x.dtype) == "int32" and 1 <= out_bits <= 32
    wide = "int32" if narrow else "int64"
    if row_max:
        k = row_reduce_axis(x, "k")
        rmax = te.compute(x.shape[:-1], lambda *r: te.max(x(*r, k).astype(wide), axis=k), name="shiftgelu_row_max")

        def m_of(index):
            return tirx.max(rmax(*index[:-1]), tirx.const(0, wide))
    else:

        def m_of(index):
            return tirx.max(x(*index).astype(wide), tirx.const(0, wide))

    def gelu(*index):
        if narrow:
            return _gelu_int32(x(*index), m_of(index), x0, n, out_bits, row_max)
        return _gelu_int64(to_i64(x(*index)), m_of(index), x0, n, out_bits)

    return te.compute(x.shape, gelu, name="shiftgelu")


@ops.implements("ShiftGelu", "tvm")
def convert(bb: relax.BlockBuilder, inputs: list, attrs: dict) -> relax.Expr:
    attrs = op_attributes("ShiftGelu", attrs, required=("x0",))
    table = shiftgelu_table.convert_with_table(bb, inputs[0], attrs)
    return table if table is not None else emit_kernel(bb, shift_gelu, inputs[:1], "shiftgelu", attrs)
