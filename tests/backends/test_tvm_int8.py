"""graphopt's TVM int8 kernels (backends/tvm/convert, cpu/x86): bit-exact MatMulInteger / ConvInteger on every path.

Each case builds a one-op Relax function through the converter (inside ``with target:``, as the
importer does), compiles it and compares with numpy's int32 matmul (ConvInteger: with ONNX
Runtime). The AVX2 target takes the packed, tensorized kernels; a plain ``llvm`` target (no AVX2)
takes the generic TE kernels. Extremes (-128, 127, 255, zero points) are where int16 saturation
in ``vpmaddubsw`` would show.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from graphopt.backends.tvm import targets
from graphopt.backends.tvm.convert import CONVERTERS, has_avx2, vnni_isa
from graphopt.backends.tvm.cpu.x86 import avx2_weight_layout as prepack
from graphopt.backends.tvm.cpu.x86.avx2_matmul import matmul_func

AVX2 = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
PLAIN = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64"})  # SSE2 only: the generic kernels
AARCH64 = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
HOST_HAS_AVX2 = has_avx2(tvm.target.Target({"kind": "llvm", "mcpu": str(tvm.target.codegen.llvm_get_system_cpu())}))
TARGETS = [
    pytest.param(AVX2, id="avx2", marks=pytest.mark.skipif(not HOST_HAS_AVX2, reason="host CPU lacks AVX2")),
    pytest.param(PLAIN, id="generic"),
]


def _module(op: str, inputs: list, attrs: dict, target) -> tuple[tvm.IRModule, list[np.ndarray]]:
    """A Relax module of one ``op``; ``inputs`` are ``(array, is_constant)`` or None (absent optional input)."""
    bb = relax.BlockBuilder()
    params, feeds, exprs = [], [], []
    for position, item in enumerate(inputs):
        if item is None:
            exprs.append(None)
            continue
        array, is_constant = item
        if is_constant:
            exprs.append(relax.const(array))
        else:
            var = relax.Var(f"in{position}", relax.TensorType(array.shape, str(array.dtype)))
            params.append(var)
            feeds.append(array)
            exprs.append(var)
    with target, bb.function("main", params):
        with bb.dataflow():
            output = bb.emit_output(CONVERTERS[op](bb, exprs, attrs))
        bb.emit_func_output(output)
    return bb.get(), feeds


def _run(op: str, inputs: list, attrs: dict, target) -> tuple[np.ndarray, tvm.IRModule]:
    mod, feeds = _module(op, inputs, attrs, target)
    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(f) for f in feeds]).numpy(), mod


def _kernel_names(mod: tvm.IRModule) -> set[str]:
    return {gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def _reference(a, b, a_zero=0, b_zero=0) -> np.ndarray:
    return np.matmul(a.astype(np.int64) - np.asarray(a_zero, np.int64), b.astype(np.int64) - np.asarray(b_zero, np.int64)).astype(np.int32)


def _ints(rng, shape, dtype, low=None, high=None) -> np.ndarray:
    info = np.iinfo(dtype)
    return rng.integers(info.min if low is None else low, (info.max if high is None else high) + 1, shape, dtype=dtype)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(
    ("lead", "k", "n"),
    [((2, 3), 10, 13), ((8,), 4, 16), ((6,), 3, 9)],
    ids=["batch-K10-N13", "aligned", "K3-N9"],
)
def test_weight_matmul_random_is_exact(target, lead, k, n):
    """int8 activations × constant int8 weights in [-127, 127] (int8-linear's layers); odd K and N are padded."""
    rng = np.random.default_rng(0)
    a = _ints(rng, (*lead, k), np.int8)  # lead = (batch..., M)
    w = _ints(rng, (k, n), np.int8, low=-127)
    got, mod = _run("MatMulInteger", [(a, False), (w, True)], {}, target)
    np.testing.assert_array_equal(got, _reference(a, w))
    if target is AVX2:
        assert any("s8_sign" in name for name in _kernel_names(mod)), _kernel_names(mod)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(("a_value", "w_value"), [(-128, 127), (-128, -127), (127, 127), (127, -127)])
def test_weight_matmul_extremes_do_not_saturate(target, a_value, w_value):
    """Every pair sum at its int16 worst case (2·128·127): vpmaddubsw would saturate without the sign trick."""
    a = np.full((2, 64), a_value, np.int8)
    w = np.full((64, 8), w_value, np.int8)
    got, _ = _run("MatMulInteger", [(a, False), (w, True)], {}, target)
    np.testing.assert_array_equal(got, np.full((2, 8), 64 * a_value * w_value, np.int32))


@pytest.mark.parametrize("target", TARGETS)
def test_weight_matmul_with_zero_points_and_minus_128_weights(target):
    """uint8 A with a zero point, weights holding -128 and a per-column zero point: the int16 path."""
    rng = np.random.default_rng(1)
    a = _ints(rng, (3, 4, 11), np.uint8)
    a[0, 0, :] = 255
    w = _ints(rng, (11, 10), np.int8)
    w[:, 0] = -128
    a_zero = np.array(7, np.uint8)
    w_zero = _ints(rng, (10,), np.int8)
    w_zero[0] = 127  # -128 - 127 = -255: the widest centered weight
    got, mod = _run("MatMulInteger", [(a, False), (w, True), (a_zero, True), (w_zero, True)], {}, target)
    np.testing.assert_array_equal(got, _reference(a, w, a_zero, w_zero))
    if target is AVX2:
        assert any("i16" in name for name in _kernel_names(mod)), _kernel_names(mod)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(
    ("a_dtype", "a_fill", "b_fill"),
    [("int8", -128, -128), ("uint8", 255, -128), ("uint8", 255, 127), ("int8", None, None), ("uint8", None, None)],
    ids=["qk-min", "pv-max-neg", "pv-max-pos", "qk-random", "pv-random"],
)
def test_activation_matmul_is_exact(target, a_dtype, a_fill, b_fill):
    """Attention's Q·Kᵀ (int8 × int8) and P·V (uint8 × int8), both operands at run time, batch dims, odd K/N."""
    rng = np.random.default_rng(2)
    a = _ints(rng, (2, 3, 5, 10), np.dtype(a_dtype))
    b = _ints(rng, (2, 3, 10, 12), np.int8)
    if a_fill is not None:
        a[:], b[:] = a_fill, b_fill
    got, _ = _run("MatMulInteger", [(a, False), (b, False)], {}, target)
    np.testing.assert_array_equal(got, _reference(a, b))


@pytest.mark.parametrize("target", TARGETS)
def test_activation_matmul_with_runtime_zero_points(target):
    """Zero points that are graph inputs take the generic kernel (also on AVX2) and stay exact."""
    rng = np.random.default_rng(3)
    a, b = _ints(rng, (4, 9), np.uint8), _ints(rng, (9, 6), np.uint8)
    a_zero, b_zero = np.array(200, np.uint8), np.array(3, np.uint8)
    got, _ = _run("MatMulInteger", [(a, False), (b, False), (a_zero, False), (b_zero, False)], {}, target)
    np.testing.assert_array_equal(got, _reference(a, b, a_zero, b_zero))


@pytest.mark.skipif(not HOST_HAS_AVX2, reason="host CPU lacks AVX2")
def test_minilm_shapes_are_exact_on_avx2():
    """The ivit MiniLM's FFN layer ([1,128,384]x[384,1536]) and its P·V ([1,12,128,128] uint8 x [1,12,128,32])."""
    rng = np.random.default_rng(5)
    a, w = _ints(rng, (1, 128, 384), np.int8), _ints(rng, (384, 1536), np.int8, low=-127)
    got, _ = _run("MatMulInteger", [(a, False), (w, True)], {}, AVX2)
    np.testing.assert_array_equal(got, _reference(a, w))
    p, v = _ints(rng, (1, 12, 128, 128), np.uint8), _ints(rng, (1, 12, 128, 32), np.int8)
    got, _ = _run("MatMulInteger", [(p, False), (v, False)], {}, AVX2)
    np.testing.assert_array_equal(got, _reference(p, v))


def test_aarch64_without_dotprod_and_cuda_get_the_generic_kernel():
    a = np.zeros((4, 8), np.int8)
    w = np.ones((8, 8), np.int8)
    for target in (AARCH64, tvm.target.Target({"kind": "cuda", "arch": "sm_80"})):
        mod, _ = _module("MatMulInteger", [(a, False), (w, True)], {}, target)
        assert _kernel_names(mod) == {"graphopt_int8_matmul"}


@pytest.mark.skipif(not HOST_HAS_AVX2, reason="host CPU lacks AVX2")
@pytest.mark.parametrize(("kind", "instruction"), [("s8-sign", "vpmaddubsw"), ("i16", "vpmaddwd")])
def test_avx2_kernel_uses_the_multiply_add_instructions(kind, instruction):
    """The tensorized kernels really emit vpmaddubsw / vpmaddwd (not widened vpmulld)."""
    w = np.ones((64, 32), np.int8)
    packed = prepack.pack_int8(w) if kind == "s8-sign" else prepack.pack_int16(w)
    func = matmul_func((16, 64), "int8", packed.shape, str(packed.dtype), kind=kind, packed_n=32)
    executable = tvm.compile(tvm.IRModule({"main": func}), target=AVX2)
    asm = executable.mod.inspect_source("asm")
    assert re.search(rf"\b{instruction}\b", asm)
    assert not re.search(r"\bvpmulld\b", asm)


def _ort_conv_integer(x, w, x_zero, w_zero, attrs) -> np.ndarray:
    inputs = [helper.make_tensor_value_info("x", onnx.helper.np_dtype_to_tensor_dtype(x.dtype), list(x.shape))]
    initializers = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(x_zero, "xz"), numpy_helper.from_array(w_zero, "wz")]
    node = helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.INT32, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(
    ("x_dtype", "x_zero", "attrs"),
    [
        ("uint8", 131, {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
        ("int8", 0, {"pads": [0, 2, 1, 0], "dilations": [2, 1]}),
        ("uint8", 255, {"auto_pad": "SAME_UPPER"}),
    ],
    ids=["u8-pad-stride", "s8-asym-dilated", "u8-same-upper"],
)
def test_conv_integer_matches_onnxruntime(target, x_dtype, x_zero, attrs):
    """ConvInteger (no TVM converter exists) vs ORT, padding included: pads read as the zero point."""
    rng = np.random.default_rng(4)
    x = _ints(rng, (2, 3, 9, 8), np.dtype(x_dtype))
    w = _ints(rng, (5, 3, 3, 3), np.int8)
    x_zero, w_zero = np.array(x_zero, x.dtype), np.array(-3, np.int8)
    expected = _ort_conv_integer(x, w, x_zero, w_zero, attrs)
    got, mod = _run("ConvInteger", [(x, False), (w, True), (x_zero, True), (w_zero, True)], attrs, target)
    np.testing.assert_array_equal(got, expected)
    if target is AVX2:
        assert any("conv_i16_avx2" in name for name in _kernel_names(mod)), _kernel_names(mod)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "x_dtype", "x_zero", "attrs"),
    [
        ((1, 8, 7, 6), (8, 1, 3, 3), "int8", 0, {"group": 8, "pads": [1, 1, 1, 1]}),  # depthwise (SegFormer, MobileViT)
        ((2, 4, 9, 8), (8, 1, 3, 3), "uint8", 131, {"group": 4, "strides": [2, 2], "pads": [1, 0, 1, 2]}),  # multiplier 2
        ((1, 6, 8, 8), (4, 3, 2, 2), "int8", 0, {"group": 2, "strides": [2, 1], "auto_pad": "SAME_UPPER"}),
        ((2, 3, 20), (5, 3, 4), "int8", 0, {"strides": [2], "pads": [1, 2]}),  # Conv1d (Whisper's front-end)
        ((1, 16, 19), (16, 4, 5), "uint8", 255, {"group": 4, "pads": [2, 2], "dilations": [2]}),  # grouped Conv1d (Wav2Vec2's positions)
        ((1, 8, 11), (8, 1, 3), "int8", 0, {"group": 8, "strides": [2], "auto_pad": "SAME_LOWER"}),
        ((1, 4, 5, 6, 7), (6, 2, 2, 3, 2), "int8", 0, {"group": 2, "strides": [1, 2, 1], "pads": [0, 1, 1, 1, 0, 0]}),  # 3-D
    ],
    ids=["depthwise", "grouped-u8-stride", "grouped-same-upper", "1d", "1d-grouped-u8", "1d-depthwise-same-lower", "3d-grouped"],
)
def test_grouped_and_nd_conv_integer_match_onnxruntime(target, x_shape, w_shape, x_dtype, x_zero, attrs):
    """ConvInteger with group > 1 and with 1 or 3 spatial axes: bit for bit with ONNX Runtime, extremes included."""
    rng = np.random.default_rng(6)
    x = _ints(rng, x_shape, np.dtype(x_dtype))
    w = _ints(rng, w_shape, np.int8, low=-127)
    x.reshape(-1)[:7] = np.iinfo(x.dtype).min if x_zero == 0 else np.iinfo(x.dtype).max
    w.reshape(-1)[:3] = -127
    x_zero, w_zero = np.array(x_zero, x.dtype), np.array(0, np.int8)
    expected = _ort_conv_integer(x, w, x_zero, w_zero, attrs)
    got, mod = _run("ConvInteger", [(x, False), (w, True), (x_zero, True), (w_zero, True)], attrs, target)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.skipif(not HOST_HAS_AVX2, reason="host CPU lacks AVX2")
