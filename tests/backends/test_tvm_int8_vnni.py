"""graphopt's x86 VNNI int8 kernels (``vpdpbusd``): bit-exact, and chosen from the target's CPU.

Each case builds a one-op Relax function through the converter (inside ``with target:``, as the
importer does), compiles it and compares with numpy's int32 matmul (ConvInteger: with ONNX
Runtime). ``vpdpbusd`` multiplies uint8 by int8, so int8 activations are shifted by 128 and
uint8 weights by -128 with exact correction terms; the extremes (-128, 127, 0, 255, zero points)
are where a wrong correction or an overflow would show. Running needs a host with AVX-512 VNNI
(the cases skip otherwise); the kernel-choice tests only build modules and run anywhere.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm

from graphopt.backends.tvm import targets
from graphopt.backends.tvm.convert import vnni_isa
from graphopt.backends.tvm.cpu.x86 import vnni_matmul

from test_tvm_int8 import _kernel_names, _module, _ort_conv_integer, _reference, _run

# Cascade Lake: AVX-512 F/BW/VL + VNNI and nothing newer, so the code runs on every AVX-512 VNNI host.
VNNI = tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2})
AVX_VNNI = tvm.target.Target({"kind": "llvm", "mcpu": "alderlake", "num-cores": 2})  # VEX vpdpbusd, no AVX-512
AVX2 = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
HOST = tvm.target.Target(targets.host_target_config())
HOST_ISA = vnni_isa(HOST)
needs_vnni = pytest.mark.skipif(
    HOST_ISA != "avx512-vnni", reason=f"host CPU lacks AVX-512 VNNI (graphopt detects: {HOST_ISA or 'no VNNI'})"
)


HOST_HAS_AVX_VNNI = bool(tvm.target.codegen.target_has_features("avxvnni", HOST))


def _ints(rng, shape, dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, shape, dtype=dtype)


@needs_vnni
@pytest.mark.parametrize(
    ("lead", "k", "n"),
    [((2, 3), 10, 13), ((1,), 1, 1), ((7,), 37, 50), ((5,), 64, 64), ((130,), 384, 96)],
    ids=["batch-K10-N13", "1x1x1", "ragged-M7-K37-N50", "aligned", "M130-two-panels"],
)
@pytest.mark.parametrize(("a_dtype", "w_dtype"), [("int8", "int8"), ("uint8", "int8"), ("int8", "uint8"), ("uint8", "uint8")])
def test_weight_matmul_random_is_exact(lead, k, n, a_dtype, w_dtype):
    """Activations × constant weights over the full int8/uint8 ranges (-128 included) for ragged M, N, K."""
    rng = np.random.default_rng(0)
    a = _ints(rng, (*lead, k), np.dtype(a_dtype))
    w = _ints(rng, (k, n), np.dtype(w_dtype))
    got, mod = _run("MatMulInteger", [(a, False), (w, True)], {}, VNNI)
    np.testing.assert_array_equal(got, _reference(a, w))
    assert _kernel_names(mod) == {"graphopt_int8_matmul_vnni"}


@needs_vnni
@pytest.mark.parametrize(
    ("a_dtype", "a_value", "w_dtype", "w_value"),
    [("int8", -128, "int8", -128), ("int8", -128, "int8", 127), ("int8", 127, "int8", -128), ("int8", 127, "int8", 127),
     ("uint8", 255, "int8", -128), ("uint8", 255, "int8", 127), ("uint8", 0, "int8", -128), ("uint8", 255, "uint8", 255),
     ("int8", -128, "uint8", 0), ("uint8", 0, "uint8", 255)],
)
def test_weight_matmul_extremes_are_exact(a_dtype, a_value, w_dtype, w_value):
    """Every operand at an end of its range over a long K: the corrections (±128 · sums) at their largest."""
    k = 1540  # ragged (not a multiple of the 4-byte step) and MiniLM's longest reduction, rounded up
    a = np.full((3, k), a_value, a_dtype)
    w = np.full((k, 20), w_value, w_dtype)
    got, _ = _run("MatMulInteger", [(a, False), (w, True)], {}, VNNI)
    np.testing.assert_array_equal(got, np.full((3, 20), k * a_value * w_value, np.int32))


@needs_vnni
def test_weight_matmul_with_zero_points_is_exact():
    """uint8 A with a zero point, int8 weights with a per-column zero point (the row-sum correction)."""
    rng = np.random.default_rng(1)
    a = _ints(rng, (3, 4, 11), np.uint8)
    a[0, 0, :] = 255
    w = _ints(rng, (11, 10), np.int8)
    w[:, 0] = -128
    a_zero = np.array(7, np.uint8)
    w_zero = _ints(rng, (10,), np.int8)
    w_zero[0] = 127  # -128 - 127 = -255: the widest centered weight
    got, mod = _run("MatMulInteger", [(a, False), (w, True), (a_zero, True), (w_zero, True)], {}, VNNI)
    np.testing.assert_array_equal(got, _reference(a, w, a_zero, w_zero))
    assert _kernel_names(mod) == {"graphopt_int8_matmul_vnni"}


@needs_vnni
@pytest.mark.parametrize(
    ("a_dtype", "b_dtype", "fill"),
    [("int8", "int8", (-128, -128)), ("int8", "int8", (127, -128)), ("uint8", "int8", (255, -128)),
     ("uint8", "int8", (255, 127)), ("uint8", "uint8", (0, 255)), ("int8", "int8", None), ("uint8", "int8", None),
     ("int8", "uint8", None)],
    ids=["qk-min", "qk-mixed", "pv-max-neg", "pv-max-pos", "u8u8-edge", "qk-random", "pv-random", "s8u8-random"],
)
def test_activation_matmul_is_exact(a_dtype, b_dtype, fill):
    """Attention's Q·Kᵀ (int8 × int8) and P·V (uint8 × int8), both operands at run time, batch dims, ragged M/K/N."""
    rng = np.random.default_rng(2)
    a = _ints(rng, (2, 3, 5, 10), np.dtype(a_dtype))
    b = _ints(rng, (2, 3, 10, 21), np.dtype(b_dtype))
    if fill is not None:
        a[:], b[:] = fill
    got, mod = _run("MatMulInteger", [(a, False), (b, False)], {}, VNNI)
    np.testing.assert_array_equal(got, _reference(a, b))
    assert _kernel_names(mod) == {"graphopt_int8_batch_matmul_vnni"}


