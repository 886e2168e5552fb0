"""The ``ShiftMatMulInteger`` op: integer weights ±2^e from ShiftMatMul's packing, and its torch implementation.

(reference == ONNX body on the examples, and every backend having an implementation, are the
generic tests in ``tests/core/test_ops.py``.)
"""

from __future__ import annotations

import numpy as np
import pytest

from graphopt import ops
from graphopt.ops.shift_matmul import pack
from graphopt.ops.shift_matmul_integer import integer_weights, shift_matmul_integer_reference


def test_integer_weights_ternary_and_zero_free():
    codes = np.array([0, 1, 14, 15, 16, 30, 31])
    np.testing.assert_array_equal(integer_weights(codes), [1, 2, 2**14, 0, -1, -(2**14), 0])
    np.testing.assert_array_equal(integer_weights(codes, zero_free=1), [1, 2, 2**14, 2**15, -1, -(2**14), -(2**15)])
    with pytest.raises(ValueError):
        integer_weights(codes, bits=6)  # 2^31 would not be an int32 weight


def test_reference_is_a_plain_integer_matmul():
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 32, (20, 7))
    x = rng.integers(-128, 128, (5, 20)).astype(np.int8)
    got = shift_matmul_integer_reference(x, pack(codes))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, x.astype(np.int64) @ integer_weights(codes))


def test_torch_matches_the_reference_bit_exactly():
    torch = pytest.importorskip("torch")
    impl = ops.implementations("torch")["ShiftMatMulInteger"]
    for (x, p), attrs in ops.get_op("ShiftMatMulInteger").examples():
        got = impl(torch.from_numpy(x), torch.from_numpy(p), **attrs).numpy()
        np.testing.assert_array_equal(got, shift_matmul_integer_reference(x, p, **attrs))
