"""ONNX element types (``TensorProto.DataType`` numbers) as torch dtypes: what ``Cast``, ``Constant``
and ``ConstantOfShape`` need at run time."""

from __future__ import annotations

import numpy as np
import torch

from graphopt.errors import UnsupportedError

__all__ = ["as_tensor", "check_tensor_type", "torch_dtype"]

_BY_ONNX = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
    9: torch.bool, 10: torch.float16, 11: torch.float64, 12: torch.uint32, 13: torch.uint64,
    16: torch.bfloat16, 4: torch.uint16,
}
# torch holds these but has no arithmetic on them (add, compare, min/max: NotImplementedError)
_STORAGE_ONLY = {4: "UINT16", 12: "UINT32", 13: "UINT64"}


def torch_dtype(onnx_type: int) -> torch.dtype:
    """The torch dtype for ONNX element type ``onnx_type`` (an int)."""
    if int(onnx_type) not in _BY_ONNX:
        raise UnsupportedError(f"ONNX element type {onnx_type} has no torch dtype in graphopt.fx")
    return _BY_ONNX[int(onnx_type)]


def check_tensor_type(what: str, onnx_type: int | None) -> None:
    """Refuse, while building, a graph input or initializer torch cannot compute with."""
    if onnx_type is None:
        return  # unknown type: the graph's own nodes decide at run time
    if int(onnx_type) in _STORAGE_ONLY:
        raise UnsupportedError(f"{what} is {_STORAGE_ONLY[int(onnx_type)]}: torch has no arithmetic on it")
    torch_dtype(onnx_type)


def as_tensor(value) -> torch.Tensor:
    """A graph input or initializer as a tensor: torch tensors as they are, numpy arrays shared;
    bfloat16 arrays (ml_dtypes, which torch.as_tensor cannot read) through their bits."""
    if isinstance(value, np.ndarray) and value.dtype.name == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(value).view(np.uint16)).view(torch.bfloat16)
    return torch.as_tensor(value)
