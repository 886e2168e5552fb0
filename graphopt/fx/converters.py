"""The converter table: (domain, op type) -> torch function, read by the builder.

Standard ONNX ops come from ``onnx_math``, ``onnx_shape``, ``onnx_nn``, ``onnx_quant``; graphopt ops
from the ``torch`` backend's registry (``graphopt.ops.implementations("torch")``, filled by
``graphopt_ops``). Each function is called as ``fn(*inputs, **attributes)``.
"""

from __future__ import annotations

from collections.abc import Callable

from graphopt import ops
from graphopt.fx import onnx_math, onnx_nn, onnx_quant, onnx_resize, onnx_shape

__all__ = ["MIN_OPSET", "MULTI_OUTPUT", "STANDARD_DOMAINS", "converter_table"]

STANDARD_DOMAINS = ("", "ai.onnx")
# converters that return a tuple, one tensor per node output
MULTI_OUTPUT = {(d, op) for d in STANDARD_DOMAINS for op in onnx_shape.MULTI_OUTPUT | onnx_math.MULTI_OUTPUT | onnx_nn.MULTI_OUTPUT}
MULTI_OUTPUT |= {(ops.DOMAIN, op.name) for op in ops.list_ops() if len(op.outputs) > 1}  # e.g. LinearAttentionStep
# op -> the first default-domain opset whose meaning the converter implements
MIN_OPSET = {"Softmax": 13, "LogSoftmax": 13}


def converter_table() -> dict[tuple[str, str], Callable]:
    table: dict[tuple[str, str], Callable] = {}
    for module in (onnx_math, onnx_shape, onnx_nn, onnx_quant, onnx_resize):
        for op_type, fn in module.CONVERTERS.items():
            for domain in STANDARD_DOMAINS:
                table[(domain, op_type)] = fn
    for op_type, fn in ops.implementations("torch").items():
        table[(ops.DOMAIN, op_type)] = fn
    return table
