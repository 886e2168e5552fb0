"""Pre-scheduled, exact int8 matmul kernels on a CPU dot-product instruction (sdot, vpdpbusd).

The targets differ only in their ``DotInstruction``: the tensor intrinsic, its int32 lanes, the
8-bit type it multiplies A as (int8 for ``sdot``, uint8 for ``vpdpbusd``; B is int8 for both) and
the register tile (``cpu/arm/sdot_matmul``, ``cpu/x86/vnni_matmul``). Everything else is here.

One loop nest serves every product: ``acc[b, i, j] = sum_k A'[b?, i, k] · Bp[b?, j/P, k/4, j%P, k%4]``
(int32), tensorized with the instruction. An operand whose type is not the instruction's is
shifted by 128 first, exactly:

    A - za = A' + da      A' = A + sa,  da = -(sa + za)
    B - zb = B' + db      B' = B + sb,  db = -(sb + zb)

    sum_k (A - za)(B - zb) = sum_k A'·B'  +  da · colsum(B - zb)[j]  +  db[j] · rowsum(A')[i]

with ``sa``, ``sb`` (``DotInstruction.a_shift`` / ``b_shift``) 0 for an operand already of the
instruction's type, else +128 (int8 -> uint8) or -128 (uint8 -> int8).

The two correction terms are added by the ``out`` stage and exist only when needed (constant
weights have theirs precomputed in numpy with the packing). Every sum is taken in int32, as numpy's
int32 matmul does, so results are bit-exact.

Constant weights are packed once in numpy (``pack_weights``: int8 ``[Np/P, Kp/4, P, 4]`` with the
panel width P = lanes·nv the tile's columns, so one k step of a tile reads P·4 contiguous bytes,
4·lanes per instruction); run-time B (attention) is packed by a ``b_pack`` stage inside the
function. M is padded to the row tile and N to the column tile (``a_pack`` / ``b_pack`` write zeros
there, ``out`` drops them).

Schedule: an ``mr × (nv·lanes)`` tile of int32 accumulators, loops ``(batch, column panel) parallel
-> row tile -> k step -> rows, vectors unrolled -> the instruction``; the column panel of B stays in
L1 while A's rows stream past. The result carries ``tirx.is_scheduled`` so graphopt's generic CPU
rules leave it alone.

``conv_func`` reuses the weight kernel for 2-D ConvInteger: the ``a_pack`` stage is im2col (one
row per output pixel) and the ``out`` stage writes [N, M, OH, OW].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tvm
from tvm import te, tirx

from .common import has_block, pad_to

__all__ = [
    "DotInstruction",
    "PackedWeights",
    "activation_matmul_func",
    "conv_func",
    "conv_output_shape",
    "pack_weights",
    "schedule_dot_matmul",
    "weight_matmul_func",
]

KW = 4  # 8-bit values of one A row that one lane of the instruction sums
SCHEDULED_ATTR = "tirx.is_scheduled"
UINT8_SHIFT = 128  # int8 + 128 is uint8, uint8 - 128 is int8


@dataclasses.dataclass(frozen=True)
class DotInstruction:
    """One dot-product instruction (``lanes`` int32 lanes += ``KW`` products each) and the kernels' tile on it."""

    name: str  # ends the kernel names: graphopt_int8_matmul_<name>
    intrin: str  # the tensor intrinsic (``lanes`` × ``KW``)
    lanes: int
    a_dtype: str  # what the instruction multiplies A as, "int8" or "uint8"; B is int8
    mr: int  # accumulator rows per tile
    nv: int  # accumulator registers per row
    inline_output: bool = False  # add the corrections in the accumulator write-back (see schedule_dot_matmul)
    max_k: int | None = None  # the longest reduction the kernels keep exact; None: any

    def tile(self, m: int, n: int) -> tuple[int, int]:
        """(rows, registers per row) of the accumulator tile: as large as the matrix allows, at most mr × nv."""
        return max(1, min(self.mr, m)), max(1, min(self.nv, pad_to(n, self.lanes) // self.lanes))

    def panel(self, n: int) -> int:
        """Columns of one packed B panel (depends on N only, so weights can be packed before M is known)."""
        return self.lanes * self.tile(1, n)[1]

    def a_shift(self, dtype: str) -> int:
        """What is added to A of ``dtype`` to make it the instruction's type: 0, 128 or -128."""
        self._check(dtype)
        if dtype == self.a_dtype:
            return 0
        return UINT8_SHIFT if self.a_dtype == "uint8" else -UINT8_SHIFT

    def b_shift(self, dtype: str) -> int:
        """What is added to B of ``dtype`` to make it int8: -128 for uint8, else 0."""
        self._check(dtype)
        return -UINT8_SHIFT if dtype == "uint8" else 0

    def _check(self, dtype: str) -> None:
        if dtype not in ("int8", "uint8"):
            raise ValueError(f"the {self.name} kernels take int8 or uint8 operands, got {dtype}")


@dataclasses.dataclass(frozen=True)
class PackedWeights:
    """Constant B [K, N] ready for the kernel: int8 ``packed`` [Np/P, Kp/4, P, 4] holds B';
    ``col_bias`` [N] = da · colsum(B - zb) and ``row_scale`` [N] = db (int32) are None when zero."""

    k: int
    n: int
    packed: np.ndarray
    col_bias: np.ndarray | None
    row_scale: np.ndarray | None


def pack_weights(
    b: np.ndarray, b_zero: np.ndarray | int, a_dtype: str, a_zero: int, *, isa: DotInstruction
) -> PackedWeights:
    """Pack int8/uint8 weights ``b`` [K, N] with zero point ``b_zero`` (scalar or [N]) for A of ``a_dtype``/``a_zero``."""
    k, n = b.shape
    b_shift = isa.b_shift(str(b.dtype))
    panel = isa.panel(n)
    kp, np_ = pad_to(k, KW), pad_to(n, panel)
    padded = np.zeros((kp, np_), np.int8)
    padded[:k, :n] = (b.astype(np.int16) + b_shift).astype(np.int8)
    # [Kp, Np] -> [Kp/4, 4, Np/P, P] -> [Np/P, Kp/4, P (columns), 4 (k)]
    packed = np.ascontiguousarray(padded.reshape(kp // KW, KW, np_ // panel, panel).transpose(2, 0, 3, 1))
    zero = np.broadcast_to(np.asarray(b_zero, np.int64).reshape(-1), (n,))
    a_delta = -(isa.a_shift(a_dtype) + int(a_zero))
    b_delta = -b_shift - zero
    # int64 sums wrapped to int32: the same bits numpy's int32 matmul produces.
    col_bias = (a_delta * (b.astype(np.int64) - zero).sum(axis=0)).astype(np.int32) if a_delta else None
    row_scale = b_delta.astype(np.int32) if b_delta.any() else None
    return PackedWeights(k, n, packed, col_bias, row_scale)


def _i32(value: int) -> tirx.Expr:
    return tirx.const(int(value), "int32")


def _shifted(value: tirx.Expr, shift: int, dtype: str) -> tirx.Expr:
    """``value + shift`` as ``dtype``, exact (the sum is taken in int16); ``value`` itself when ``shift`` is 0."""
    if not shift:
        return value
    wide = value.astype("int16")
    wide = wide + tirx.const(shift, "int16") if shift > 0 else wide - tirx.const(-shift, "int16")
    return wide.astype(dtype)


def _a_operand(a: te.Tensor, mp: int, kp: int, isa: DotInstruction) -> te.Tensor:
    """A' [*batch, Mp, Kp] in the instruction's type (A shifted, zeros in the padding); ``a`` when nothing changes."""
    *outer_shape, m, k = (int(d) for d in a.shape)
    shift = isa.a_shift(str(a.dtype))
    if not shift and (mp, kp) == (m, k):
        return a

    def load(*index):
        *outer, i, kk = index
        value = _shifted(a(*outer, tirx.min(i, m - 1), tirx.min(kk, k - 1)), shift, isa.a_dtype)  # clamped: in bounds
        if (mp, kp) == (m, k):
            return value
        return tirx.if_then_else(tirx.all(i < m, kk < k), value, tirx.const(0, isa.a_dtype))

    return te.compute((*outer_shape, mp, kp), load, name="a_pack")


def _b_pack(b: te.Tensor, np_: int, kp: int, panel: int, isa: DotInstruction) -> te.Tensor:
    """Run-time B [*batch, K, N] -> int8 Bp [*batch, Np/P, Kp/4, P, 4] (B', zeros in the padding)."""
    *outer_shape, k, n = (int(d) for d in b.shape)
    shift = isa.b_shift(str(b.dtype))

    def load(*index):
        *outer, jo, ko, ji, ki = index
        kk, jj = ko * KW + ki, jo * panel + ji
        value = _shifted(b(*outer, tirx.min(kk, k - 1), tirx.min(jj, n - 1)), shift, "int8")
        if (kp, np_) == (k, n):
            return value
        return tirx.if_then_else(tirx.all(kk < k, jj < n), value, tirx.const(0, "int8"))

    return te.compute((*outer_shape, np_ // panel, kp // KW, panel, KW), load, name="b_pack")


def _accumulate(a_op: te.Tensor, bp: te.Tensor, batch: Sequence[int]) -> te.Tensor:
    """acc[*batch, Mp, Np] = A' · B' (int32); A' and Bp may each have the batch dims or none."""
    a_batched, b_batched = len(a_op.shape) > 2, len(bp.shape) > 4
    panel = int(bp.shape[-2])
    mp, np_ = int(a_op.shape[-2]), int(bp.shape[-4]) * panel
    k = te.reduce_axis((0, int(a_op.shape[-1])), name="k")

    def body(*index):
        *outer, i, j = index
        a_val = a_op(*(outer if a_batched else []), i, k)
        b_val = bp(*(outer if b_batched else []), j // panel, k // KW, j % panel, k % KW)
        return te.sum(a_val.astype("int32") * b_val.astype("int32"), axis=k)

    return te.compute((*batch, mp, np_), body, name="acc")


def _row_sums(a_op: te.Tensor) -> te.Tensor:
    """rowsum[*batch, Mp] = sum_k A' (int32), for B's correction term db · rowsum(A')."""
    k = te.reduce_axis((0, int(a_op.shape[-1])), name="k")
    shape = tuple(int(d) for d in a_op.shape[:-1])
    return te.compute(shape, lambda *index: te.sum(a_op(*index, k).astype("int32"), axis=k), name="rowsum")


def _col_sums(b: te.Tensor, b_zero: int) -> te.Tensor:
    """colsum[*batch, N] = sum_k (B - zb) (int32), for A's correction term da · colsum."""
    *outer_shape, k_extent, n = (int(d) for d in b.shape)
    k = te.reduce_axis((0, k_extent), name="k")

    def body(*index):
        *outer, j = index
        return te.sum(b(*outer, k, j).astype("int32") - _i32(b_zero), axis=k)

    return te.compute((*outer_shape, n), body, name="colsum")


def _output(acc: te.Tensor, shape: Sequence[int], col_term, row_term, acc_index=None) -> te.Tensor:
    """out = acc + col_term(outer, j) + row_term(outer, i, j), the padding dropped; ``acc`` when nothing to do.

    ``acc_index(*out_index) -> (outer, i, j)`` says where an output element lives in ``acc``
    (default: the same index; a convolution maps [N, M, OH, OW] to acc's [pixel, channel]).
    """
    if acc_index is None:
        if col_term is None and row_term is None and [int(d) for d in acc.shape] == list(shape):
            return acc
        acc_index = lambda *index: (list(index[:-2]), index[-2], index[-1])  # noqa: E731

    def body(*index):
        outer, i, j = acc_index(*index)
        value = acc(*outer, i, j)
        if col_term is not None:
            value = value + col_term(outer, j)
        if row_term is not None:
            value = value + row_term(outer, i, j)
        return value

    return te.compute(tuple(shape), body, name="out")


def _batched(tensor: te.Tensor, rank: int):
    """A reader of ``tensor`` that drops the batch index when the tensor has no batch dims."""
    return lambda outer, *rest: tensor(*(outer if len(tensor.shape) > rank else []), *rest)


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


def weight_matmul_func(
    m: int, k: int, n: int, a_dtype: str, *, col_bias: bool, row_scale: bool, isa: DotInstruction
) -> tirx.PrimFunc:
    """Scheduled ``A[M, K] · B -> int32[M, N]`` for constant B packed by ``pack_weights``.

    Parameters: ``A``, ``Bp`` (``PackedWeights.packed``), then ``col_bias`` and ``row_scale`` [N] int32
    when asked for (the ones ``pack_weights`` did not leave None; A's zero point lives in ``col_bias``),
    then the output.
    """
    mr, nv = isa.tile(m, n)
    a = te.placeholder((m, k), a_dtype, name="A")
    a_op = _a_operand(a, pad_to(m, mr), pad_to(k, KW), isa)
    weights, acc, col_term, row_term = _weight_product(a_op, n, isa.panel(n), col_bias, row_scale)
    out = _output(acc, (m, n), col_term, row_term)
    return schedule_dot_matmul(te.create_prim_func([a, *weights, out]), isa, mr, nv)


def conv_output_shape(x_shape, out_channels: int, kernel, strides, dilations, pads) -> list[int]:
    """[N, M, OH, OW] of a 2-D convolution; ``pads`` = [top, left, bottom, right]."""
    n, _, h, w = (int(d) for d in x_shape)
    top, left, bottom, right = (int(d) for d in pads)
    oh = (h + top + bottom - int(dilations[0]) * (int(kernel[0]) - 1) - 1) // int(strides[0]) + 1
    ow = (w + left + right - int(dilations[1]) * (int(kernel[1]) - 1) - 1) // int(strides[1]) + 1
    return [n, int(out_channels), oh, ow]


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
    isa: DotInstruction,
) -> tirx.PrimFunc:
    """Scheduled 2-D ConvInteger (group 1) as ``im2col(x)[N·OH·OW, C·kh·kw] · Wᵀ``, written as [N, M, OH, OW].

    The weights are ``pack_weights(W.reshape(M, -1).T, w_zero, x_dtype, x_zero, isa=isa)`` (output
    channels are its columns); im2col is packed straight from x into the instruction's type
    (``a_pack``), where a padding pixel reads as the zero point (adds 0 once the correction is
    applied, as ONNX Runtime does) and K's and M's padding as 0.
    """
    n, c, h, w = (int(d) for d in x_shape)
    kh, kw_ = (int(d) for d in kernel)
    sh, sw = (int(d) for d in strides)
    dh, dw = (int(d) for d in dilations)
    top, left = int(pads[0]), int(pads[1])
    _, _, oh, ow = conv_output_shape(x_shape, out_channels, kernel, strides, dilations, pads)
    k, rows = c * kh * kw_, n * oh * ow
    mr, nv = isa.tile(rows, out_channels)
    mp, kp = pad_to(rows, mr), pad_to(k, KW)
    shift = isa.a_shift(x_dtype)
    x = te.placeholder((n, c, h, w), x_dtype, name="X")

    def im2col(r, kk):
        b, pixel = r // _i32(oh * ow), r % _i32(oh * ow)
        ci, rest = kk // _i32(kh * kw_), kk % _i32(kh * kw_)
        y = (pixel // _i32(ow)) * _i32(sh) + (rest // _i32(kw_)) * _i32(dh) - _i32(top)
        z = (pixel % _i32(ow)) * _i32(sw) + (rest % _i32(kw_)) * _i32(dw) - _i32(left)
        inside = tirx.all(y >= 0, y < h, z >= 0, z < w)
        raw = x(tirx.min(b, n - 1), tirx.min(ci, c - 1), tirx.max(tirx.min(y, h - 1), 0), tirx.max(tirx.min(z, w - 1), 0))
        value = tirx.if_then_else(inside, raw.astype("int16"), tirx.const(x_zero, "int16"))
        value = _shifted(value, shift, isa.a_dtype)
        return tirx.if_then_else(tirx.all(r < rows, kk < k), value.astype(isa.a_dtype), tirx.const(0, isa.a_dtype))

    a_op = te.compute((mp, kp), im2col, name="a_pack")
    weights, acc, col_term, row_term = _weight_product(a_op, out_channels, isa.panel(out_channels), col_bias, row_scale)
    out = _output(acc, (n, out_channels, oh, ow), col_term, row_term,
                  acc_index=lambda b, mm, y, z: ([], b * (oh * ow) + y * ow + z, mm))
    return schedule_dot_matmul(te.create_prim_func([x, *weights, out]), isa, mr, nv)


def activation_matmul_func(
    a_shape: Sequence[int], a_dtype: str, b_shape: Sequence[int], b_dtype: str, *, a_zero: int = 0, b_zero: int = 0,
    isa: DotInstruction,
) -> tirx.PrimFunc:
    """Scheduled ``(A - a_zero)[*batch, M, K] · (B - b_zero)[*batch, K, N] -> int32[*batch, M, N]``, both at run time.

    Either side may lack the batch dims; when both have them they must be equal. Zero points are scalars.
    """
    *a_batch, m, k = (int(d) for d in a_shape)
    *b_batch, kb, n = (int(d) for d in b_shape)
    if kb != k or (a_batch and b_batch and a_batch != b_batch):
        raise ValueError(f"activation_matmul_func: shapes {list(a_shape)} x {list(b_shape)} need equal K and batch dims")
    batch = a_batch or b_batch
    mr, nv = isa.tile(m, n)
    panel = isa.lanes * nv
    mp, kp, np_ = pad_to(m, mr), pad_to(k, KW), pad_to(n, panel)
    a = te.placeholder(tuple(a_shape), a_dtype, name="A")
    b = te.placeholder(tuple(b_shape), b_dtype, name="B")
    a_op = _a_operand(a, mp, kp, isa)
    acc = _accumulate(a_op, _b_pack(b, np_, kp, panel, isa), batch)
    a_delta = -(isa.a_shift(a_dtype) + a_zero)
    b_delta = -isa.b_shift(b_dtype) - b_zero
    col_term = row_term = None
    if a_delta:
        colsum = _batched(_col_sums(b, b_zero), 1)
        col_term = lambda outer, j: _i32(a_delta) * colsum(outer, j)  # noqa: E731
    if b_delta:
        rowsum = _batched(_row_sums(a_op), 1)
        row_term = lambda outer, i, j: _i32(b_delta) * rowsum(outer, i)  # noqa: E731
    out = _output(acc, (*batch, m, n), col_term, row_term)
    return schedule_dot_matmul(te.create_prim_func([a, b, out]), isa, mr, nv)


# ---- schedule ---------------------------------------------------------------------------------


def _parallel(sch: tvm.s_tir.Schedule, loops: list) -> None:
    if loops:
        sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])


def _schedule_rows(sch: tvm.s_tir.Schedule, block) -> None:
    """An elementwise stage: rows in parallel, the contiguous last axis vectorized when it splits evenly."""
    *outer, inner = sch.get_loops(block)
    _parallel(sch, outer)
    for lanes in (16, 8, 4):
        if int(sch.get(inner).extent) % lanes == 0:
            sch.vectorize(sch.split(inner, [None, lanes])[1])
            return


def _schedule_b_pack(sch: tvm.s_tir.Schedule, block) -> None:
    """Packing of a run-time B: panels in parallel; per k step the panel's columns are read contiguously."""
    *batch, jo, ko, ji, ki = sch.get_loops(block)
    _parallel(sch, [*batch, jo])
    sch.reorder(ko, ki, ji)
    sch.unroll(ki)
    sch.vectorize(ji)


def _schedule_sums(sch: tvm.s_tir.Schedule, block) -> None:
    """rowsum / colsum: O(M·K) or O(K·N) next to the O(M·N·K) product; outer spatial loops in parallel."""
    *spatial, _ = sch.get_loops(block)
    _parallel(sch, spatial)


def _inline_output(sch: tvm.s_tir.Schedule) -> bool:
    """Fold the ``out`` stage into the accumulator write-back (the correction terms are added while the
    tile is still in registers: one pass over the output fewer); False where TVM cannot (padding
    dropped, a convolution's transposed output), and ``out`` stays a stage of its own."""
    try:
        sch.reverse_compute_inline(sch.get_sblock("out"))
    except tvm.s_tir.ScheduleError:
        return False
    return True


def schedule_dot_matmul(func: tirx.PrimFunc, isa: DotInstruction, mr: int, nv: int) -> tirx.PrimFunc:
    """Schedule a PrimFunc of ``acc`` plus the optional ``a_pack``/``b_pack``/``rowsum``/``colsum``/``out`` stages.

    The innermost ``lanes × 4`` block is tensorized with ``isa.intrin``. With ``isa.inline_output``
    the ``out`` stage's corrections are added in the write-back where possible (measured on x86
    VNNI: 3-9% per weight matmul; not yet measured on an aarch64 device, so off for sdot).
    """
    sch = tvm.s_tir.Schedule(func)
    stages = (("a_pack", _schedule_rows), ("b_pack", _schedule_b_pack), ("rowsum", _schedule_sums),
              ("colsum", _schedule_sums))
    for stage, scheduler in stages:
        if has_block(sch, stage):
            scheduler(sch, sch.get_sblock(stage))

    acc = sch.get_sblock("acc")
    *batch_loops, i, j, k = sch.get_loops(acc)
    io, ii = sch.split(i, [None, mr])
    jo, jv, ji = sch.split(j, [None, nv, isa.lanes])
    ko, ki = sch.split(k, [None, KW])
    sch.reorder(*batch_loops, jo, io, ko, ii, jv, ji, ki)
    _parallel(sch, [*batch_loops, jo])
    write_back = sch.cache_write(acc, 0, "local")
    sch.reverse_compute_at(write_back, io)
    if has_block(sch, "out") and not (isa.inline_output and _inline_output(sch)):
        _schedule_rows(sch, sch.get_sblock("out"))
    init = sch.decompose_reduction(acc, ko)
    sch.tensorize(ji, isa.intrin)
    sch.unroll(ii)
    sch.unroll(jv)
    sch.vectorize(sch.get_loops(init)[-1])
    _, vector = sch.split(sch.get_loops(write_back)[-1], [None, isa.lanes])
    sch.vectorize(vector)
    return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)
