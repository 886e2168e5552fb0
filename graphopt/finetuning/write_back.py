"""Trained parameters back into the ONNX graph: each initializer keeps its ONNX element type.

A parameter whose initializer is an integer type (an int8 weight that train mode made a latent
float) is rounded half to even and clipped to that type's range: the same rounding
``QuantizeLinear`` uses, so a latent weight that did not move writes back the very integer it
started from. A float parameter is cast to its initializer's type (float16, bfloat16 stay so).
Nothing else in the graph changes: nodes, names and every initializer not written stay as they were.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx_ir as ir

from graphopt.errors import InternalError

__all__ = ["as_onnx_array", "write_back"]


def as_onnx_array(values: np.ndarray, dtype: ir.DataType) -> np.ndarray:
    """``values`` (float) as an array of the ONNX element type ``dtype``."""
    target = np.dtype(dtype.numpy())
    if target.kind in "iu":
        info = np.iinfo(target)
        return np.clip(np.rint(np.asarray(values, np.float64)), info.min, info.max).astype(target)
    if target.kind == "b":
        return np.asarray(values) >= 0.5
    return np.asarray(values).astype(target)


def write_back(model: ir.Model, parameters: Mapping[str, np.ndarray], names: Iterable[str] | None = None) -> ir.Model:
    """A copy of ``model`` whose initializers named in ``parameters`` (ONNX initializer name ->
    trained values) hold those values in their own element type; ``names`` limits which are written."""
    out = model.clone()
    initializers = out.graph.initializers
    for name in parameters if names is None else names:
        value = initializers.get(name)
        if value is None or value.const_value is None:
            raise InternalError(f"write-back: the graph has no initializer {name!r} for a trained parameter")
        old = value.const_value
        array = np.asarray(parameters[name])
        if tuple(array.shape) != tuple(old.shape.numpy()):
            raise InternalError(f"write-back: parameter {name!r} has shape {array.shape}, its initializer {tuple(old.shape.numpy())}")
        value.const_value = ir.Tensor(as_onnx_array(array, old.dtype), dtype=old.dtype, name=name)
    return out
