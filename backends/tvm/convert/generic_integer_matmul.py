"""Plain TE int8 kernels: int32-accumulating MatMulInteger and ConvInteger for any target.

No schedule here: on CUDA dlight schedules them, on CPU graphopt's generic rules do. They are
also the fallback of the AVX2 path (dynamic shapes, zero points that are not constants, shapes
the packed kernels do not cover). Operands are widened to int32 before subtracting zero points,
so every product and sum is exact as in numpy's int32 matmul.
"""

from __future__ import annotations

from collections.abc import Sequence

from tvm import te, tirx

__all__ = ["conv_integer", "matmul_integer"]


def _is_one(dim) -> bool:
    return isinstance(dim, tirx.IntImm) and dim.value == 1


def _broadcast_load(tensor: te.Tensor, index: Sequence) -> tirx.Expr:
    """``tensor`` read at the right-aligned ``index`` (numpy broadcasting: size-1 axes read 0)."""
    offset = len(index) - len(tensor.shape)
    picked = [tirx.const(0, str(dim.ty.dtype)) if _is_one(dim) else index[axis + offset] for axis, dim in enumerate(tensor.shape)]
    return tensor(*picked)


def _batch_shape(a_batch: Sequence, b_batch: Sequence) -> list:
    rank = max(len(a_batch), len(b_batch))
    a_full = [None] * (rank - len(a_batch)) + list(a_batch)
    b_full = [None] * (rank - len(b_batch)) + list(b_batch)
    return [b if a is None or (_is_one(a) and b is not None) else a for a, b in zip(a_full, b_full, strict=True)]


def _centered(value: tirx.Expr, zero: te.Tensor | None, index: Sequence) -> tirx.Expr:
    value = value.astype("int32")
    return value if zero is None else value - _broadcast_load(zero, index).astype("int32")


def matmul_integer(a: te.Tensor, b: te.Tensor, a_zero: te.Tensor | None = None, b_zero: te.Tensor | None = None) -> te.Tensor:
    """int32 ``(A - a_zero) @ (B - b_zero)`` with numpy batch broadcasting; ranks >= 2.

    ``a_zero`` is a scalar or broadcasts against A with M on its second-to-last axis ([M, 1],
    [..., M, 1]); ``b_zero`` a scalar, [N] or [..., 1, N] (the converter reshapes a 1-D per-row
    ``a_zero`` to [M, 1]).
    """
    *a_batch, m, k_extent = a.shape
    *b_batch, _, n = b.shape
    batch = _batch_shape(a_batch, b_batch)
    k = te.reduce_axis((0, k_extent), name="k")

    def body(*index):
        *outer, i, j = index
        a_index = [*outer[len(outer) - len(a_batch):], i, k]
        b_index = [*outer[len(outer) - len(b_batch):], k, j]
        a_val = _centered(_broadcast_load(a, a_index), a_zero, a_index)
        b_val = _centered(_broadcast_load(b, b_index), b_zero, b_index)
        return te.sum(a_val * b_val, axis=k)

    return te.compute((*batch, m, n), body, name="matmul_integer")


def conv_integer(
    x: te.Tensor,
    w: te.Tensor,
    x_zero: te.Tensor | None,
    w_zero: te.Tensor | None,
    *,
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int],
    group: int,
) -> te.Tensor:
    """int32 N-D ``ConvInteger``: ``sum (x - x_zero) · (w - w_zero[m])``; padding reads as x_zero (adds 0).

    Any number of spatial axes (1-D [N, C, L], 2-D, 3-D, ...) and any ``group``: output channel m
    reads input channels ``(m // (M / group)) · C/group + ci``. ``pads`` = [begin..., end...] per
    spatial axis (ONNX's order); ``w_zero`` is a scalar or one per output channel [M].
    """
    n, _, *spatial = (int(d) for d in x.shape)
    m, c_per_group, *kernel = (int(d) for d in w.shape)
    rank = len(spatial)
    begin, end = list(pads[:rank]), list(pads[rank:])
    out = [(size + b + e - d * (k - 1) - 1) // s + 1
           for size, b, e, d, k, s in zip(spatial, begin, end, dilations, kernel, strides, strict=True)]
    m_per_group = m // group
    ci = te.reduce_axis((0, c_per_group), name="ci")
    taps = [te.reduce_axis((0, k), name=f"r{axis}") for axis, k in enumerate(kernel)]

    def body(b, mm, *o):
        at = [o[a] * strides[a] + taps[a] * dilations[a] - begin[a] for a in range(rank)]
        channel = (mm // m_per_group) * c_per_group + ci
        inside = tirx.all(*[cond for a in range(rank) for cond in (at[a] >= 0, at[a] < spatial[a])])
        raw = x(b, channel, *[tirx.max(tirx.min(at[a], spatial[a] - 1), 0) for a in range(rank)])
        x_val = tirx.if_then_else(inside, _centered(raw, x_zero, []), tirx.const(0, "int32"))
        w_val = _centered(w(mm, ci, *taps), w_zero, [mm])
        return te.sum(x_val * w_val, axis=[ci, *taps])

    return te.compute((n, m, *out), body, name="conv_integer")
