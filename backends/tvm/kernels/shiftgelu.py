"""TE kernel for ``pkg.graphopt::ShiftGelu`` (I-ViT integer GELU ``x·σ(1.702x)``), int64 inside.

``row_max=1``: one row-max reduction (clamped at 0) then one injective stage; ``row_max=0``: a
single injective stage with ``m = max(x, 0)``. Per element: two ShiftExps (of ``x - m`` and ``-m``),
``f = floor((2^31-1) / min(e_d + e_m, 2^31-1))``, ``σ = (e_d·f) >> (32 - out_bits)``, ``Y = x·σ``
wrapped to int32 as the spec's ``astype`` does (``passes/_shiftgelu_op.py``).
"""

from __future__ import annotations

from tvm import relax, te, tirx

from ._common import INT31, emit_kernel, floor_shift, i64, op_attributes, row_reduce_axis, shift_exp, to_i64


def shift_gelu(x: te.Tensor, x0: int, n: int = 23, out_bits: int = 8, row_max: int = 1) -> te.Tensor:
    x0, n, out_bits, row_max = int(x0), int(n), int(out_bits), int(row_max)
    if x0 > -1:
        raise ValueError(f"ShiftGelu needs x0 <= -1, got {x0}")
    if row_max:
        k = row_reduce_axis(x, "k")
        rmax = te.compute(x.shape[:-1], lambda *r: te.max(to_i64(x(*r, k)), axis=k), name="shiftgelu_row_max")

        def m_of(index):
            return tirx.max(rmax(*index[:-1]), i64(0))
    else:

        def m_of(index):
            return tirx.max(to_i64(x(*index)), i64(0))

    def gelu(*index):
        xi = to_i64(x(*index))
        m = m_of(index)
        e_d = shift_exp(xi - m, x0, n)
        e_m = shift_exp(-m, x0, n)
        f = tirx.truncdiv(i64(INT31), tirx.min(e_d + e_m, i64(INT31)))  # e_d, e_m >= 1: truncdiv == floordiv
        sigma = floor_shift(e_d * f, 32 - out_bits)
        return (xi * sigma).astype("int32")

    return te.compute(x.shape, gelu, name="shiftgelu")


def convert(bb: relax.BlockBuilder, inputs: list, attrs: dict) -> relax.Expr:
    return emit_kernel(bb, shift_gelu, inputs[:1], "shiftgelu", op_attributes("ShiftGelu", attrs, required=("x0",)))
