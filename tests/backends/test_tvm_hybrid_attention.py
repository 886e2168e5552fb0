"""The TVM kernel of ``WindowedLinearAttention`` (LoLCATs' hybrid) agrees with the numpy reference and
with ONNX Runtime running the op's body: the op's examples (causal, non-causal band, window covering
everything, no window, broadcast K), seeded random cases with per-head γ as a constant, float16; and
the spec's two limits: a window covering every key is softmax attention (DotProductAttention's
reference), window 0 is causal LinearizedAttention (eps 0)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

sys.path.insert(0, str(Path(__file__).parent))
from test_tvm_kernels import _assert_matches  # noqa: E402

from graphopt import ops, testing  # noqa: E402

# registration and the op's examples: tests/backends/test_tvm_kernels.py (FLOAT_OPS)
OP = "WindowedLinearAttention"


@pytest.mark.parametrize("causal", [0, 1])
def test_random_cases(causal):
    rng = np.random.default_rng(testing.SEED)
    q, k = (rng.standard_normal((2, 3, 11, 8)).astype(np.float32) for _ in range(2))
    qf, kf = (np.abs(rng.standard_normal((2, 3, 11, 16))).astype(np.float32) for _ in range(2))
    v = rng.standard_normal((2, 3, 11, 5)).astype(np.float32)
    gamma = np.array([0.1, 0.4, 0.9], np.float32).reshape(3, 1, 1)
    attrs = {"window": 4, "scale": 0.35, "causal": causal}
    _assert_matches(OP, (q, k, qf, kf, v, gamma), attrs, constant_inputs=(5,))
    _assert_matches(OP, tuple(a.astype(np.float16) for a in (q, k, qf, kf, v, gamma)), attrs)


def test_limits_are_softmax_and_linear_attention():
    rng = np.random.default_rng(testing.SEED)
    q, k = (rng.standard_normal((2, 7, 8)) for _ in range(2))
    qf, kf = (np.abs(rng.standard_normal((2, 7, 6))) for _ in range(2))
    v = rng.standard_normal((2, 7, 3))
    hybrid = ops.get_op(OP).reference
    for causal in (0, 1):
        full = hybrid(q, k, qf, kf, v, 0.3, window=7, scale=0.5, causal=causal)
        softmax = ops.get_op("DotProductAttention").reference(q, k, v, 0.0, scale=0.5, causal=causal)
        np.testing.assert_allclose(full, softmax, rtol=1e-12, atol=1e-12)
    none = hybrid(q, k, qf, kf, v, 0.3, window=0, causal=1)
    linear = ops.get_op("LinearizedAttention").reference(qf, kf, v, 1.0, causal=1, eps=0.0)
    np.testing.assert_allclose(none, linear, rtol=1e-12, atol=1e-12)
