"""The ``ShiftConv`` op: its weight layout (ShiftMatMul's codes of the [K, M] matrix), its numpy conv and
its torch implementation.

(reference == ONNX body on the examples, and every backend having an implementation, are the generic
tests in ``tests/core/test_ops.py``.)
"""

from __future__ import annotations

import numpy as np
import pytest

from graphopt import ops, testing
from graphopt.ops.shift_conv import conv_reference, decoded_weight, shift_conv_reference, weight_matrix
from graphopt.ops.shift_matmul import decode, pack


def test_weight_matrix_round_trips_through_the_packed_codes():
    rng = np.random.default_rng(testing.SEED)
    w_codes = rng.integers(0, 32, (6, 2, 3, 3))  # codes laid out as a conv weight [M, C/g, kh, kw]
    packed = pack(weight_matrix(w_codes))
    assert packed.shape == (3, 6)  # K = 18: three words of six codes per output channel
    np.testing.assert_array_equal(decoded_weight(packed, 2, [3, 3]), decode(w_codes))


def test_numpy_conv_matches_onnx_runtime_conv():
    rng = np.random.default_rng(testing.SEED)
    x = rng.standard_normal((1, 4, 7, 6)).astype(np.float32)
    w = rng.standard_normal((4, 2, 3, 2)).astype(np.float32)
    conv = {"group": 2, "strides": [2, 1], "pads": [1, 0, 0, 1], "dilations": [1, 2]}
    got = conv_reference(x, w, **conv)
    import onnx  # noqa: PLC0415

    node = onnx.helper.make_node("Conv", ["x", "w"], ["y"], **conv)
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x.shape)],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                                   [onnx.numpy_helper.from_array(w, "w")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=8)
    np.testing.assert_allclose(testing.run_ort(model, {"x": x})[0], got, rtol=1e-5, atol=1e-5)


def test_torch_matches_the_reference():
    torch = pytest.importorskip("torch")
    impl = ops.implementations("torch")["ShiftConv"]
    for (x, p, s, b), attrs in ops.get_op("ShiftConv").examples():
        got = impl(*(torch.from_numpy(a) for a in (x, p, s, b)), **attrs).numpy()
        np.testing.assert_allclose(got, shift_conv_reference(x, p, s, b, **attrs), rtol=1e-5, atol=1e-5)
