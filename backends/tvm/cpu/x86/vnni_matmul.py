"""Pre-scheduled int8 matmul kernels for x86 with VNNI (``vpdpbusd``), exact.

The loop nest, packing and schedule are those of ``arm/sdot_matmul`` (``acc = A' · B'`` over an
``mr × nv·L`` register tile, packed B panels, ``a_pack``/``b_pack``/``rowsum``/``colsum``/``out``
stages); only the operand types and the instruction differ. ``vpdpbusd`` multiplies *unsigned* A
by *signed* B, so A is made uint8 and B int8, exactly:

    A - za = A' + da      A' = A + 128 for int8 (A unchanged for uint8),  da = -(shift_a + za)
    B - zb = B' + db      B' = B - 128 for uint8 (B unchanged for int8),  db = shift_b - zb

    sum_k (A - za)(B - zb) = sum_k A'·B'  +  da · colsum(B - zb)[j]  +  db[j] · rowsum(A')[i]

ivit's linear layers (int8 A, int8 weights, no zero points) have only ``-128 · colsum(W)``,
precomputed in numpy with the packing; Q·Kᵀ computes ``-128 · colsum(K)`` at run time; P·V (uint8
probabilities × int8 V) has no correction at all. The ``out`` stage adds the terms; where the
output needs no un-padding it is folded into the write-back of the register tile.

No overflow: |A'·B'| <= 255·128, |da · (B - zb)| <= 255·255 and |db · A'| <= 128·255 per k, so
every partial sum of every term is below K · 130305 in magnitude, which fits int32 for
K <= ``MAX_K`` = 16480 (2^31 / 130305); the converter sends longer reductions to the AVX2 kernels.
Within that bound all sums are taken in int32 without wrapping, so results are bit-exact against
numpy's int32 matmul.

Two instruction widths (``ISAS``): AVX-512 VNNI (16 int32 lanes per zmm, 32 registers: a 4×4 tile
of 16 accumulators + 4 B panels) and AVX-VNNI (8 lanes per ymm, 16 registers: a 4×2 tile).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from tvm import te, tirx

from graphopt.backends.tvm.cpu.arm.sdot_matmul import (
    PackedWeights,
    _accumulate,
    _batched,
    _col_sums,
    _b_pack as _sdot_b_pack,
    _output,
    _row_sums,
    conv_output_shape,
    schedule_dot_matmul,
)
from graphopt.backends.tvm.cpu.common import pad_to

from . import vnni_intrin

__all__ = ["ISAS", "MAX_K", "VnniIsa", "activation_matmul_func", "conv_func", "pack_weights", "weight_matmul_func"]

KW = vnni_intrin.KW
UINT8_SHIFT = 128  # int8 + 128 is uint8, uint8 - 128 is int8
MAX_K = 2**31 // (255 * 128 + 255 * 255 + 128 * 255)  # 16480: see "No overflow" above


@dataclasses.dataclass(frozen=True)
class VnniIsa:
    """One vpdpbusd width: lanes per register, the tensor intrinsic, and the largest register tile."""

    name: str
    lanes: int
    intrin: str
    mr: int  # accumulator rows per tile
    nv: int  # accumulator registers per row

    def tile(self, m: int, n: int) -> tuple[int, int]:
        """(rows, registers per row) of the accumulator tile: as large as the matrix allows."""
        return max(1, min(self.mr, m)), max(1, min(self.nv, pad_to(n, self.lanes) // self.lanes))

    def panel(self, n: int) -> int:
        """Columns of one packed B panel (depends on N only, so weights can be packed before M is known)."""
        return self.lanes * self.tile(1, n)[1]


ISAS = {
    "avx512-vnni": VnniIsa("avx512-vnni", 16, vnni_intrin.DOT_16x4_U8S8, mr=4, nv=4),
    "avx-vnni": VnniIsa("avx-vnni", 8, vnni_intrin.DOT_8x4_U8S8, mr=4, nv=2),
}


def _check_int8(dtype: str) -> None:
    if dtype not in ("int8", "uint8"):
        raise ValueError(f"the VNNI kernels take int8 or uint8 operands, got {dtype}")


def a_shift(dtype: str) -> int:
    """What is added to A to make it uint8."""
    _check_int8(dtype)
    return UINT8_SHIFT if dtype == "int8" else 0


def b_shift(dtype: str) -> int:
    """What is subtracted from B to make it int8."""
    _check_int8(dtype)
    return UINT8_SHIFT if dtype == "uint8" else 0


def pack_weights(
    b: np.ndarray, b_zero: np.ndarray | int, a_dtype: str, a_zero: int, *, isa: str = "avx512-vnni"
) -> PackedWeights:
    """Constant int8/uint8 ``b`` [K, N] with zero point ``b_zero`` (scalar or [N]) for A of ``a_dtype``/``a_zero``.

    ``packed`` is int8 B' as [Np/P, Kp/4, P, 4] (P = ``isa.panel(N)``: one k step of a tile reads
    P·4 contiguous bytes, 4·lanes per vpdpbusd); ``col_bias`` = da · colsum(B - zb) and
    ``row_scale`` = db, None when zero.
    """
    k, n = b.shape
    panel = ISAS[isa].panel(n)
    kp, np_ = pad_to(k, KW), pad_to(n, panel)
    padded = np.zeros((kp, np_), np.int8)
    padded[:k, :n] = (b.astype(np.int16) - b_shift(str(b.dtype))).astype(np.int8)
    # [Kp, Np] -> [Kp/4, 4, Np/P, P] -> [Np/P, Kp/4, P (columns), 4 (k)]
    packed = np.ascontiguousarray(padded.reshape(kp // KW, KW, np_ // panel, panel).transpose(2, 0, 3, 1))
    zero = np.broadcast_to(np.asarray(b_zero, np.int64).reshape(-1), (n,))
    a_delta = -(a_shift(a_dtype) + int(a_zero))
    b_delta = b_shift(str(b.dtype)) - zero
    col_bias = (a_delta * (b.astype(np.int64) - zero).sum(axis=0)).astype(np.int32) if a_delta else None
    row_scale = b_delta.astype(np.int32) if b_delta.any() else None
    return PackedWeights(k, n, packed, col_bias, row_scale)


def _i32(value: int) -> tirx.Expr:
    return tirx.const(int(value), "int32")


def _to_uint8(value: tirx.Expr, shift: int) -> tirx.Expr:
    return (value.astype("int16") + tirx.const(shift, "int16")).astype("uint8") if shift else value


def _a_operand(a: te.Tensor, mp: int, kp: int) -> te.Tensor:
    """A' [*batch, Mp, Kp] uint8 (int8 plus 128, zeros in the padding); ``a`` itself when nothing changes."""
    *outer_shape, m, k = (int(d) for d in a.shape)
    shift = a_shift(str(a.dtype))
    if not shift and (mp, kp) == (m, k):
        return a

    def load(*index):
        *outer, i, kk = index
        value = _to_uint8(a(*outer, tirx.min(i, m - 1), tirx.min(kk, k - 1)), shift)  # clamped: never out of bounds
        if (mp, kp) == (m, k):
            return value
        return tirx.if_then_else(tirx.all(i < m, kk < k), value, tirx.const(0, "uint8"))

    return te.compute((*outer_shape, mp, kp), load, name="a_pack")


