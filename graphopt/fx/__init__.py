"""graphopt graphs back in PyTorch: ``to_torch(model)`` builds a ``torch.fx.GraphModule`` from an
ONNX graph (docs/torch.md).

    builder.py       walks the graph in topological order and emits FX nodes
    converters.py    the table (domain, op type) -> torch function
    onnx_*.py        torch versions of standard ONNX ops (math, shape, nn, quantization)
    graphopt_ops.py  torch versions of graphopt ops (backend "torch" of graphopt.ops)
"""

from __future__ import annotations

from graphopt.fx.builder import OnnxGraphModule, to_torch

__all__ = ["OnnxGraphModule", "to_torch"]
