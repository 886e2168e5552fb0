"""Torch versions of ONNX's shape, layout and indexing ops (``CONVERTERS``: op type -> function).

Shapes, axes, pads and indices arrive as int64 tensors (ONNX inputs) or lists (older opsets'
attributes of the same name); ``_ints`` reads either. Negative indices count from the end, as in
ONNX; ``Slice`` clamps like Python slicing, which is ONNX's rule.
"""

from __future__ import annotations

import math

import torch

from graphopt.errors import UnsupportedError

__all__ = ["CONVERTERS"]


def _ints(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    return [int(v) for v in value]


def _positive(indices: torch.Tensor, size) -> torch.Tensor:
    return torch.where(indices < 0, indices + size, indices)


def shape(data, start=0, end=None):
    return torch.tensor(data.shape[start:end], dtype=torch.int64)


def size(data):
    return torch.tensor(data.numel(), dtype=torch.int64)


def reshape(data, shape, allowzero=0):
    target = _ints(shape)
    if not allowzero:  # 0 copies the input's dim
        target = [data.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return data.reshape(target)


def transpose(data, perm=None):
    return data.permute(list(perm) if perm is not None else list(reversed(range(data.dim()))))


def unsqueeze(data, axes):
    rank = data.dim() + len(_ints(axes))
    for axis in sorted(a % rank for a in _ints(axes)):
        data = data.unsqueeze(axis)
    return data


def squeeze(data, axes=None):
    if axes is None:
        return data.squeeze()
    return data.squeeze(tuple(a % data.dim() for a in _ints(axes)))


def expand(data, shape):
    # ONNX Expand broadcasts both ways: a 1 in `shape` keeps the input's dim
    return data.expand(torch.broadcast_shapes(data.shape, tuple(_ints(shape))))


def concat(*inputs, axis):
    return torch.cat(inputs, dim=axis)


def gather(data, indices, axis=0):
    flat = _positive(indices, data.shape[axis]).reshape(-1)
    picked = torch.index_select(data, axis, flat)
    axis = axis % data.dim()
    return picked.reshape(data.shape[:axis] + indices.shape + data.shape[axis + 1:])


def gather_elements(data, indices, axis=0):
    return torch.gather(data, axis, _positive(indices, data.shape[axis]))


def gather_nd(data, indices, batch_dims=0):
    depth = indices.shape[-1]
    batch = data.shape[:batch_dims]
    count = math.prod(batch)
    bounds = torch.tensor(data.shape[batch_dims:batch_dims + depth], dtype=indices.dtype)
    where = _positive(indices, bounds).reshape(count, -1, depth)
    table = data.reshape(count, *data.shape[batch_dims:])
    rows = torch.arange(count).reshape(count, 1)
    picked = table[(rows, *where.unbind(-1))]
    return picked.reshape(indices.shape[:-1] + data.shape[batch_dims + depth:])


def scatter_nd(data, indices, updates, reduction="none"):
    reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
    if reduction not in ("none", "add"):
        raise UnsupportedError(f"ScatterND reduction={reduction} has no torch converter in graphopt.fx")
    bounds = torch.tensor(data.shape[:indices.shape[-1]], dtype=indices.dtype)
    where = tuple(_positive(indices, bounds).unbind(-1))
    return data.index_put(where, updates, accumulate=reduction == "add")


def scatter_elements(data, indices, updates, axis=0, reduction="none"):
    reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
    where = _positive(indices, data.shape[axis])
    if reduction == "none":
        return torch.scatter(data, axis, where, updates)
    torch_reduce = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}[reduction]
    return torch.scatter_reduce(data, axis, where, updates, torch_reduce, include_self=True)


def slice_(data, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) or list(range(len(starts)))
    steps = _ints(steps) or [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        first, stop, stride = slice(start, end, step).indices(data.shape[axis])
        if stride == 1:
            data = data.narrow(axis, first, max(0, stop - first))
        else:
            data = torch.index_select(data, axis, torch.arange(first, stop, stride))
    return data


def split(data, split=None, axis=0, num_outputs=None):
    if split is not None and len(_ints(split)):
        return tuple(torch.split(data, _ints(split), dim=axis))
    # equal parts, the last one smaller (ONNX's num_outputs rule; builder passes the output count)
    return tuple(torch.split(data, math.ceil(data.shape[axis] / num_outputs), dim=axis))


def flatten(data, axis=1):
    axis = axis + data.dim() if axis < 0 else axis  # axis may be the rank: [N, 1]
    return data.reshape(math.prod(data.shape[:axis]), math.prod(data.shape[axis:]))


def tile(data, repeats):
    return data.repeat(_ints(repeats))


def constant_of_shape(shape, value=None):
    if value is None:
        return torch.zeros(_ints(shape), dtype=torch.float32)
    return torch.full(_ints(shape), value.reshape(-1)[0].item(), dtype=value.dtype)


def range_(start, limit, delta):
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


def trilu(data, k=None, upper=1):
    diagonal = int(k.item()) if k is not None else 0
    return torch.triu(data, diagonal) if upper else torch.tril(data, diagonal)


def cumsum(data, axis, exclusive=0, reverse=0):
    dim = int(axis.item()) if isinstance(axis, torch.Tensor) else int(axis)
    if reverse:
        data = data.flip(dim)
    total = torch.cumsum(data, dim=dim).to(data.dtype)
    if exclusive:
        total = total - data
    return total.flip(dim) if reverse else total


def _pad_indices(size: int, begin: int, end: int, mode: str) -> torch.Tensor:
    """Source index of every output position along one axis (negative pads crop)."""
    positions = torch.arange(-begin, size + end)
    if mode == "edge":
        return positions.clamp(0, size - 1)
    if mode == "wrap":
        return positions % size
    period = 2 * (size - 1)  # reflect: mirror without repeating the edge
    folded = positions.abs() % max(period, 1)
    return torch.where(folded >= size, period - folded, folded)


def pad(data, pads, constant_value=None, axes=None, mode="constant", value=0.0):
    amounts = _ints(pads)
    axes = [a % data.dim() for a in _ints(axes)] or list(range(data.dim()))
    by_axis = dict(zip(axes, zip(amounts[:len(axes)], amounts[len(axes):])))
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
        for axis, (begin, end) in by_axis.items():
            data = torch.index_select(data, axis, _pad_indices(data.shape[axis], begin, end, mode))
        return data
    torch_pads = []
    for axis in reversed(range(data.dim())):  # torch: last axis first
        torch_pads.extend(by_axis.get(axis, (0, 0)))
    fill = constant_value.item() if constant_value is not None else value
    return torch.nn.functional.pad(data, torch_pads, value=fill)


def argmax(data, axis=0, keepdims=1, select_last_index=0):
    if select_last_index:
        flipped = data.flip(axis).argmax(axis, keepdim=bool(keepdims))
        return data.shape[axis] - 1 - flipped
    return data.argmax(axis, keepdim=bool(keepdims))


CONVERTERS = {
    "Shape": shape, "Size": size, "Reshape": reshape, "Transpose": transpose, "Unsqueeze": unsqueeze,
    "Squeeze": squeeze, "Expand": expand, "Concat": concat, "Gather": gather,
    "GatherElements": gather_elements, "GatherND": gather_nd,
    "ScatterND": scatter_nd, "ScatterElements": scatter_elements, "Slice": slice_, "Split": split,
    "Flatten": flatten, "Tile": tile, "ConstantOfShape": constant_of_shape, "Range": range_,
    "Trilu": trilu, "CumSum": cumsum, "Pad": pad, "ArgMax": argmax,
}
MULTI_OUTPUT = {"Split"}  # converters that return one tensor per node output
