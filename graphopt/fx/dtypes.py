"""ONNX element types (``TensorProto.DataType`` numbers) as torch dtypes: what ``Cast``, ``Constant``
and ``ConstantOfShape`` need at run time."""

from __future__ import annotations

import torch

from graphopt.errors import UnsupportedError

__all__ = ["torch_dtype"]

_BY_ONNX = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
    9: torch.bool, 10: torch.float16, 11: torch.float64, 12: torch.uint32, 13: torch.uint64,
    16: torch.bfloat16, 4: torch.uint16,
}


def torch_dtype(onnx_type: int) -> torch.dtype:
    """The torch dtype for ONNX element type ``onnx_type`` (an int)."""
    if int(onnx_type) not in _BY_ONNX:
        raise UnsupportedError(f"ONNX element type {onnx_type} has no torch dtype in graphopt.fx")
    return _BY_ONNX[int(onnx_type)]
