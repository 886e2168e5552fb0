"""The graphopt ops that let a kernel skip weight rows whose activation is zero.

``SparseInputMatMul(X, W) -> Y``: ``Y = X @ W`` for X ``[..., K]`` and a constant W ``[K, N]``. Row k
of W is contiguous, so where ``x[k] == 0`` (in every row of X) a kernel skips one contiguous row: the
down projection of a thresholded MLP, every TEAL-thresholded linear layer.

``SparseGatedMatMul(A, X, Wt) -> Y``: ``Y = A * (X @ Wtᵀ)`` where ``A != 0``, else 0, for a gate A
``[..., N]`` (X's batch shape), X ``[..., K]`` and a constant Wt ``[N, K]`` (the up projection stored
transposed, row n contiguous). Where the gate is zero (every row), a kernel skips row n of Wt: the
up projection of a CATS MLP, whose product with the thresholded gate is zero there anyway. The one
difference from ``Mul(A, MatMul(X, W))``: an infinite or NaN ``X @ W`` under a zero gate gives 0
here and NaN there.

``SparseInputMatMulInt8(X, Wq, Scale) -> Y`` and ``SparseGatedMatMulInt8(A, X, Wtq, Scale) -> Y``: the
same two with int8 weights (Wq ``[K, N]``, Wtq ``[N, K]``) and a float32 scale per output channel
``[N]``: ``Y = (X @ Wq) · Scale`` and ``Y = A * ((X @ Wtqᵀ) · Scale)`` where ``A != 0``. The maths of a
weight-only int8 ``MatMul(X, DequantizeLinear(Wq, Scale, 0, axis=1))`` with the scale applied once per
output instead of once per weight (equal up to float rounding); a kernel reads a quarter of the bytes.

All four are made by the ``sparse-linear`` pass from what ``cats`` / ``teal`` leave
(``pkg.graphopt.ActivationThreshold``); the ONNX bodies are the dense computation, so any runtime
runs them and only a backend with a sparse kernel (``backends/tvm/kernels/sparse_matmul.py``) is
faster for it.
"""

from __future__ import annotations

import numpy as np

from graphopt import ops

__all__ = ["GATED_INT8_OP", "GATED_OP", "INPUT_INT8_OP", "INPUT_OP", "SPARSE_GATED_MATMUL", "SPARSE_GATED_MATMUL_INT8",
           "SPARSE_INPUT_MATMUL", "SPARSE_INPUT_MATMUL_INT8", "gated_int8_reference", "gated_reference",
           "input_int8_reference", "input_reference"]

INPUT_OP = "SparseInputMatMul"
GATED_OP = "SparseGatedMatMul"
INPUT_INT8_OP = "SparseInputMatMulInt8"
GATED_INT8_OP = "SparseGatedMatMulInt8"


