"""Weight layouts of the AVX2 kernels, made once at import time in numpy.

A kernel step multiplies ``kw`` consecutive values of one A row (broadcast) by an 8×kw block of B,
so B is stored as ``[N8/8, Kp/kw, 8, kw]``: each step reads 32 contiguous, 32-byte aligned bytes.
``K`` is zero-padded to a multiple of ``kw`` and ``N`` to a multiple of 8 (zeros add nothing).

- ``pack_int8``  (kw = 4, int8): for the sign-trick kernel; needs B in [-127, 127].
- ``pack_int16`` (kw = 2, int16): for the ``vpmaddwd`` kernel; B minus its zero point
  (scalar or per column), so any int8/uint8 B with any zero point is exact.
"""

from __future__ import annotations

import numpy as np

from graphopt.backends.tvm.cpu.common import pad_to

__all__ = ["fits_sign_trick", "pack_int8", "pack_int16", "packed_shape"]


def packed_shape(k: int, n: int, kw: int) -> tuple[int, int, int, int]:
    return (pad_to(n, 8) // 8, pad_to(k, kw) // kw, 8, kw)


def _pack(b: np.ndarray, kw: int, dtype) -> np.ndarray:
    k, n = b.shape
    padded = np.zeros((pad_to(k, kw), pad_to(n, 8)), dtype)
    padded[:k, :n] = b
    kp, n8 = padded.shape
    # [Kp, N8] -> [Kp/kw, kw, N8/8, 8] -> [N8/8, Kp/kw, 8, kw]
    return np.ascontiguousarray(padded.reshape(kp // kw, kw, n8 // 8, 8).transpose(2, 0, 3, 1))


def fits_sign_trick(b: np.ndarray) -> bool:
    """Whether int8 ``b`` avoids -128 (the sign trick negates B; -(-128) does not fit int8)."""
    return b.dtype == np.int8 and (b.size == 0 or int(b.min()) >= -127)


def pack_int8(b: np.ndarray) -> np.ndarray:
    """int8 [K, N] -> int8 [N8/8, K4/4, 8, 4] for the sign-trick kernel."""
    if not fits_sign_trick(b):
        raise ValueError("the int8 sign-trick layout needs int8 weights in [-127, 127]")
    return _pack(b, 4, np.int8)


def pack_int16(b: np.ndarray, zero_point: np.ndarray | int | None = None) -> np.ndarray:
    """int8/uint8 [K, N] minus ``zero_point`` (scalar or [N]) -> int16 [N8/8, K2/2, 8, 2]."""
    centered = b.astype(np.int16)
    if zero_point is not None:
        centered = centered - np.asarray(zero_point, np.int16).reshape(1, -1)
    return _pack(centered, 2, np.int16)
