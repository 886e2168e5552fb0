"""ONNX backend node cases through tvm-llvm, and one small graph per defect the full suite found.

The full suite (``python -m graphopt.conformance --target tvm-llvm --workers 1``, docs/tvm-conformance.md)
takes minutes; here a curated subset runs, plus the regressions: each preflight refusal of a form TVM
computes wrongly names the op, and each graphopt defect fixed gets a few-node graph against ORT.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as nh
import onnx_ir as ir
import onnxruntime as ort
import pytest

from graphopt import conformance
from graphopt.backends import tvm as tvm_backend

RNG = np.random.default_rng(20261205)
F = onnx.TensorProto.FLOAT

# op families models use, and forms the preflight must refuse (each must be refused, not compiled)
CURATED = (
    r"test_(relu|add|sub|mul|div|matmul_2d|gemm_default_no_bias|softmax_axis_1|conv_with_strides_padding|"
    r"maxpool_2d_pads|averagepool_2d_default|transpose_default|concat_2d_axis_0|gather_0|reduce_mean_default_axes_keepdims_example|"
    r"layer_normalization_2d_axis1|isinf_positive|spacetodepth_crd_mode_example|convtranspose_output_shape|"
    r"bitshift_left_int32_negative_shift|batchnorm_example_training_mode|identity_sequence|resize_upsample_scales_nearest|"
    # cases that exposed the defects fixed here
    r"rotary_embedding_3d_input_expanded|attention_23_fullymasked_qk_matmul_output_mode3_zero_expanded|shape|dropout_default_mask|"
    r"causal_conv_with_state_silu_fp16_expanded)$"
)
MUST_REFUSE = {
    "test_layer_normalization_2d_axis1": "LayerNormalization",
    "test_isinf_positive": "IsInf",
    "test_spacetodepth_crd_mode_example": "SpaceToDepth",
    "test_convtranspose_output_shape": "ConvTranspose",
    "test_bitshift_left_int32_negative_shift": "BitShift",
    "test_batchnorm_example_training_mode": "BatchNormalization",
    "test_identity_sequence": "Identity",
    "test_resize_upsample_scales_nearest": "Resize",  # scales given at run time: refused by the trial import
    "test_reduce_mean_default_axes_keepdims_example": "ReduceMean",  # axes given at run time (an empty graph input)
}


@pytest.fixture(scope="module")
def curated():
    return {r.name: r for r in conformance.run_tvm_suite("canonicalize", CURATED, workers=1)}


@pytest.mark.slow
def test_curated_cases_pass_or_are_refused_with_the_op_named(curated):
    assert len(curated) == 28
    failures = {n: r.reason for n, r in curated.items() if r.status in ("fail", "error")}
    assert failures == {}
    refused = {n: r.refused_op for n, r in curated.items() if r.status == "refused"}
    assert refused == MUST_REFUSE
    assert sum(r.status == "pass" for r in curated.values()) == len(curated) - len(MUST_REFUSE)


def _model(nodes, inputs, initializers=(), opset=18) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info(n, dt, s) for n, dt, s in inputs],
                          [oh.make_tensor_value_info("y", F, None)], initializer=list(initializers))
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)], ir_version=9)


def _against_ort(proto: onnx.ModelProto, feeds) -> tuple[np.ndarray, np.ndarray]:
    expected = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    model = ir.serde.deserialize_model(proto)
    assert tvm_backend.preflight(model) == []
    got = tvm_backend.compile(model, target="tvm-llvm", example_inputs=feeds, threads=1).run(feeds)["y"]
    return got, expected


def test_concat_reshape_of_rotary_halves_is_not_vectorized_across_the_index_period():
    # regression: the Elementwise rule inlined Concat(real, imag) -> Reshape into one block indexing
    # v % 8 and v // 8, vectorized it 16 wide on AVX-512, and TVM's vectorizer produced garbage
    # (max abs 3e34; ONNX case test_rotary_embedding_3d_input_expanded); widths now divide the period
    x = RNG.standard_normal((2, 3, 32)).astype(np.float32)
    cos = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    sin = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    constants = [nh.from_array(np.array([2, 3, 4, 8], np.int64), "s4"), nh.from_array(np.array([2, 3, 32], np.int64), "s3"),
                 nh.from_array(np.array([2], np.int64), "axis")]
    nodes = [oh.make_node("Reshape", ["x", "s4"], ["x4"]), oh.make_node("Split", ["x4"], ["x1", "x2"], axis=-1, num_outputs=2),
             oh.make_node("Unsqueeze", ["cos", "axis"], ["c"]), oh.make_node("Unsqueeze", ["sin", "axis"], ["s"]),
             oh.make_node("Mul", ["c", "x1"], ["a"]), oh.make_node("Mul", ["s", "x2"], ["b"]), oh.make_node("Sub", ["a", "b"], ["real"]),
             oh.make_node("Mul", ["s", "x1"], ["d"]), oh.make_node("Mul", ["c", "x2"], ["e"]), oh.make_node("Add", ["d", "e"], ["imag"]),
             oh.make_node("Concat", ["real", "imag"], ["cat"], axis=-1), oh.make_node("Reshape", ["cat", "s3"], ["y"])]
    proto = _model(nodes, [("x", F, x.shape), ("cos", F, cos.shape), ("sin", F, sin.shape)], constants)
    got, expected = _against_ort(proto, {"x": x, "cos": cos, "sin": sin})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _refusal(nodes, inputs, initializers=(), opset=18) -> list[str]:
    return tvm_backend.preflight(ir.serde.deserialize_model(_model(nodes, inputs, initializers, opset)))


def test_preflight_refuses_layer_norm_statistics_outputs():
    # TVM's converter returned scalar zeros for Mean and InvStdDev (57 ONNX cases: shape () != (3, 1))
    nodes = [oh.make_node("LayerNormalization", ["x", "g"], ["y", "mean", "inv"], axis=1), oh.make_node("Add", ["mean", "inv"], ["z"])]
    model = _model(nodes, [("x", F, [3, 4]), ("g", F, [4])])
    model.graph.output.append(oh.make_tensor_value_info("z", F, None))
    problems = tvm_backend.preflight(ir.serde.deserialize_model(model))
    assert problems == ["tvm-llvm: LayerNormalization: TVM's converter returns zeros for the Mean / InvStdDev outputs (only Y is computed)"]
    # Y alone compiles (and is right)
    x, g = RNG.standard_normal((3, 4)).astype(np.float32), RNG.standard_normal(4).astype(np.float32)
    got, expected = _against_ort(_model([oh.make_node("LayerNormalization", ["x", "g"], ["y"], axis=1)], [("x", F, [3, 4]), ("g", F, [4])]),
                                 {"x": x, "g": g})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("node,inputs,op", [
    (oh.make_node("IsInf", ["x"], ["y"], detect_negative=0), [("x", F, [6])], "IsInf"),
    (oh.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2, mode="CRD"), [("x", F, [1, 2, 4, 6])], "SpaceToDepth"),
    (oh.make_node("ConvTranspose", ["x", "w"], ["y"], output_shape=[10, 8], strides=[3, 2]),
     [("x", F, [1, 1, 3, 3]), ("w", F, [1, 2, 3, 3])], "ConvTranspose"),
    (oh.make_node("BitShift", ["x", "s"], ["y"], direction="LEFT"),
     [("x", onnx.TensorProto.INT32, [3]), ("s", onnx.TensorProto.INT32, [3])], "BitShift"),
    (oh.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm", "rv"], training_mode=1),
     [("x", F, [2, 3, 4]), *[(n, F, [3]) for n in "sbmv"]], "BatchNormalization"),
])
def test_preflight_refuses_forms_tvm_computes_wrongly(node, inputs, op):
    # each measured on the ONNX node cases: TVM's own converter gives wrong values or shapes
    problems = _refusal([node], inputs)
    assert len(problems) == 1 and problems[0].startswith(f"tvm-llvm: {op}: ")


def test_preflight_accepts_a_constant_in_range_bit_shift():
    shift = nh.from_array(np.array([1, 2, 31], np.int32), "s")
    node = oh.make_node("BitShift", ["x", "s"], ["y"], direction="LEFT")
    assert _refusal([node], [("x", onnx.TensorProto.INT32, [3])], [shift]) == []


def test_preflight_names_the_op_whose_converter_needs_a_constant_input():
    # the trial import: TVM's Resize converter needs its scales at compile time
    node = oh.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")
    problems = _refusal([node], [("x", F, [1, 1, 2, 2]), ("scales", F, [4])])
    assert len(problems) == 1 and problems[0].startswith("tvm-llvm: Resize: TVM's ONNX converter cannot import this form")


@pytest.mark.parametrize("node,inputs,op", [
    (oh.make_node("Mod", ["x", "d"], ["y"], fmod=0), [("x", F, [4]), ("d", F, [4])], "Mod"),
    (oh.make_node("Pow", ["x", "p"], ["y"]), [("x", onnx.TensorProto.INT32, [3]), ("p", onnx.TensorProto.INT32, [3])], "Pow"),
    (oh.make_node("RMSNormalization", ["x", "w"], ["y"], axis=0), [("x", F, [2, 3]), ("w", F, [2, 3])], "RMSNormalization"),
    (oh.make_node("Expand", ["x", "s"], ["y"]), [("x", F, [3, 1]), ("s", onnx.TensorProto.INT64, [3])], "Expand"),
    (oh.make_node("ConstantOfShape", ["s"], ["y"]), [("s", onnx.TensorProto.INT64, [2])], "ConstantOfShape"),
    (oh.make_node("NonMaxSuppression", ["b", "s"], ["y"]), [("b", F, [1, 1, 4]), ("s", F, [1, 1, 1])], "NonMaxSuppression"),
])
def test_preflight_refuses_more_forms_tvm_gets_wrong(node, inputs, op):
    # float floor-mod: NaN for an infinite divisor; integer Pow: "power only applies to float";
    # RMSNorm over every axis, NMS, Expand/ConstantOfShape of a run-time shape: wrong shapes or no build
    problems = _refusal([node], inputs, opset=23)
    assert len(problems) == 1 and problems[0].startswith(f"tvm-llvm: {op}: ")


def test_preflight_refuses_max_pool_indices_output():
    nodes = [oh.make_node("MaxPool", ["x"], ["p", "i"], kernel_shape=[2, 2]), oh.make_node("Cast", ["i"], ["y"], to=F)]
    assert _refusal(nodes, [("x", F, [1, 1, 4, 4])]) == ["tvm-llvm: MaxPool: the Indices output is not produced by TVM's converter"]


@pytest.mark.parametrize("op,fill", [("ReduceMax", -np.inf), ("ReduceMin", np.inf)])
def test_reduce_max_of_a_row_of_infinities_is_infinite(op, fill):
    # regression: TVM's max/min start from the dtype's finite extreme, so a fully masked row
    # (all -inf) came out as -3.4e38 and Equal(max, -inf) was false (attention fully-masked cases)
    x = RNG.standard_normal((5, 70)).astype(np.float32)
    x[1] = fill
    x[3, :35] = fill
    axes = nh.from_array(np.array([-1], np.int64), "axes")
    got, expected = _against_ort(_model([oh.make_node(op, ["x", "axes"], ["y"])], [("x", F, x.shape)], [axes]), {"x": x})
    assert got[1, 0] == fill
    np.testing.assert_array_equal(got, expected)


def test_shape_folded_into_a_graph_output_compiles():
    # regression: folding wrote Shape(x) -> graph output as Constant(value_ints=...), which TVM's
    # converter cannot read ("no value in Constant"; the ONNX test_shape* and test_size* cases)
    model = _model([oh.make_node("Shape", ["x"], ["s"]), oh.make_node("Cast", ["s"], ["y"], to=F)], [("x", F, [3, 4, 5])])
    model.graph.output[0].CopyFrom(oh.make_tensor_value_info("s", onnx.TensorProto.INT64, None))
    model.graph.node.pop()
    x = RNG.standard_normal((3, 4, 5)).astype(np.float32)
    compiled = tvm_backend.compile(ir.serde.deserialize_model(model), target="tvm-llvm", example_inputs={"x": x}, threads=1)
    np.testing.assert_array_equal(compiled.run({"x": x})["s"], [3, 4, 5])


def test_constant_of_shape_graph_output_does_not_crash_the_preflight():
    # regression: prepare materialized a ConstantOfShape that is a graph output and onnx_ir raised
    # (Dropout's default mask, ONNX test_dropout_default_mask: the preflight itself crashed)
    shape = nh.from_array(np.array([3, 4], np.int64), "shape")
    nodes = [oh.make_node("ConstantOfShape", ["shape"], ["mask"], value=nh.from_array(np.array([1], np.float32))),
             oh.make_node("Identity", ["x"], ["y"])]
    model = _model(nodes, [("x", F, [3, 4])], [shape])
    model.graph.output.append(oh.make_tensor_value_info("mask", F, None))
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    assert tvm_backend.preflight(ir.serde.deserialize_model(model)) == []
    got = tvm_backend.compile(ir.serde.deserialize_model(model), target="tvm-llvm", example_inputs={"x": x}, threads=1).run({"x": x})
    np.testing.assert_array_equal(got["mask"], np.ones((3, 4), np.float32))
    np.testing.assert_array_equal(got["y"], x)


@pytest.mark.parametrize("op", ["MatMul", "Conv"])
def test_float16_contractions_round_once_like_ort(op):
    # regression: TVM's converters accumulate float16 dot products in float16: K=512 came out
    # 0.01 (7 ulp) off, ORT 0.0005; the fp16 causal conv + SiLU case failed its rtol 1e-3.
    # The importer widens the contraction to float32 and rounds once: now equal to ORT's bits.
    half = onnx.TensorProto.FLOAT16
    x = RNG.standard_normal((8, 512) if op == "MatMul" else (1, 512, 1, 8)).astype(np.float16)
    w = (RNG.standard_normal((512, 4) if op == "MatMul" else (4, 512, 1, 1)) / 20).astype(np.float16)
    graph = oh.make_graph([oh.make_node(op, ["x", "w"], ["y"])], "g",
                          [oh.make_tensor_value_info("x", half, x.shape), oh.make_tensor_value_info("w", half, w.shape)],
                          [oh.make_tensor_value_info("y", half, None)])
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)], ir_version=9)
    got, expected = _against_ort(proto, {"x": x, "w": w})
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), expected.astype(np.float32), rtol=1e-3, atol=1e-3)


def test_expand_to_a_shape_computed_from_static_inputs_is_accepted_and_right():
    # the Expand refusal is about shapes known only at run time; a Shape-derived target (legacy
    # exporters' attention masks) folds once the inputs are static, and must compile
    x = RNG.standard_normal((3, 1)).astype(np.float32)
    z = RNG.standard_normal((2, 3, 6)).astype(np.float32)
    nodes = [oh.make_node("Shape", ["z"], ["s"]), oh.make_node("Expand", ["x", "s"], ["e"]), oh.make_node("Add", ["e", "z"], ["y"])]
    got, expected = _against_ort(_model(nodes, [("x", F, x.shape), ("z", F, z.shape)]), {"x": x, "z": z})
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_an_import_failure_after_the_converter_returned_names_that_op(monkeypatch):
    # the frontend checks a node's outputs after its converter returns ("Missing outputs ... in
    # MaxPool"); without the MaxPool form check that failure must still name the op
    from graphopt.backends.tvm import importer

    monkeypatch.delitem(importer.FORM_CHECKS, "MaxPool")
    nodes = [oh.make_node("MaxPool", ["x"], ["p", "i"], kernel_shape=[2, 2]), oh.make_node("Cast", ["i"], ["y"], to=F)]
    problems = _refusal(nodes, [("x", F, [1, 1, 4, 4])])
    assert len(problems) == 1 and problems[0].startswith("tvm-llvm: MaxPool: ")
    assert "Missing outputs" in problems[0]
