"""Masked-add matrix product: ``pkg.graphopt::MaskedAddMatMul``, declared once.

    MaskedAddMatMul <k: int> (Bits, X) => (Y)

A bit-packed 0/1 left operand times a float matrix, computed as additions (the matrix products of
binary-code attention, ShiftAddViT's "MatAdd"): Bits int32 [.., M, W] holds, for each row m, the
bits B[m, j] (j < k) 16 to a word, little-endian (bit b of word w is column 16·w + b; words are in
[0, 65535], so no sign bit is involved), W = ceil(k / 16); X is [.., k, N] (float, leading axes
broadcast as in MatMul). Then

    Y[.., m, n] = Σ_{j < k, B[m, j] = 1} X[.., j, n]        (in X's dtype)

no multiplication: each output is the sum of the X rows its bits select. Bits of columns >= k are
ignored. The reference sums in float64 and rounds once; the ONNX body unpacks the words (Div/Mod by
powers of two: standard ops only) and runs MatMul with the 0/1 matrix (float sums of the selected
rows); native kernels add the selected rows directly.
"""

from __future__ import annotations

import numpy as np

from graphopt import ops

__all__ = ["BITS_PER_WORD", "MASKED_ADD_MATMUL_OP", "OP_NAME", "pack_bits", "unpack_bits"]

OP_NAME = "MaskedAddMatMul"
BITS_PER_WORD = 16


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """{0,1} [.., M, k] -> int32 words [.., M, ceil(k/16)], 16 bits a word, little-endian."""
    bits = np.asarray(bits).astype(bool)
    k = bits.shape[-1]
    words = -(-k // BITS_PER_WORD)
    padded = np.zeros((*bits.shape[:-1], words * BITS_PER_WORD), np.int64)
    padded[..., :k] = bits
    weights = (1 << np.arange(BITS_PER_WORD, dtype=np.int64))
    return (padded.reshape(*bits.shape[:-1], words, BITS_PER_WORD) * weights).sum(-1).astype(np.int32)


def unpack_bits(words: np.ndarray, k: int) -> np.ndarray:
    """int32 words [.., M, W] -> bool [.., M, k]."""
    words = np.asarray(words, np.int64)
    bits = (words[..., None] >> np.arange(BITS_PER_WORD, dtype=np.int64)) & 1
    return bits.reshape(*words.shape[:-1], -1)[..., :k].astype(bool)


def _reference(bits, x, *, k):
    x = np.asarray(x)
    mask = unpack_bits(bits, int(k))
    return np.matmul(mask.astype(np.float64), x.astype(np.float64)).astype(x.dtype)


_BODY = """<domain: "pkg.graphopt", opset_import: ["": 18]>
MaskedAddMatMul <k: int> (Bits, X) => (Y) {
    powers = Constant <value: tensor = int32[16] {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768}> ()
    two = Constant <value: tensor = int32 {2}> ()
    last = Constant <value_ints: ints = [-1]> ()
    zero_v = Constant <value_ints: ints = [0]> ()
    k_s = Constant <value_int: int = @k> ()
    one_v = Constant <value_ints: ints = [1]> ()
    k_v = Reshape (k_s, one_v)
    words = Unsqueeze (Bits, last)
    shifted = Div (words, powers)
    bits = Mod (shifted, two)
    lead = Shape <end: int = -1> (Bits)
    flat_shape = Concat <axis: int = 0> (lead, last)
    flat = Reshape (bits, flat_shape)
    kept = Slice (flat, zero_v, k_v, last)
    mask = CastLike (kept, X)
    Y = MatMul (mask, X)
}"""


def _examples():
    rng = np.random.default_rng(20250621)

    def bits(*shape):
        return pack_bits(rng.random(shape) < 0.5)

    ones = pack_bits(np.ones((3, 20), bool))
    return [
        ((bits(5, 16), rng.standard_normal((16, 7)).astype(np.float32)), {"k": 16}),
        ((bits(2, 3, 9, 20), rng.standard_normal((2, 3, 20, 8)).astype(np.float32)), {"k": 20}),  # 2 words
        ((bits(2, 4, 6, 5), rng.standard_normal((2, 1, 5, 3)).astype(np.float32)), {"k": 5}),  # broadcast heads
        ((ones, rng.standard_normal((20, 4)).astype(np.float32)), {"k": 20}),  # every row: the column sums
        ((np.full((2, 2), 65535, np.int32), rng.standard_normal((17, 3)).astype(np.float32)), {"k": 17}),  # bits >= k ignored
        ((bits(4, 12), rng.standard_normal((12, 6)).astype(np.float16)), {"k": 12}),
    ]


MASKED_ADD_MATMUL_OP = ops.declare_op(
    ops.OpDef(
        name=OP_NAME,
        doc="Bit-packed 0/1 matrix [.., M, ceil(k/16)] int32 times a float matrix [.., k, N] as additions: "
            "Y[m] = sum of the X rows whose bit is set in row m.",
        reference=_reference,
        body=_BODY,
        examples=_examples,
    )
)