def test_conv1d_takes_the_packed_2d_kernel():
    """A group-1 Conv1d is the 2-D ConvInteger over [N, C, 1, L]: the target's packed kernel, not the generic one."""
    rng = np.random.default_rng(7)
    x, w = _ints(rng, (1, 16, 30), np.int8), _ints(rng, (8, 16, 3), np.int8, low=-127)
    zeros = [(np.array(0, np.int8), True), (np.array(0, np.int8), True)]
    got, mod = _run("ConvInteger", [(x, False), (w, True), *zeros], {"strides": [2], "pads": [1, 1]}, AVX2)
    np.testing.assert_array_equal(got, _ort_conv_integer(x, w, np.array(0, np.int8), np.array(0, np.int8),
                                                         {"strides": [2], "pads": [1, 1]}))
    assert any("conv_i16_avx2" in name for name in _kernel_names(mod)), _kernel_names(mod)


VNNI = tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2})
HOST_HAS_VNNI = vnni_isa(tvm.target.Target(targets.host_target_config())) == "avx512-vnni"


@pytest.mark.parametrize("target", [*TARGETS, pytest.param(VNNI, id="vnni", marks=pytest.mark.skipif(
    not HOST_HAS_VNNI, reason="host CPU lacks AVX-512 VNNI"))])
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "attrs"),
    [
        ((1, 8, 9, 9), (16, 8, 1, 1), {}),  # MobileViT's pointwise convs
        ((2, 8, 9, 8), (6, 8, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
        ((1, 8, 7, 7), (8, 1, 3, 3), {"group": 8, "pads": [1, 1, 1, 1]}),  # depthwise
    ],
    ids=["pointwise", "3x3-pad-stride", "depthwise"],
)
def test_int8_linear_lopsided_conv_form_matches_onnxruntime(target, x_shape, w_shape, attrs):
    """int8-linear's Conv island for a lopsided input (SiLU outputs): uint8 x with a zero point, the int8 weights
    as uint8 + 128 with zero point 128; bit for bit with ONNX Runtime, padding (reads as x's zero point) and
    the extremes (x 0 and 255 against weights -127 and 127) included."""
    rng = np.random.default_rng(8)
    x = _ints(rng, x_shape, np.uint8)
    w = (_ints(rng, w_shape, np.int8, low=-127).astype(np.int16) + 128).astype(np.uint8)
    x.reshape(-1)[:5], x.reshape(-1)[5:9] = 255, 0
    w.reshape(-1)[:3], w.reshape(-1)[3:5] = 1, 255  # -127 and 127 after the zero point
    x_zero, w_zero = np.array(23, np.uint8), np.array(128, np.uint8)
    expected = _ort_conv_integer(x, w, x_zero, w_zero, attrs)
    got, _ = _run("ConvInteger", [(x, False), (w, True), (x_zero, True), (w_zero, True)], attrs, target)
    np.testing.assert_array_equal(got, expected)
