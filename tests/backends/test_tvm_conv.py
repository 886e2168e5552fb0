"""Conv-net graphs through tvm-llvm against ONNX Runtime: one small graph per defect found, plus the
op families conv nets use (Constant-node weights, depthwise, dilation, asymmetric pads, pools, Resize)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import onnxruntime as ort
import pytest

from graphopt.backends import tvm as tvm_backend

RNG = np.random.default_rng(20261205)


def _const(name: str, array: np.ndarray) -> onnx.NodeProto:
    """Weights as Constant nodes, as opset-11 exporters write them."""
    return oh.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(array, name))


def _model(nodes, x_shape, opset: int) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)], ir_version=7)


def _check(proto: onnx.ModelProto, x_shape, atol=1e-4):
    feeds = {"x": RNG.standard_normal(x_shape).astype(np.float32)}
    expected = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    (got,) = tvm_backend.compile(ir.serde.deserialize_model(proto), target="tvm-llvm", example_inputs=feeds).run(feeds).values()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=atol)


def test_opset11_resize_with_empty_scales_next_to_sizes():
    # regression: TVM's converter took the empty `scales` for a given one ("Only one of scales and sizes")
    nodes = [_const("roi", np.zeros(0, np.float32)), _const("scales", np.zeros(0, np.float32)),
             _const("sizes", np.array([1, 2, 12, 10], np.int64)),
             oh.make_node("Resize", ["x", "roi", "scales", "sizes"], ["y"], mode="linear",
                          coordinate_transformation_mode="pytorch_half_pixel")]
    _check(_model(nodes, [1, 2, 6, 5], 11), [1, 2, 6, 5])


@pytest.mark.parametrize("mode,coords", [("nearest", "asymmetric"), ("linear", "half_pixel"), ("linear", "align_corners")])
def test_opset11_resize_by_scales(mode, coords):
    nodes = [_const("roi", np.zeros(0, np.float32)), _const("scales", np.array([1, 1, 2, 2], np.float32)),
             oh.make_node("Resize", ["x", "roi", "scales"], ["y"], mode=mode, coordinate_transformation_mode=coords)]
    _check(_model(nodes, [2, 3, 5, 7], 11), [2, 3, 5, 7])


@pytest.mark.parametrize("group,dilation,pads,stride", [(1, 1, [1, 1, 1, 1], 1), (8, 1, [1, 1, 1, 1], 1),
                                                        (8, 2, [2, 2, 2, 2], 1), (1, 1, [0, 0, 1, 1], 2),
                                                        (2, 1, [1, 0, 2, 1], 2)])
def test_conv_with_constant_node_weights(group, dilation, pads, stride):
    w = RNG.standard_normal((8, 8 // group, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(8).astype(np.float32)
    nodes = [_const("w", w), _const("b", b),
             oh.make_node("Conv", ["x", "w", "b"], ["c"], group=group, dilations=[dilation] * 2, pads=pads, strides=[stride] * 2),
             oh.make_node("HardSigmoid", ["c"], ["y"], alpha=0.2, beta=0.5)]
    _check(_model(nodes, [2, 8, 11, 13], 11), [2, 8, 11, 13])


def test_conv_transpose_batchnorm_pools():
    w = RNG.standard_normal((8, 4, 2, 2)).astype(np.float32)
    stats = [RNG.uniform(0.5, 1.5, 4).astype(np.float32), RNG.standard_normal(4).astype(np.float32),
             RNG.standard_normal(4).astype(np.float32), RNG.uniform(0.5, 2, 4).astype(np.float32)]
    nodes = [_const("w", w), *[_const(n, a) for n, a in zip(["s", "t", "m", "v"], stats)],
             oh.make_node("ConvTranspose", ["x", "w"], ["u"], strides=[2, 2]),
             oh.make_node("BatchNormalization", ["u", "s", "t", "m", "v"], ["n"]),
             oh.make_node("HardSwish", ["n"], ["h"]),
             oh.make_node("MaxPool", ["h"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
             oh.make_node("AveragePool", ["p"], ["a"], kernel_shape=[2, 2], strides=[2, 2]),
             oh.make_node("GlobalAveragePool", ["a"], ["g"]),
             oh.make_node("Mul", ["a", "g"], ["y"])]
    _check(_model(nodes, [2, 8, 9, 7], 14), [2, 8, 9, 7])


def test_pointwise_conv_is_not_tiled_as_a_matmul_over_fused_spatial_axes():
    # regression: the Matmul rule took a 1x1 conv (N = h, w fused) and computed wrong values (DBNet-like: cosine 0.00002)
    nodes = [_const("w", RNG.standard_normal((32, 64, 1, 1)).astype(np.float32)), oh.make_node("Conv", ["x", "w"], ["y"])]
    _check(_model(nodes, [1, 64, 40, 40], 11), [1, 64, 40, 40])


# --- channels-last convolutions under the WindowReduction rule, and ragged matmul tiles --------------


def _conv_chain(channels_in: int, channels_out: int, group: int, kernel: int, stride: int, dilation: int):
    w = RNG.standard_normal((channels_out, channels_in // group, kernel, kernel)).astype(np.float32)
    pad = dilation * (kernel // 2)
    return [_const("w", w), _const("b", RNG.standard_normal(channels_out).astype(np.float32)),
            oh.make_node("Conv", ["x", "w", "b"], ["c"], group=group, kernel_shape=[kernel] * 2, pads=[pad] * 4,
                         strides=[stride] * 2, dilations=[dilation] * 2)]


@pytest.mark.parametrize("cin,cout,group,kernel,stride,dilation,width", [
    (3, 24, 1, 7, 2, 1, 29),     # stem: 3 input channels, 24 outputs (not a whole 16-lane vector), prime width
    (16, 48, 1, 3, 1, 1, 13),    # prime width: full pixel tiles plus a predicated tail
    (32, 32, 32, 3, 1, 1, 14),   # depthwise
    (24, 48, 24, 3, 2, 1, 15),   # depthwise with channel multiplier 2, stride 2
    (32, 64, 4, 3, 1, 2, 12),    # grouped, dilated
    (8, 1, 1, 1, 1, 1, 10),      # one output channel (a detector head)
])
def test_channels_last_conv_matches_ort(cin, cout, group, kernel, stride, dilation, width):
    nodes = [*_conv_chain(cin, cout, group, kernel, stride, dilation), oh.make_node("Relu", ["c"], ["y"])]
    _check(_model(nodes, [1, cin, 11, width], 17), [1, cin, 11, width])


def test_channels_last_conv_with_residual_pool_and_layout_boundaries():
    # conv -> +x -> max pool stay NHWC; Reshape and ConvTranspose (pinned to NCHW) need transposes back
    shape = [2, 16, 9, 11]
    nodes = [*_conv_chain(16, 16, 1, 3, 1, 1), oh.make_node("Add", ["c", "x"], ["r"]),
             oh.make_node("MaxPool", ["r"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
             _const("up_w", RNG.standard_normal((16, 4, 2, 2)).astype(np.float32)),
             oh.make_node("ConvTranspose", ["p", "up_w"], ["u"], strides=[2, 2]),
             _const("shape", np.array([2, -1], np.int64)), oh.make_node("Reshape", ["u", "shape"], ["y"])]
    _check(_model(nodes, shape, 17), shape)


def _matmul_model(a_shape, b_shape, b_initializer: bool) -> onnx.ModelProto:
    inputs = [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, a_shape)]
    nodes, inits = [oh.make_node("MatMul", ["x", "b"], ["m"]), oh.make_node("Relu", ["m"], ["y"])], []
    if b_initializer:
        inits = [onnx.numpy_helper.from_array(RNG.standard_normal(b_shape).astype(np.float32), "b")]
    else:
        inputs.append(oh.make_tensor_value_info("b", onnx.TensorProto.FLOAT, b_shape))
    graph = oh.make_graph(nodes, "g", inputs, [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("a_shape,b_shape,b_initializer", [
    ([1, 6, 197, 64], [1, 6, 64, 197], False),  # ViT attention scores: 197 tokens (prime) both ways
    ([1, 197, 96], [96, 100], True),             # dense layer: ragged M, N not a vector multiple
    ([1, 7, 64], [64, 48], True),                # short M (a 7x7 feature map's row)
])
def test_ragged_matmul_tiles_match_ort(a_shape, b_shape, b_initializer):
    proto = _matmul_model(a_shape, b_shape, b_initializer)
    feeds = {"x": RNG.standard_normal(a_shape).astype(np.float32)}
    if not b_initializer:
        feeds["b"] = RNG.standard_normal(b_shape).astype(np.float32)
    expected = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = tvm_backend.compile(ir.serde.deserialize_model(proto), target="tvm-llvm", example_inputs=feeds).run(feeds)["y"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_svtr_like_hybrid_matches_ort():
    # the conv + transformer text recognizer class (cosine 0.84 on tvm-llvm before): conv stem,
    # masked local attention over the feature map, strided merge conv, pooling, CTC head
    from bench.tvm_conv import _export, _svtr

    module, shape, opset = _svtr(height=16, width=64)
    _check(_export(module, shape, opset), list(shape), atol=1e-5)


def test_ragged_vocabulary_weight_is_padded_once_and_prepacked():
    # GPT-2's 50,257-wide LM head: padded per call by pad_einsum before (a 154 MB copy per decode step)
    from graphopt.backends.tvm.cpu.pad_weights import padded_width

    assert [padded_width(n, 16) for n in (8, 16, 100, 1000, 50257)] == [8, 16, 112, 1008, 50304]
    proto = _matmul_model([1, 4, 64], [64, 1000], b_initializer=True)
    feeds = {"x": RNG.standard_normal((1, 4, 64)).astype(np.float32)}
    expected = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    artifact = tvm_backend.compile(ir.serde.deserialize_model(proto), target="tvm-llvm", example_inputs=feeds)
    assert any(name.endswith("_prepacked") and rule == "Matmul" for name, rule in artifact.kernel_rules.items()), artifact.kernel_rules
    np.testing.assert_allclose(artifact.run(feeds)["y"], expected, rtol=1e-4, atol=1e-4)