def input_reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The spec: ``x @ w`` (float32 accumulation order is the kernel's own: compare at float rounding)."""
    return np.matmul(x, w).astype(x.dtype)


def _gated(a: np.ndarray, product: np.ndarray) -> np.ndarray:
    """``a * product`` where ``a != 0``, else 0: a closed gate gives 0 even over an infinite or NaN product."""
    with np.errstate(invalid="ignore"):  # 0 · inf under a closed gate: replaced by 0 below
        return np.where(a != 0, a * product, np.zeros((), product.dtype)).astype(product.dtype)


def gated_reference(a: np.ndarray, x: np.ndarray, wt: np.ndarray) -> np.ndarray:
    """The spec: ``a * (x @ wt.T)`` where ``a != 0``, else 0."""
    return _gated(a, np.matmul(x, np.swapaxes(wt, -1, -2)).astype(x.dtype))


def input_int8_reference(x: np.ndarray, wq: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The spec: ``(x @ wq) · scale``, wq int8 [K, N], scale float [N]."""
    return (np.matmul(x, wq.astype(x.dtype)) * scale).astype(x.dtype)


def gated_int8_reference(a: np.ndarray, x: np.ndarray, wtq: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The spec: ``a * ((x @ wtqᵀ) · scale)`` where ``a != 0``, else 0; wtq int8 [N, K], scale float [N]."""
    return _gated(a, input_int8_reference(x, np.swapaxes(wtq, -1, -2), scale))


def _int8_weights(rng, shape) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights (the full range, -128 included) and a positive float32 scale per output (last axis of W)."""
    wq = rng.integers(-128, 128, shape, dtype=np.int8)
    return wq, _scales(rng, shape[-1])


def _scales(rng, n: int) -> np.ndarray:
    """A positive float32 scale per output channel."""
    return (rng.random(n) * 0.02 + 0.001).astype(np.float32)


def _sparse_rows(rng, shape, sparsity: float) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    x[..., rng.random(shape[-1]) < sparsity] = 0
    return x


def _input_cases(rng, weights: tuple) -> list:
    """The input ops' examples (K = 24) for ``weights`` (W, or Wq and Scale), X drawn from ``rng``."""
    return [
        ((_sparse_rows(rng, (1, 24), 0.5), *weights), {}),  # decode: one row, half the channels zero
        ((_sparse_rows(rng, (2, 1, 24), 0.9), *weights), {}),  # batch dims
        ((np.zeros((4, 24), np.float32), *weights), {}),  # every channel zero
        ((rng.standard_normal((4, 24)).astype(np.float32), *weights), {}),  # dense
    ]


def _gated_cases(rng, weights: tuple, positive_weights: tuple) -> list:
    """The gated ops' examples (N = 19, K = 24) for ``weights`` (Wt, or Wtq and Scale); ``positive_weights``
    meet an infinite X (inf · w is +inf, never inf - inf) under a partly closed gate."""
    x = rng.standard_normal((1, 24)).astype(np.float32)
    inf_x = np.full((1, 24), np.inf, np.float32)
    return [
        ((_sparse_rows(rng, (1, 19), 0.5), x, *weights), {}),
        ((_sparse_rows(rng, (2, 1, 19), 0.9), rng.standard_normal((2, 1, 24)).astype(np.float32), *weights), {}),
        ((np.zeros((1, 19), np.float32), x, *weights), {}),
        ((_sparse_rows(rng, (1, 19), 0.5), inf_x, *positive_weights), {}),  # inf under a zero gate: 0
    ]


def _input_examples():
    rng = np.random.default_rng(20250621)
    w = rng.standard_normal((24, 19)).astype(np.float32)
    return _input_cases(rng, (w,))


def _gated_examples():
    rng = np.random.default_rng(20250621)
    wt = rng.standard_normal((19, 24)).astype(np.float32)
    return _gated_cases(rng, (wt,), (np.abs(wt),))


def _input_int8_examples():
    rng = np.random.default_rng(20250622)
    return _input_cases(rng, _int8_weights(rng, (24, 19)))


def _gated_int8_examples():
    rng = np.random.default_rng(20250622)
    wtq, _ = _int8_weights(rng, (19, 24))
    scale = _scales(rng, 19)  # per output n: Wtq's rows
    positive = np.clip(np.abs(wtq.astype(np.int16)), 1, 127).astype(np.int8)
    return _gated_cases(rng, (wtq, scale), (positive, scale))


_HEADER = """<domain: "pkg.graphopt", opset_import: ["" : 13]>
"""

# Y = A · product where A != 0, else 0 (the gated ops' last step)
_GATE_BODY = """   gated = Mul (A, product)
   zero_f = Constant <value = float {0}> ()
   zero = CastLike (zero_f, A)
   closed = Equal (A, zero)
   Y = Where (closed, zero, gated)
}"""

SPARSE_INPUT_MATMUL = ops.declare_op(
    ops.OpDef(
        name=INPUT_OP,
        doc=("Y = X @ W for a constant W [K, N] whose rows a kernel skips where X's channel k is zero "
             "(in every row of X)."),
        reference=input_reference,
        body=_HEADER + """SparseInputMatMul (X, W) => (Y) {
   Y = MatMul (X, W)
}""",
        examples=_input_examples,
    )
)

SPARSE_GATED_MATMUL = ops.declare_op(
    ops.OpDef(
        name=GATED_OP,
        doc=("Y = A * (X @ Wtᵀ) where A != 0, else 0, for a constant Wt [N, K] whose rows a kernel skips "
             "where the gate A is zero (in every row)."),
        reference=gated_reference,
        body=_HEADER + """SparseGatedMatMul (A, X, Wt) => (Y) {
   w = Transpose <perm = [1, 0]> (Wt)
   product = MatMul (X, w)
""" + _GATE_BODY,
        examples=_gated_examples,
    )
)

SPARSE_INPUT_MATMUL_INT8 = ops.declare_op(
    ops.OpDef(
        name=INPUT_INT8_OP,
        doc=("Y = (X @ Wq) · Scale for a constant int8 Wq [K, N] and a float scale [N] per output channel, whose "
             "rows a kernel skips where X's channel k is zero (in every row of X)."),
        reference=input_int8_reference,
        body=_HEADER + """SparseInputMatMulInt8 (X, Wq, Scale) => (Y) {
   w = CastLike (Wq, X)
   product = MatMul (X, w)
   Y = Mul (product, Scale)
}""",
        examples=_input_int8_examples,
    )
)

SPARSE_GATED_MATMUL_INT8 = ops.declare_op(
    ops.OpDef(
        name=GATED_INT8_OP,
        doc=("Y = A * ((X @ Wtqᵀ) · Scale) where A != 0, else 0, for a constant int8 Wtq [N, K] and a float scale [N], "
             "whose rows a kernel skips where the gate A is zero (in every row)."),
        reference=gated_int8_reference,
        body=_HEADER + """SparseGatedMatMulInt8 (A, X, Wtq, Scale) => (Y) {
   wt = CastLike (Wtq, X)
   w = Transpose <perm = [1, 0]> (wt)
   raw = MatMul (X, w)
   product = Mul (raw, Scale)
""" + _GATE_BODY,
        examples=_gated_int8_examples,
    )
)