@needs_vnni
def test_activation_matmul_with_zero_points_and_broadcast_b():
    """Scalar constant zero points on both run-time operands; B without the batch dims of A."""
    rng = np.random.default_rng(3)
    a, b = _ints(rng, (2, 6, 9), np.uint8), _ints(rng, (9, 17), np.uint8)
    a_zero, b_zero = np.array(200, np.uint8), np.array(3, np.uint8)
    got, _ = _run("MatMulInteger", [(a, False), (b, False), (a_zero, True), (b_zero, True)], {}, VNNI)
    np.testing.assert_array_equal(got, _reference(a, b, a_zero, b_zero))


@needs_vnni
def test_minilm_shapes_are_exact():
    """The ivit MiniLM's FFN layer ([1,128,384]x[384,1536]), its Q·Kᵀ and its P·V ([1,12,128,128] uint8 x [1,12,128,32])."""
    rng = np.random.default_rng(5)
    a, w = _ints(rng, (1, 128, 384), np.int8), _ints(rng, (384, 1536), np.int8)
    got, _ = _run("MatMulInteger", [(a, False), (w, True)], {}, VNNI)
    np.testing.assert_array_equal(got, _reference(a, w))
    q, k = _ints(rng, (1, 12, 128, 32), np.int8), _ints(rng, (1, 12, 32, 128), np.int8)
    got, _ = _run("MatMulInteger", [(q, False), (k, False)], {}, VNNI)
    np.testing.assert_array_equal(got, _reference(q, k))
    p, v = _ints(rng, (1, 12, 128, 128), np.uint8), _ints(rng, (1, 12, 128, 32), np.int8)
    got, _ = _run("MatMulInteger", [(p, False), (v, False)], {}, VNNI)
    np.testing.assert_array_equal(got, _reference(p, v))


