"""The TVM kernel of ``LinearizedAttention`` agrees with the numpy reference and with ONNX Runtime
running the op's body: the op's examples (non-causal, causal, per-head decay, decay 0, broadcast
K/V), seeded random cases, float16, and a decay that enters as a constant (an initializer)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

sys.path.insert(0, str(Path(__file__).parent))
from test_tvm_kernels import _assert_matches  # noqa: E402

from graphopt import ops, testing  # noqa: E402
from graphopt.backends.tvm.kernels import CONVERTERS, TE_KERNELS  # noqa: E402

OP = "LinearizedAttention"


def test_registered_for_tvm():
    assert OP in CONVERTERS and OP in TE_KERNELS


def test_examples_match_reference_and_onnx_runtime():
    for inputs, attrs in ops.get_op(OP).examples():
        _assert_matches(OP, inputs, attrs)


@pytest.mark.parametrize("causal", [0, 1])
def test_random_cases(causal):
    rng = np.random.default_rng(testing.SEED)
    qf, kf = (np.abs(rng.standard_normal((2, 4, 9, 16))).astype(np.float32) for _ in range(2))
    v = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    decay = rng.uniform(0.5, 1.0, (4, 1, 1)).astype(np.float32)
    _assert_matches(OP, (qf, kf, v, decay), {"causal": causal}, constant_inputs=(3,))
    half = tuple(a.astype(np.float16) for a in (qf, kf, v, decay))
    _assert_matches(OP, half, {"causal": causal})
