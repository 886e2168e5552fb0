"""Pre-scheduled AVX2 int8 matmul kernels (TE + ``s_tir.Schedule`` + the tensor intrinsics).

One loop nest serves every int8 product::

    acc[b, i, j] = sum_k A[b?, i, k] * Bp[b?, j/8, k/kw, j%8, k%kw]          (int32)

``A`` is read row-wise (kw values broadcast per step), ``Bp`` is B in the packed layout of
``avx2_weight_layout.py`` — a relax constant (weights, packed in numpy at import) or a ``b_pack`` stage in the
same PrimFunc (activations: K of attention, im2col of a convolution). Two kinds:

- ``"s8-sign"``: int8 A, int8 Bp in [-127, 127], kw = 4, intrinsic ``DOT_8x4_S8_SIGN``
  (vpabsb/vpsignb/vpmaddubsw/vpmaddwd; the no-saturation proof is in ``avx2_intrin.py``).
- ``"i16"``: int16 A and Bp (operand minus zero point, made by the pack stages), kw = 2,
  intrinsic ``DOT_8x2_I16`` (one vpmaddwd per 16 products). Exact for any int8/uint8 input.

Schedule: a MR×(NV·8) register tile of int32 accumulators (``cache_write`` to ``local``, kept in
ymm registers), loops ``(batch, j-panel) parallel -> i-tile -> k-step -> ii, jv unrolled ->
tensorized 8×kw``; each B panel stays in L1 while every A row streams past it. K is zero-padded
to kw and N to 8 inside the function (pad stages), the output is written unpadded. The result
carries ``tirx.is_scheduled`` so graphopt's generic CPU rules leave it alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tvm
from tvm import te, tirx

from graphopt.backends.tvm.cpu.common import has_block, pad_to

from . import avx2_intrin

__all__ = ["KINDS", "conv_func", "matmul_func", "schedule_packed_matmul"]

KINDS = {"s8-sign": (avx2_intrin.DOT_8x4_S8_SIGN, 4, "int8"), "i16": (avx2_intrin.DOT_8x2_I16, 2, "int16")}
MR = 2  # accumulator rows per tile
NV = 4  # accumulator ymm vectors (8 int32 each) per row: 2×4 tile = 8 accumulators + 4 B + 2 A registers
SCHEDULED_ATTR = "tirx.is_scheduled"


def _i32(value: int) -> tirx.Expr:
    return tirx.const(int(value), "int32")


def _centered(value: tirx.Expr, dtype: str, zero_point: int) -> tirx.Expr:
    """``value - zero_point`` in ``dtype`` (int16 holds any int8/uint8 value minus any zero point)."""
    cast = value.astype(dtype)
    return cast - tirx.const(zero_point, dtype) if zero_point else cast


def _a_operand(a: te.Tensor, kind: str, zero_point: int) -> te.Tensor:
    """A as the kernel reads it: int16 minus its zero point ("i16"), K padded to kw; ``a`` itself when nothing changes."""
    _, kw, dtype = KINDS[kind]
    k = int(a.shape[-1])
    kp = pad_to(k, kw)
    if kp == k and str(a.dtype) == dtype and not zero_point:
        return a

    def load(*index):
        *outer, kk = index
        value = _centered(a(*outer, kk), dtype, zero_point)
        return value if kp == k else tirx.if_then_else(kk < k, value, tirx.const(0, dtype))

    return te.compute((*[int(d) for d in a.shape[:-1]], kp), load, name="a_pack")


def _b_pack(batch: Sequence[int], k: int, n: int, kind: str, value: Callable) -> te.Tensor:
    """Bp[*batch, N8/8, Kp/kw, 8, kw] = value(batch_index, k, j) (zero in the padding)."""
    _, kw, dtype = KINDS[kind]
    kp, n8 = pad_to(k, kw), pad_to(n, 8)

    def load(*index):
        *outer, jo, ko, ji, ki = index
        kk, jj = ko * kw + ki, jo * 8 + ji
        inside = tirx.all(kk < k, jj < n) if (kp != k or n8 != n) else None
        v = value(outer, kk, jj)
        return v if inside is None else tirx.if_then_else(inside, v, tirx.const(0, dtype))

    return te.compute((*batch, n8 // 8, kp // kw, 8, kw), load, name="b_pack")


def _accumulate(a_op: te.Tensor, bp: te.Tensor, batch: Sequence[int], m: int, kind: str) -> te.Tensor:
    """acc[*batch, M, N8] (int32); A and Bp may each have the batch dims or none."""
    _, kw, _ = KINDS[kind]
    a_batched = len(a_op.shape) > 2
    b_batched = len(bp.shape) > 4
    n8 = int(bp.shape[-4]) * 8
    k = te.reduce_axis((0, int(a_op.shape[-1])), name="k")

    def body(*index):
        *outer, i, j = index
        a_val = a_op(*(outer if a_batched else []), i, k)
        b_val = bp(*(outer if b_batched else []), j // 8, k // kw, j % 8, k % kw)
        return te.sum(a_val.astype("int32") * b_val.astype("int32"), axis=k)

    return te.compute((*batch, m, n8), body, name="acc")


def _unpad(acc: te.Tensor, shape: Sequence[int], index_map: Callable | None = None) -> te.Tensor:
    """The output without the N padding (or reshaped by ``index_map``); ``acc`` itself when it already is."""
    if index_map is None and [int(d) for d in acc.shape] == list(shape):
        return acc
    index_map = index_map or (lambda *index: index)
    return te.compute(tuple(shape), lambda *index: acc(*index_map(*index)), name="out")


def _tile(extent: int, options: Sequence[int]) -> int:
    return next(t for t in options if extent % t == 0)


def _vectorize_inner(sch: tvm.s_tir.Schedule, loop, lanes: int) -> None:
    if int(sch.get(loop).extent) % lanes == 0:
        sch.vectorize(sch.split(loop, [None, lanes])[1])


def _schedule_rows(sch: tvm.s_tir.Schedule, block) -> None:
    """An elementwise stage: rows in parallel, the contiguous last axis vectorized."""
    *outer, inner = sch.get_loops(block)
    if outer:
        sch.parallel(sch.fuse(*outer))
    _vectorize_inner(sch, inner, 8)


def _schedule_b_pack(sch: tvm.s_tir.Schedule, block) -> None:
    """Packing of a run-time B: panels in parallel; per k-step the 8 columns are read contiguously."""
    *batch, jo, ko, ji, ki = sch.get_loops(block)
    sch.parallel(sch.fuse(*batch, jo) if batch else jo)
    sch.reorder(ko, ki, ji)
    sch.unroll(ki)
    sch.vectorize(ji)


def schedule_packed_matmul(func: tirx.PrimFunc, kind: str) -> tirx.PrimFunc:
    """Schedule a PrimFunc made of optional ``a_pack``/``b_pack`` stages, ``acc`` and an optional ``out``."""
    intrin, kw, _ = KINDS[kind]
    sch = tvm.s_tir.Schedule(func)
    for stage, scheduler in (("a_pack", _schedule_rows), ("b_pack", _schedule_b_pack), ("out", _schedule_rows)):
        if has_block(sch, stage):
            scheduler(sch, sch.get_sblock(stage))

    acc = sch.get_sblock("acc")
    *batch_loops, i, j, k = sch.get_loops(acc)
    m, n8 = (int(sch.get(loop).extent) for loop in (i, j))
    mr = _tile(m, (MR, 1))
    nv = _tile(n8 // 8, (NV, 3, 2, 1))
    io, ii = sch.split(i, [None, mr])
    jo, jv, ji = sch.split(j, [None, nv, 8])
    ko, ki = sch.split(k, [None, kw])
    sch.reorder(*batch_loops, jo, io, ko, ii, jv, ji, ki)
    sch.parallel(sch.fuse(*batch_loops, jo) if batch_loops else jo)
    write_back = sch.cache_write(acc, 0, "local")
    sch.reverse_compute_at(write_back, io)
    init = sch.decompose_reduction(acc, ko)
    sch.tensorize(ji, intrin)
    sch.unroll(ii)
    sch.unroll(jv)
    sch.vectorize(sch.get_loops(init)[-1])
    _, lanes = sch.split(sch.get_loops(write_back)[-1], [None, 8])
    sch.vectorize(lanes)
    return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)


def matmul_func(
    a_shape: Sequence[int],
    a_dtype: str,
    b_shape: Sequence[int],
    b_dtype: str,
    *,
    kind: str,
    a_zero: int = 0,
    b_zero: int = 0,
    packed_n: int | None = None,
) -> tirx.PrimFunc:
    """Scheduled ``A[*batch, M, K] · B -> int32[*batch, M, N]``.

    With ``packed_n`` (the true N), B is already in the kernel layout (``avx2_weight_layout.packed_shape``, a
    constant whose zero point was applied in numpy). Otherwise B is ``[*batch, K, N]`` or ``[K, N]``,
    packed inside the function (minus ``b_zero``); batch dims of A and B must be equal when both have them.
    """
    a = te.placeholder(tuple(a_shape), a_dtype, name="A")
    b = te.placeholder(tuple(b_shape), b_dtype, name="B")
    *a_batch, m, k = (int(d) for d in a_shape)
    if packed_n is not None:
        n, b_batch, bp = packed_n, [], b
    else:
        *b_batch, kb, n = (int(d) for d in b_shape)
        if kb != k or (a_batch and b_batch and a_batch != b_batch):
            raise ValueError(f"matmul_func: shapes {list(a_shape)} x {list(b_shape)} need equal K and batch dims")
        dtype, rank_b = KINDS[kind][2], len(b_batch)
        bp = _b_pack(b_batch, k, n, kind, lambda outer, kk, jj: _centered(b(*outer[:rank_b], kk, jj), dtype, b_zero))
    batch = a_batch or b_batch
    acc = _accumulate(_a_operand(a, kind, a_zero), bp, batch, m, kind)
    return schedule_packed_matmul(te.create_prim_func([a, b, _unpad(acc, (*batch, m, n))]), kind)


def conv_func(
    x_shape: Sequence[int],
    x_dtype: str,
    x_zero: int,
    weight_shape: Sequence[int],
    out_channels: int,
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int],
) -> tirx.PrimFunc:
    """Scheduled 2-D ConvInteger (group 1) as ``W[M, C·kh·kw] · im2col(x)`` with the "i16" kernel.

    ``weight_shape`` is the int16 ``[M, K2]`` weight minus its zero point (not packed: A rows
    are read in place); im2col is packed straight from x (pads read as the zero point, i.e. 0
    after centering, as ONNX Runtime does) and the output is written as ``[N, M, OH, OW]``.
    """
    n, c, h, w = (int(d) for d in x_shape)
    kh, kw_ = (int(d) for d in kernel)
    sh, sw = (int(d) for d in strides)
    dh, dw = (int(d) for d in dilations)
    top, left, bottom, right = (int(d) for d in pads)
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (w + left + right - dw * (kw_ - 1) - 1) // sw + 1
    k, p = c * kh * kw_, oh * ow
    x = te.placeholder((n, c, h, w), x_dtype, name="X")
    weight = te.placeholder(tuple(weight_shape), "int16", name="W")

    def im2col(outer, kk, jj):
        ci, rest = kk // _i32(kh * kw_), kk % _i32(kh * kw_)
        r, s = rest // _i32(kw_), rest % _i32(kw_)
        y = (jj // _i32(ow)) * _i32(sh) + r * _i32(dh) - _i32(top)
        z = (jj % _i32(ow)) * _i32(sw) + s * _i32(dw) - _i32(left)
        inside = tirx.all(y >= 0, y < h, z >= 0, z < w)
        safe = x(outer[0], ci, tirx.max(tirx.min(y, h - 1), 0), tirx.max(tirx.min(z, w - 1), 0))
        return tirx.if_then_else(inside, _centered(safe, "int16", x_zero), tirx.const(0, "int16"))

    bp = _b_pack([n], k, p, "i16", im2col)
    acc = _accumulate(weight, bp, [n], out_channels, "i16")
    out = _unpad(acc, (n, out_channels, oh, ow), lambda b, mm, y, z: (b, mm, y * ow + z))
    return schedule_packed_matmul(te.create_prim_func([x, weight, out]), "i16")
