"""The graphopt op ``ActivationThreshold``: magnitude thresholding, ``Y = X where |X| > T else 0``.

``T`` is a float tensor of X's type: one element (per-tensor threshold, any rank up to X's) or one
value per channel of X's last axis (shape ``[C]``), broadcast numpy-style against X. An element
whose magnitude is at most T becomes +0, every other element passes unchanged (NaN: ``|NaN| > T``
is false, so NaN becomes 0). With T = 0 the op is the identity up to the sign of zeros.

Made by the activation-sparsity passes (``cats``: the gate activation of an MLP; ``teal``: the
input of every linear layer), which stamp the sparsity they calibrated T for on the node
(``TARGET_KEY`` in its ``metadata_props``, and ``SITE_KEY``: the tensor it thresholds, by its
name in the original graph; ``graphopt.sparsity`` reads both back). The zeros are what
a sparse kernel skips: a zero input channel of a linear layer is a weight row it need not load.

The ONNX body runs from opset 13 (no CastLike): its zero of X's type is ``Sign(T) - Sign(T)``,
finite even where T is inf (``rsparse``'s threshold of a channel whose weight row is all 0).
"""

from __future__ import annotations

import numpy as np

from graphopt import ops

__all__ = ["ACTIVATION_THRESHOLD", "OP_NAME", "SITE_KEY", "TARGET_KEY", "threshold_reference"]

OP_NAME = "ActivationThreshold"
TARGET_KEY = "pkg.graphopt.sparsity.target"  # node metadata: the sparsity T was calibrated for
SITE_KEY = "pkg.graphopt.sparsity.site"  # node metadata: the thresholded tensor, as the original graph named it


def threshold_reference(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The spec: ``x`` where ``|x| > t`` (numpy broadcasting, t scalar or per last-axis channel), else 0."""
    x = np.asarray(x)
    keep = np.abs(x) > np.asarray(t, dtype=x.dtype)
    return np.where(keep, x, np.zeros((), dtype=x.dtype)).astype(x.dtype)


def _examples():
    rng = np.random.default_rng(20250621)
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    edge = np.array([0.0, -0.0, 0.5, -0.5, 0.50001, -0.49999, np.inf, -np.inf, np.nan], dtype=np.float32)
    return [
        ((x, np.array(0.5, np.float32)), {}),  # per-tensor, rank-0 threshold
        ((x, np.array([0.7], np.float32)), {}),  # per-tensor, one-element vector
        ((x, np.abs(rng.standard_normal(8)).astype(np.float32)), {}),  # per-channel over the last axis
        ((x, np.array(0.0, np.float32)), {}),  # t = 0: identity
        ((edge, np.array(0.5, np.float32)), {}),  # |x| == t is zeroed; inf kept; NaN zeroed
        ((x, np.array([0.5, np.inf, 0.0] * 2 + [1.0, 2.0], np.float32)), {}),  # an inf channel threshold: all 0 there
        ((rng.standard_normal((4, 5)).astype(np.float16), np.array(0.3, np.float16)), {}),
    ]


ACTIVATION_THRESHOLD = ops.declare_op(
    ops.OpDef(
        name=OP_NAME,
        doc=(
            "Magnitude threshold: Y = X where |X| > T, else 0. T has X's type and is one value (per-tensor) "
            "or one per channel of X's last axis, broadcast against X."
        ),
        reference=threshold_reference,
        body="""<domain: "pkg.graphopt", opset_import: ["" : 13]>
ActivationThreshold (X, T) => (Y) {
   magnitude = Abs (X)
   keep = Greater (magnitude, T)
   sign_t = Sign (T)
   zero = Sub (sign_t, sign_t)
   Y = Where (keep, X, zero)
}""",
        examples=_examples,
    )
)