@needs_vnni
@pytest.mark.parametrize(
    ("x_dtype", "x_zero", "w_zero", "fill", "attrs"),
    [
        ("uint8", 131, -3, None, {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
        ("int8", 0, 0, None, {"pads": [0, 2, 1, 0], "dilations": [2, 1]}),
        ("uint8", 255, 5, None, {"auto_pad": "SAME_UPPER"}),
        ("int8", -128, 0, (-128, -128), {"pads": [1, 1, 1, 1]}),
        ("uint8", 0, 0, (255, 127), {"pads": [1, 0, 1, 0]}),
    ],
    ids=["u8-pad-stride", "s8-asym-dilated", "u8-same-upper", "s8-min-padded", "u8-max"],
)
def test_conv_integer_matches_onnxruntime(x_dtype, x_zero, w_zero, fill, attrs):
    """ConvInteger as im2col rows × weights on vpdpbusd vs ORT, padding included (pads read as the zero point)."""
    rng = np.random.default_rng(4)
    x = _ints(rng, (2, 3, 9, 8), np.dtype(x_dtype))
    w = _ints(rng, (5, 3, 3, 3), np.int8)
    if fill is not None:
        x[:], w[:] = fill
    x_zero, w_zero = np.array(x_zero, x.dtype), np.array(w_zero, np.int8)
    expected = _ort_conv_integer(x, w, x_zero, w_zero, attrs)
    got, mod = _run("ConvInteger", [(x, False), (w, True), (x_zero, True), (w_zero, True)], attrs, VNNI)
    np.testing.assert_array_equal(got, expected)
    assert _kernel_names(mod) == {"graphopt_int8_conv_vnni"}


@pytest.mark.skipif(not HOST_HAS_AVX_VNNI, reason="host CPU lacks AVX-VNNI (VEX vpdpbusd); its assembly is checked below")
@pytest.mark.parametrize(("a_dtype", "w_dtype"), [("int8", "int8"), ("uint8", "uint8")])
def test_avx_vnni_weight_matmul_is_exact(a_dtype, w_dtype):
    """The 256-bit form on a host that has it: ragged shapes, full ranges."""
    rng = np.random.default_rng(6)
    a, w = _ints(rng, (7, 37), np.dtype(a_dtype)), _ints(rng, (37, 50), np.dtype(w_dtype))
    got, mod = _run("MatMulInteger", [(a, False), (w, True)], {}, AVX_VNNI)
    np.testing.assert_array_equal(got, _reference(a, w))
    assert _kernel_names(mod) == {"graphopt_int8_matmul_vnni"}


def _matmul_kernels(target) -> set[str]:
    a, w = np.zeros((4, 8), np.int8), np.ones((8, 8), np.int8)
    mod, _ = _module("MatMulInteger", [(a, False), (w, True)], {}, target)
    return _kernel_names(mod)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"kind": "llvm", "mcpu": "haswell"}, {"graphopt_int8_matmul_s8_sign_avx2"}),
        ({"kind": "llvm", "mcpu": "znver3"}, {"graphopt_int8_matmul_s8_sign_avx2"}),
        ({"kind": "llvm", "mcpu": "skylake-avx512"}, {"graphopt_int8_matmul_s8_sign_avx2"}),  # AVX-512 without VNNI
        ({"kind": "llvm", "mcpu": "haswell", "mattr": ["+avx512f", "+avx512bw", "+avx512vnni"]}, {"graphopt_int8_matmul_vnni"}),
        ({"kind": "llvm", "mcpu": "cascadelake"}, {"graphopt_int8_matmul_vnni"}),
        ({"kind": "llvm", "mcpu": "znver4"}, {"graphopt_int8_matmul_vnni"}),
        ({"kind": "llvm", "mcpu": "alderlake"}, {"graphopt_int8_matmul_vnni"}),
        ({"kind": "llvm"}, {"graphopt_int8_matmul"}),  # no mcpu: generic x86-64, whatever the host has
        ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]}, {"graphopt_int8_matmul_sdot"}),
    ],
    ids=["haswell", "znver3", "skylake-avx512", "haswell+vnni", "cascadelake", "znver4", "alderlake", "no-mcpu", "aarch64"],
)
def test_kernel_follows_the_target_not_the_host(config, expected):
    """The instruction set comes from the target's mcpu/mattr: an AVX2 target gets AVX2 kernels on a VNNI host."""
    assert _matmul_kernels(tvm.target.Target(config)) == expected


