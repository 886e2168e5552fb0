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
    """int32 2-D ``ConvInteger``: ``sum (x - x_zero) · (w - w_zero[m])``; padding reads as x_zero (adds 0).

    ``pads`` = [top, left, bottom, right]; ``w_zero`` is a scalar or one per output channel [M].
    """
    n, _, h, width = (int(d) for d in x.shape)
    m, c_per_group, kh, kw = (int(d) for d in w.shape)
    sh, sw = strides
    dh, dw = dilations
    top, left, bottom, right = pads
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (width + left + right - dw * (kw - 1) - 1) // sw + 1
    m_per_group = m // group
    ci = te.reduce_axis((0, c_per_group), name="ci")
    r = te.reduce_axis((0, kh), name="r")
    s = te.reduce_axis((0, kw), name="s")

    def body(b, mm, oy, ox):
        y = oy * sh + r * dh - top
        z = ox * sw + s * dw - left
        channel = (mm // m_per_group) * c_per_group + ci
        inside = tirx.all(y >= 0, y < h, z >= 0, z < width)
        raw = x(b, channel, tirx.max(tirx.min(y, h - 1), 0), tirx.max(tirx.min(z, width - 1), 0))
        x_val = tirx.if_then_else(inside, _centered(raw, x_zero, []), tirx.const(0, "int32"))
        w_val = _centered(w(mm, ci, r, s), w_zero, [mm])
        return te.sum(x_val * w_val, axis=[ci, r, s])

    return te.compute((n, m, oh, ow), body, name="conv_integer")
