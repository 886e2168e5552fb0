"""The ``ShiftMatMul`` op: its packing format, its decoding, and its torch implementation.

(reference == ONNX body on the examples, and every backend having an implementation, are the
generic tests in ``tests/core/test_ops.py``.)
"""

from __future__ import annotations

import numpy as np
import pytest

from graphopt import ops, testing
from graphopt.ops.shift_matmul import codes_per_word, decode, max_exponent, pack, shift_matmul_reference, unpack


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7])
def test_pack_unpack_round_trip_and_words_stay_non_negative(bits):
    rng = np.random.default_rng(testing.SEED)
    for k in (1, codes_per_word(bits), 2 * codes_per_word(bits) + 1):
        codes = rng.integers(0, 1 << bits, (k, 5))
        codes[0] = (1 << bits) - 1  # every bit of a slot set
        words = pack(codes, bits)
        assert words.dtype == np.int32 and words.shape == (-(-k // codes_per_word(bits)), 5)
        assert (words >= 0).all()  # 31 // bits slots: the word's sign bit is never used
        np.testing.assert_array_equal(unpack(words, k, bits), codes)


def test_five_bit_codes_are_six_per_word_and_6x_smaller_than_float32():
    assert codes_per_word(5) == 6
    words = pack(np.zeros((4092, 8), np.int64))
    assert 4092 * 8 * 4 / words.nbytes == pytest.approx(6.0, rel=1e-3)


def test_decode_ternary_and_zero_free():
    half = 1 << 4
    codes = np.array([0, 1, 14, 15, half, half + 14, half + 15])
    np.testing.assert_array_equal(decode(codes), np.array([1, 0.5, 2.0**-14, 0, -1, -(2.0**-14), 0], np.float32))
    np.testing.assert_array_equal(decode(codes, zero_free=1),
                                  np.array([1, 0.5, 2.0**-14, 2.0**-15, -1, -(2.0**-14), -(2.0**-15)], np.float32))
    assert max_exponent(5) == 15


def test_pack_refuses_out_of_range_codes():
    with pytest.raises(ValueError):
        pack(np.array([[32]]), 5)
    with pytest.raises(ValueError):
        codes_per_word(8)


def test_torch_matches_the_reference():
    torch = pytest.importorskip("torch")
    impl = ops.implementations("torch")["ShiftMatMul"]
    for (x, p, s), attrs in ops.get_op("ShiftMatMul").examples():
        got = impl(torch.from_numpy(x), torch.from_numpy(p), torch.from_numpy(s), **attrs).numpy()
        np.testing.assert_allclose(got, shift_matmul_reference(x, p, s, **attrs), rtol=1e-5, atol=1e-6)
        # the decoded weights themselves are bit-exact: X = I reads D back
        k = x.shape[-1]
        eye = np.eye(k, dtype=np.float32)
        ones = np.ones_like(s)
        np.testing.assert_array_equal(impl(torch.from_numpy(eye), torch.from_numpy(p), torch.from_numpy(ones), **attrs).numpy(),
                                      shift_matmul_reference(eye, p, ones, **attrs))