@pytest.mark.parametrize(
    ("target", "expected"),
    [(AVX2, {"graphopt_int8_conv_i16_avx2"}), (VNNI, {"graphopt_int8_conv_vnni"}), (AVX_VNNI, {"graphopt_int8_conv_vnni"})],
    ids=["haswell", "cascadelake", "alderlake"],
)
def test_conv_kernel_follows_the_target(target, expected):
    x, w = np.zeros((1, 3, 6, 6), np.uint8), np.ones((4, 3, 3, 3), np.int8)
    mod, _ = _module("ConvInteger", [(x, False), (w, True)], {"pads": [1, 1, 1, 1]}, target)
    assert _kernel_names(mod) == expected


def test_vnni_isa_reads_the_target():
    assert vnni_isa(VNNI) == "avx512-vnni"
    assert vnni_isa(AVX_VNNI) == "avx-vnni"
    assert vnni_isa(AVX2) is None
    assert vnni_isa(tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+dotprod"]})) is None
    assert vnni_isa(tvm.target.Target({"kind": "cuda", "arch": "sm_80"})) is None


def test_cross_target_json_gets_avx2_kernels():
    """A JSON target naming an AVX2-only CPU, resolved as graphopt resolves --targets, is never given VNNI."""
    spec = targets.resolve('{"kind": "llvm", "mcpu": "haswell"}')
    assert _matmul_kernels(spec.tvm_target()) == {"graphopt_int8_matmul_s8_sign_avx2"}


def test_host_features_a_hypervisor_hides_are_switched_off():
    """LLVM names the CPU (znver4 has VNNI); a VM that hides AVX-512 VNNI from /proc/cpuinfo gets AVX2 kernels."""
    flags = {"avx2", "fma", "avx512f", "avx512bw", "avx512vl"}  # no avx512_vnni
    masked = targets.masked_host_features("znver4", flags)
    assert masked == ["-avx512vnni"]
    target = tvm.target.Target({"kind": "llvm", "mcpu": "znver4", "mattr": masked})
    assert _matmul_kernels(target) == {"graphopt_int8_matmul_s8_sign_avx2"}
    assert targets.masked_host_features("znver4", flags | {"avx512_vnni"}) == []
    assert targets.masked_host_features("znver4", None) == []  # no /proc/cpuinfo: trust LLVM's CPU name


@needs_vnni
def test_host_target_gets_vnni():
    """tvm-llvm builds for this machine's CPU, which has AVX-512 VNNI."""
    assert _matmul_kernels(targets.resolve("tvm-llvm").tvm_target()) == {"graphopt_int8_matmul_vnni"}


def test_reduction_longer_than_max_k_falls_back_to_avx2():
    """Past MAX_K the int32 partial sums could wrap: the AVX2 kernels take over."""
    a, w = np.zeros((1, vnni_matmul.MAX_K + 4), np.int8), np.ones((vnni_matmul.MAX_K + 4, 16), np.int8)
    mod, _ = _module("MatMulInteger", [(a, False), (w, True)], {}, VNNI)
    assert _kernel_names(mod) == {"graphopt_int8_matmul_s8_sign_avx2"}


@pytest.mark.parametrize(
    ("target", "register"),
    [pytest.param(VNNI, r"zmm", id="avx512-vnni"), pytest.param(AVX_VNNI, r"ymm", id="avx-vnni")],
)
def test_kernel_emits_vpdpbusd(target, register):
    """The tensorized kernel really is vpdpbusd on zmm (AVX-512) / VEX-encoded on ymm (AVX-VNNI), not vpmaddubsw."""
    func = vnni_matmul.weight_matmul_func(16, 64, 64, "int8", col_bias=True, row_scale=False, isa=vnni_isa(target))
    asm = tvm.compile(tvm.IRModule({"main": func}), target=target).mod.inspect_source("asm")
    assert re.search(rf"\bvpdpbusd\s+[^\n]*%{register}", asm)
    assert not re.search(r"\bvpmaddubsw\b", asm)
    if target is AVX_VNNI:
        assert "{vex}" in asm  # the AVX-VNNI encoding, not EVEX (Alder Lake has no AVX-512)
