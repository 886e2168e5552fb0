"""The canonical SiLU op ``pkg.graphopt::SigmoidLinearUnit``: ``Y = X * Sigmoid(X)``, elementwise.

ONNX has ``Swish`` only from opset 24 and graphopt targets opset 23, so the canonical SiLU is a
graphopt op whose ONNX function body is ``Mul(X, Sigmoid(X))``. Made by the ``silu`` pass.
"""

from __future__ import annotations

import numpy as np

from graphopt import ops

__all__ = ["SILU"]


def _silu_reference(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x) = x / (1 + exp(-x)), in x's dtype."""
    with np.errstate(over="ignore"):
        return (x / (1 + np.exp(-x))).astype(x.dtype)


def _silu_examples():
    rng = np.random.default_rng(20250621)
    edge = np.array([0.0, -0.0, 1.0, -1.0, 30.0, -30.0, 88.0, -104.0], dtype=np.float32)
    return [
        ((rng.standard_normal((2, 3, 8)).astype(np.float32),), {}),
        ((edge,), {}),
        ((rng.standard_normal((4, 5)).astype(np.float16),), {}),
    ]


SILU = ops.declare_op(
    ops.OpDef(
        name="SigmoidLinearUnit",
        doc="SiLU (Swish-1): Y = X * Sigmoid(X), elementwise, for float tensors.",
        reference=_silu_reference,
        body="""<domain: "pkg.graphopt", opset_import: ["" : 13]>
SigmoidLinearUnit (X) => (Y) {
   S = Sigmoid(X)
   Y = Mul(X, S)
}""",
        examples=_silu_examples,
    )
)
