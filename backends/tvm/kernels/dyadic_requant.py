"""TE kernel for ``pkg.graphopt::DyadicRequant``: ``clip((X·M + 2^(K-1)) >> K)``, integers only.

One injective stage (numpy broadcasting of X, Multiplier and Shift), so FuseOps can fuse it into
the int32 accumulator that feeds it. Product and rounding add are int64, as the spec
(``passes/_dyadic_op.py``); the rounding term is ``(1 << K) >> 1`` so that K = 0 adds nothing.
A per-tensor Multiplier / Shift that is a graph constant is baked into the kernel as an immediate
(a shift by a constant instead of a per-element variable shift); per-channel ones stay tensors.
"""

from __future__ import annotations

from tvm import relax, te, tirx

from ._common import (
    broadcast_load,
    broadcast_shape,
    constant_scalar,
    emit_kernel,
    floor_shift,
    i64,
    op_attributes,
    to_i64,
)


def dyadic_requant(x: te.Tensor, multiplier: te.Tensor | int, shift: te.Tensor | int, out_bits: int = 32) -> te.Tensor:
    """``multiplier`` / ``shift``: tensors broadcasting against ``x``, or Python ints (per-tensor)."""
    out_bits = int(out_bits)
    if not 2 <= out_bits <= 32:
        raise ValueError(f"DyadicRequant needs 2 <= out_bits <= 32, got {out_bits}")
    if isinstance(shift, int) and not 0 <= shift <= 62:
        raise ValueError(f"DyadicRequant shifts must be in [0, 62], got {shift}")
    limit = 1 << (out_bits - 1)
    shape = broadcast_shape(*(t.shape for t in (x, multiplier, shift) if isinstance(t, te.Tensor)))

    def operand(value, index):
        return i64(value) if isinstance(value, int) else to_i64(broadcast_load(value, index))

    def requant(*index):
        k = operand(shift, index)
        product = to_i64(broadcast_load(x, index)) * operand(multiplier, index)
        half = i64((1 << shift) >> 1) if isinstance(shift, int) else floor_shift(tirx.shift_left(i64(1), k), 1)
        q = floor_shift(product + half, k)
        return tirx.min(tirx.max(q, i64(-limit)), i64(limit - 1)).astype("int32")

    return te.compute(shape, requant, name="dyadic_requant")


def convert(bb: relax.BlockBuilder, inputs: list, attrs: dict) -> relax.Expr:
    x, multiplier, shift = inputs[:3]
    args = [x] + [_scalar_or_tensor(v) for v in (multiplier, shift)]
    return emit_kernel(bb, dyadic_requant, args, "dyadic_requant", op_attributes("DyadicRequant", attrs))


def _scalar_or_tensor(value: relax.Expr):
    scalar = constant_scalar(value)
    return value if scalar is None else scalar