def _b_pack(b: te.Tensor, np_: int, kp: int, panel: int) -> te.Tensor:
    """Run-time B [*batch, K, N] -> int8 Bp [*batch, Np/P, Kp/4, P, 4] (B - shift): sdot's layout and packing."""
    return _sdot_b_pack(b, np_, kp, panel, offset=b_shift(str(b.dtype)))


def _weight_product(a_op: te.Tensor, n: int, panel: int, col_bias: bool, row_scale: bool):
    """The packed-weight placeholders and ``acc = A' · B'`` for a 2-D A', with the correction terms asked for."""
    kp = int(a_op.shape[-1])
    bp = te.placeholder((pad_to(n, panel) // panel, kp // KW, panel, KW), "int8", name="Bp")
    extra, col_term, row_term = [], None, None
    if col_bias:
        bias = te.placeholder((n,), "int32", name="col_bias")
        extra.append(bias)
        col_term = lambda outer, j: bias(j)  # noqa: E731
    if row_scale:
        scale = te.placeholder((n,), "int32", name="row_scale")
        extra.append(scale)
        rowsum = _row_sums(a_op)
        row_term = lambda outer, i, j: scale(j) * rowsum(i)  # noqa: E731
    return [bp, *extra], _accumulate(a_op, bp, []), col_term, row_term


def _schedule(func: tirx.PrimFunc, isa: VnniIsa, mr: int, nv: int) -> tirx.PrimFunc:
    return schedule_dot_matmul(func, mr, nv, lanes=isa.lanes, intrin=isa.intrin, inline_output=True)


def weight_matmul_func(
    m: int, k: int, n: int, a_dtype: str, *, col_bias: bool, row_scale: bool, isa: str = "avx512-vnni"
) -> tirx.PrimFunc:
    """Scheduled ``A[M, K] · B -> int32[M, N]`` for constant B packed by ``pack_weights``.

    Parameters: ``A``, ``Bp``, then ``col_bias`` and ``row_scale`` [N] int32 when asked for, then the output.
    """
    spec = ISAS[isa]
    mr, nv = spec.tile(m, n)
    a = te.placeholder((m, k), a_dtype, name="A")
    a_op = _a_operand(a, pad_to(m, mr), pad_to(k, KW))
    weights, acc, col_term, row_term = _weight_product(a_op, n, spec.panel(n), col_bias, row_scale)
    out = _output(acc, (m, n), col_term, row_term)
    return _schedule(te.create_prim_func([a, *weights, out]), spec, mr, nv)


def activation_matmul_func(
    a_shape: Sequence[int], a_dtype: str, b_shape: Sequence[int], b_dtype: str, *, a_zero: int = 0, b_zero: int = 0,
    isa: str = "avx512-vnni",
) -> tirx.PrimFunc:
    """Scheduled ``(A - a_zero)[*batch, M, K] · (B - b_zero)[*batch, K, N] -> int32[*batch, M, N]``, both at run time.

    Either side may lack the batch dims; when both have them they must be equal. Zero points are scalars.
    """
    spec = ISAS[isa]
    *a_batch, m, k = (int(d) for d in a_shape)
    *b_batch, kb, n = (int(d) for d in b_shape)
    if kb != k or (a_batch and b_batch and a_batch != b_batch):
        raise ValueError(f"activation_matmul_func: shapes {list(a_shape)} x {list(b_shape)} need equal K and batch dims")
    batch = a_batch or b_batch
    mr, nv = spec.tile(m, n)
    panel = spec.lanes * nv
    mp, kp, np_ = pad_to(m, mr), pad_to(k, KW), pad_to(n, panel)
    a = te.placeholder(tuple(a_shape), a_dtype, name="A")
    b = te.placeholder(tuple(b_shape), b_dtype, name="B")
    a_op = _a_operand(a, mp, kp)
    acc = _accumulate(a_op, _b_pack(b, np_, kp, panel), batch)
    a_delta = -(a_shift(a_dtype) + a_zero)
    b_delta = b_shift(b_dtype) - b_zero
    col_term = row_term = None
    if a_delta:
        colsum = _batched(_col_sums(b, b_zero), 1)
        col_term = lambda outer, j: _i32(a_delta) * colsum(outer, j)  # noqa: E731
    if b_delta:
        rowsum = _batched(_row_sums(a_op), 1)
        row_term = lambda outer, i, j: _i32(b_delta) * rowsum(outer, i)  # noqa: E731
    out = _output(acc, (*batch, m, n), col_term, row_term)
    return _schedule(te.create_prim_func([a, b, out]), spec, mr, nv)


def conv_func(
    x_shape: Sequence[int],
    x_dtype: str,
    x_zero: int,
    out_channels: int,
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int],
    *,
    col_bias: bool,
    row_scale: bool,
    isa: str = "avx512-vnni",
) -> tirx.PrimFunc:
    """Scheduled 2-D ConvInteger (group 1) as ``im2col(x)[N·OH·OW, C·kh·kw] · Wᵀ``, written as [N, M, OH, OW].

    The weights are ``pack_weights(W.reshape(M, -1).T, w_zero, x_dtype, x_zero, isa)``; im2col is
    packed straight from x into uint8 (``a_pack``), where a padding pixel reads as the zero point
    (adds 0 once the correction is applied, as ONNX Runtime does) and K's and M's padding as 0.
    """
    spec = ISAS[isa]
    n, c, h, w = (int(d) for d in x_shape)
    kh, kw_ = (int(d) for d in kernel)
    sh, sw = (int(d) for d in strides)
    dh, dw = (int(d) for d in dilations)
    top, left = int(pads[0]), int(pads[1])
    _, _, oh, ow = conv_output_shape(x_shape, out_channels, kernel, strides, dilations, pads)
    k, rows = c * kh * kw_, n * oh * ow
    mr, nv = spec.tile(rows, out_channels)
    mp, kp = pad_to(rows, mr), pad_to(k, KW)
    shift = a_shift(x_dtype)
    x = te.placeholder((n, c, h, w), x_dtype, name="X")

    def im2col(r, kk):
        b, pixel = r // _i32(oh * ow), r % _i32(oh * ow)
        ci, rest = kk // _i32(kh * kw_), kk % _i32(kh * kw_)
        y = (pixel // _i32(ow)) * _i32(sh) + (rest // _i32(kw_)) * _i32(dh) - _i32(top)
        z = (pixel % _i32(ow)) * _i32(sw) + (rest % _i32(kw_)) * _i32(dw) - _i32(left)
        inside = tirx.all(y >= 0, y < h, z >= 0, z < w)
        raw = x(tirx.min(b, n - 1), tirx.min(ci, c - 1), tirx.max(tirx.min(y, h - 1), 0), tirx.max(tirx.min(z, w - 1), 0))
        value = tirx.if_then_else(inside, raw.astype("int16"), tirx.const(x_zero, "int16")) + tirx.const(shift, "int16")
        return tirx.if_then_else(tirx.all(r < rows, kk < k), value.astype("uint8"), tirx.const(0, "uint8"))

    a_op = te.compute((mp, kp), im2col, name="a_pack")
    weights, acc, col_term, row_term = _weight_product(a_op, out_channels, spec.panel(out_channels), col_bias, row_scale)
    out = _output(acc, (n, out_channels, oh, ow), col_term, row_term,
                  acc_index=lambda b, mm, y, z: ([], b * (oh * ow) + y * ow + z, mm))
    return _schedule(te.create_prim_func([x, *weights, out]), spec, mr, nv)
