"""TE kernel for ``pkg.graphopt::MaskedAddMatMul``: sums of the X rows a packed bit row selects.

    Y[.., m, n] = Σ_j Select(bit(Bits[.., m, j // 16], j % 16), X[.., j, n], 0)

The bit is read by an integer shift and mask of the word; the reduction is a sum of selected
values (no multiplication). float16 accumulates in float32 and rounds once. Leading axes broadcast
(``broadcast_load``).

The converter takes the hand-scheduled CPU kernel (``masked_add_matmul_fast``: lane masks and adds
on SIMD registers) first, for float32 X with static shapes on a CPU target; this TE compute is the
fallback (other dtypes, symbolic shapes, GPU targets) and the kernel tests' meaning.
"""

from __future__ import annotations

from tvm import relax, te, tirx

from graphopt import ops

from . import masked_add_matmul_fast
from ._common import broadcast_load, broadcast_shape, emit_kernel, i32, op_attributes


@ops.implements("MaskedAddMatMul", "tvm", part="te")
def masked_add_matmul(bits: te.Tensor, x: te.Tensor, k: int) -> te.Tensor:
    dtype = str(x.dtype)
    wide = "float32" if dtype in ("float16", "bfloat16") else dtype
    lead = broadcast_shape(list(bits.shape[:-2]), list(x.shape[:-2]))
    shape = [*lead, bits.shape[-2], x.shape[-1]]
    r = te.reduce_axis((0, int(k)), name="j")
    zero = tirx.const(0, wide)

    def cell(*index):
        outer, m, n = list(index[:-2]), index[-2], index[-1]
        word = broadcast_load(bits, [*outer, m, tirx.floordiv(r, 16)]) if bits.ndim > 2 else bits[m, tirx.floordiv(r, 16)]
        bit = tirx.bitwise_and(tirx.shift_right(word.astype("int32"), tirx.floormod(r, 16).astype("int32")), i32(1))
        value = broadcast_load(x, [*outer, r, n]) if x.ndim > 2 else x[r, n]
        return te.sum(tirx.Select(bit == i32(1), value.astype(wide), zero), axis=r)

    y = te.compute(shape, cell, name="masked_add_sum")
    if wide == dtype:
        return y
    return te.compute(shape, lambda *i: y(*i).astype(dtype), name="masked_add_matmul")


@ops.implements("MaskedAddMatMul", "tvm")
def convert(bb: relax.BlockBuilder, inputs: list, attrs: dict) -> relax.Expr:
    attributes = op_attributes("MaskedAddMatMul", attrs, required=("k",))
    fast = masked_add_matmul_fast.emit(bb, inputs[0], inputs[1], int(attributes["k"]))
    if fast is not None:
        return fast
    return emit_kernel(bb, masked_add_matmul, inputs[:2], "masked_add_matmul", attributes)
