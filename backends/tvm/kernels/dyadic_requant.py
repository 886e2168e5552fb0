"""TE kernel for ``pkg.graphopt::DyadicRequant``: ``clip((X·M + 2^(K-1)) >> K)``, integers only.

One injective stage (numpy broadcasting of X, Multiplier and Shift), so FuseOps can fuse it into
the int32 accumulator that feeds it. Product and rounding add are int64, as the spec
(``graphopt/ops/dyadic_requant.py``); the rounding term is ``(1 << K) >> 1`` so that K = 0 adds nothing.
A per-tensor Multiplier / Shift that is a graph constant is baked into the kernel as an immediate
(a shift by a constant instead of a per-element variable shift); per-channel ones stay tensors.

AVX2 has a signed 32×32->64 multiply (``vpmuldq``, what LLVM makes of the int64 product of two
sign-extended int32 values) but no 64-bit arithmetic shift or min/max. When every shift is known
to be >= 32 (a constant; ivit's ratios are below 1, so most are), the shift is done as "take the
high 32 bits, then shift in int32" and the clip in int32 (``_requant_high_word``, exact); other
shifts keep the int64 shift and clip.
"""

from __future__ import annotations

import tvm
from tvm import relax, te, tirx

from graphopt import ops

from ._common import (
    broadcast_load,
    broadcast_shape,
    constant_scalar,
    emit_kernel,
    floor_shift,
    i32,
    i64,
    op_attributes,
    to_i64,
)

WORD = 32


def _requant_int64(product: tirx.Expr, k: tirx.Expr, half: tirx.Expr, limit: int) -> tirx.Expr:
    q = floor_shift(product + half, k)
    return tirx.min(tirx.max(q, i64(-limit)), i64(limit - 1)).astype("int32")


def _requant_high_word(product: tirx.Expr, k: tirx.Expr | int, half: tirx.Expr, limit: int) -> tirx.Expr:
    """The spec for shifts 32 <= K <= 62, with int32 X and Multiplier. Exact because:

    - p = X·M + 2^(K-1) fits int64: |X·M| <= 2^31·2^31 = 2^62 and 2^(K-1) <= 2^61.
    - floor(p / 2^K) = floor(floor(p / 2^32) / 2^(K-32)): the high word ``p >> 32`` (LLVM takes the odd
      int32 lanes, no 64-bit shift) then an int32 arithmetic shift by K - 32 in [0, 30].
    - |floor(p / 2^K)| <= 2^(62-K) + 1 <= 2^30 + 1: it fits int32, so the spec's clip to the
      ``out_bits`` range is the same done in int32 (a no-op for out_bits = 32).
    """
    high = tirx.shift_right(product + half, i64(WORD)).astype("int32")
    if isinstance(k, int):
        amount = i32(k - WORD)
    else:
        # A no-op clamp to [0, 30] (K is in [32, 62]) that also tells TVM's simplifier the range: on an
        # unbounded ``h >> (K - 32)`` it infers the bound [-1, 0] and deletes the clip below.
        amount = tirx.min(tirx.max(k.astype("int32") - i32(WORD), i32(0)), i32(62 - WORD))
    q = tirx.shift_right(high, amount)
    if limit >= 1 << 31:
        return q
    return tirx.min(tirx.max(q, i32(-limit)), i32(limit - 1))


@ops.implements("DyadicRequant", "tvm", part="te")
def dyadic_requant(x: te.Tensor, multiplier: te.Tensor | int, shift: te.Tensor | int, out_bits: int = 32,
                   min_shift: int = 0) -> te.Tensor:
    """``multiplier`` / ``shift``: tensors broadcasting against ``x``, or Python ints (per-tensor).

    ``min_shift``: a lower bound the caller knows for every value of a ``shift`` tensor (a constant's
    minimum); shifts of at least 32 with int32 X and Multiplier take the int32 high-word path.
    """
    out_bits = int(out_bits)
    if not 2 <= out_bits <= 32:
        raise ValueError(f"DyadicRequant needs 2 <= out_bits <= 32, got {out_bits}")
    if isinstance(shift, int) and not 0 <= shift <= 62:
        raise ValueError(f"DyadicRequant shifts must be in [0, 62], got {shift}")
    limit = 1 << (out_bits - 1)
    shape = broadcast_shape(*(t.shape for t in (x, multiplier, shift) if isinstance(t, te.Tensor)))
    int32_operands = str(x.dtype) == "int32" and (isinstance(multiplier, int) and -(2**31) <= multiplier < 2**31
                                                  or not isinstance(multiplier, int) and str(multiplier.dtype) == "int32")
    high_word = int32_operands and (shift if isinstance(shift, int) else int(min_shift)) >= WORD

    def operand(value, index):
        return i64(value) if isinstance(value, int) else to_i64(broadcast_load(value, index))

    def requant(*index):
        k = operand(shift, index)
        product = to_i64(broadcast_load(x, index)) * operand(multiplier, index)
        half = i64((1 << shift) >> 1) if isinstance(shift, int) else floor_shift(tirx.shift_left(i64(1), k), 1)
        if high_word:
            return _requant_high_word(product, shift if isinstance(shift, int) else k, half, limit)
        return _requant_int64(product, k, half, limit)

    return te.compute(shape, requant, name="dyadic_requant")


@ops.implements("DyadicRequant", "tvm")
def convert(bb: relax.BlockBuilder, inputs: list, attrs: dict) -> relax.Expr:
    x, multiplier, shift = inputs[:3]
    args = [x] + [_scalar_or_tensor(v) for v in (multiplier, shift)]
    attrs = op_attributes("DyadicRequant", attrs)
    if isinstance(shift, tvm.ir.GenericConst) and not isinstance(args[2], int):
        values = shift.value.numpy()
        if values.size and values.max() <= 62:  # per-channel constant shifts (in the spec's range): floor known
            attrs["min_shift"] = int(values.min())
    return emit_kernel(bb, dyadic_requant, args, "dyadic_requant", attrs)


def _scalar_or_tensor(value: relax.Expr):
    scalar = constant_scalar(value)
    return value if scalar is None else scalar
