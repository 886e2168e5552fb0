"""pkg.graphopt::MaskedAddMatMul: bit-packed 0/1 rows times a float matrix, as additions.

The packing (16 bits a word, little-endian) round-trips; the reference equals an explicit loop of
additions; ONNX Runtime running the body, the torch implementation and the tvm-llvm kernel agree
with the reference on every declared example (tests/core/test_ops.py and test_torch_ops.py check
the first two for every op; the TVM kernel is checked here).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from graphopt import ops, testing
from graphopt.ops.masked_add_matmul import MASKED_ADD_MATMUL_OP, OP_NAME, pack_bits, unpack_bits


def test_packing_round_trips():
    rng = np.random.default_rng(testing.SEED)
    for k in (1, 15, 16, 17, 40):
        bits = rng.random((3, 5, k)) < 0.5
        words = pack_bits(bits)
        assert words.dtype == np.int32 and words.shape == (3, 5, -(-k // 16))
        assert words.min() >= 0 and words.max() < 1 << 16
        np.testing.assert_array_equal(unpack_bits(words, k), bits)


def test_reference_is_a_sum_of_selected_rows():
    rng = np.random.default_rng(testing.SEED)
    bits = rng.random((6, 21)) < 0.4
    x = rng.standard_normal((21, 5))
    expected = np.zeros((6, 5))
    for m in range(6):
        for j in range(21):
            if bits[m, j]:
                expected[m] += x[j]
    np.testing.assert_allclose(MASKED_ADD_MATMUL_OP.reference(pack_bits(bits), x, k=21), expected, rtol=1e-12, atol=1e-12)


def _model(words: np.ndarray, x: np.ndarray, k: int) -> ir.Model:
    inputs = [ir.val("bits", ir.DataType.INT32, ir.Shape(words.shape)),
              ir.val("x", ir.DataType.from_numpy(x.dtype), ir.Shape(x.shape))]
    node = ir.node(OP_NAME, inputs, attributes={"k": k}, domain=ops.DOMAIN)
    expected = MASKED_ADD_MATMUL_OP.reference(words, x, k=k)
    node.outputs[0].name, node.outputs[0].dtype = "y", ir.DataType.from_numpy(x.dtype)
    node.outputs[0].shape = ir.Shape(expected.shape)
    model = ir.Model(ir.Graph(inputs, node.outputs, nodes=[node], opset_imports={"": 18}, name="mam"), ir_version=10)
    ops.attach_functions(model)
    return model


def test_tvm_llvm_kernel_matches_the_reference():
    pytest.importorskip("tvm")
    from graphopt.backends import tvm as tvm_backend  # noqa: PLC0415

    for (words, x), attrs in MASKED_ADD_MATMUL_OP.examples():
        model = _model(words, x, attrs["k"])
        testing.assert_valid(model)
        feeds = {"bits": words, "x": x}
        got = tvm_backend.compile(model, target="tvm-llvm", example_inputs=feeds).run(feeds)["y"]
        tol = 2e-3 if x.dtype == np.float16 else 1e-5
        np.testing.assert_allclose(got, MASKED_ADD_MATMUL_OP.reference(words, x, **attrs), rtol=tol, atol=tol)
        np.testing.assert_allclose(testing.run_ort(model, feeds)[0], got, rtol=tol, atol=tol)
