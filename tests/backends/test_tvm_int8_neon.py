"""graphopt's aarch64 sdot int8 kernels (backends/tvm/cpu/arm/sdot_*): cross-compiled, run under qemu, bit-exact.

Every MatMulInteger / ConvInteger case goes through the converter inside ``with target:`` (as the
importer does) into one Relax function with one output per case, so a single cross-compile and a
single qemu run check them all against numpy's int32 matmul (and an int64 numpy convolution). The
cases cover the extremes (-128, 127, 255, zero points), K not a multiple of 4, M and N not multiples
of the tile, batch dims on either side, uint8 activations (the -128 offset and its correction terms),
activation × activation products and convolution padding, which reads as the zero point.
"""

from __future__ import annotations

import re

import numpy as np
import onnx_ir as ir
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from graphopt.backends import tvm as tvm_backend
from graphopt.backends.tvm import edge, targets
from graphopt.backends.tvm.artifact import TensorInfo, TvmArtifact
from graphopt.backends.tvm.build import build
from graphopt.backends.tvm.convert import CONVERTERS, has_dotprod
from graphopt.backends.tvm.cpu.arm.sdot_matmul import activation_matmul_func, pack_weights, weight_matmul_func

DOTPROD = targets.resolve("tvm-aarch64")
NEON_ONLY = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})

missing = edge.toolchain_problems()
needs_toolchain = pytest.mark.skipif(bool(missing), reason=f"aarch64 toolchain missing ({'; '.join(missing)}): "
                                     "run backends/tvm/edge/install_toolchain.sh")


def _ints(rng, shape, dtype, low=None, high=None) -> np.ndarray:
    info = np.iinfo(dtype)
    return rng.integers(info.min if low is None else low, (info.max if high is None else high) + 1, shape, dtype=dtype)


def _reference(a, b, a_zero=0, b_zero=0) -> np.ndarray:
    centered_a = a.astype(np.int64) - np.asarray(a_zero, np.int64)
    return np.matmul(centered_a, b.astype(np.int64) - np.asarray(b_zero, np.int64)).astype(np.int32)


def _matmul_cases() -> dict[str, list]:
    """name -> MatMulInteger inputs as (array, is_constant) or None (absent optional input)."""
    rng = np.random.default_rng(0)
    cases: dict[str, list] = {}
    # Linear layers: int8 activations × constant int8 weights (-128 included), batch dims, ragged K/M/N.
    w = _ints(rng, (10, 13), np.int8)
    w[:, 0] = -128
    cases["weight-batch-K10-N13"] = [(_ints(rng, (2, 3, 10), np.int8), False), (w, True)]
    cases["weight-M33-K67-N37"] = [(_ints(rng, (33, 67), np.int8), False), (_ints(rng, (67, 37), np.int8), True)]
    for a_value, w_value in [(-128, -128), (-128, 127), (127, 127)]:
        cases[f"weight-extreme{a_value}x{w_value}"] = [(np.full((2, 64), a_value, np.int8), False),
                                                       (np.full((64, 8), w_value, np.int8), True)]
    # uint8 A with a zero point, per-column weight zero points (127: -128 - 127 = -255 centered).
    a = _ints(rng, (3, 4, 11), np.uint8)
    a[0, 0, :] = 255
    w_zero = _ints(rng, (10,), np.int8)
    w_zero[0] = 127
    cases["weight-u8-zero-points"] = [(a, False), (_ints(rng, (11, 10), np.int8), True), (np.array(7, np.uint8), True),
                                      (w_zero, True)]
    cases["weight-u8xu8"] = [(_ints(rng, (5, 9), np.uint8), False), (_ints(rng, (9, 6), np.uint8), True), None,
                             (np.array(255, np.uint8), True)]
    # Attention: Q·Kᵀ (int8 × int8) and P·V (uint8 × int8), both at run time.
    cases["qk-random"] = [(_ints(rng, (2, 3, 5, 10), np.int8), False), (_ints(rng, (2, 3, 10, 12), np.int8), False)]
    cases["qk-min"] = [(np.full((2, 5, 7), -128, np.int8), False), (np.full((2, 7, 6), -128, np.int8), False)]
    cases["pv-random"] = [(_ints(rng, (2, 3, 17, 17), np.uint8), False), (_ints(rng, (2, 3, 17, 16), np.int8), False)]
    cases["pv-max-neg"] = [(np.full((1, 4, 33), 255, np.uint8), False), (np.full((1, 33, 5), -128, np.int8), False)]
    cases["pv-max-pos"] = [(np.full((1, 4, 33), 255, np.uint8), False), (np.full((1, 33, 5), 127, np.int8), False)]
    # One side without batch dims, and constant zero points on run-time operands (both corrections).
    cases["act-b-unbatched"] = [(_ints(rng, (2, 5, 9), np.int8), False), (_ints(rng, (9, 7), np.int8), False)]
    cases["act-a-unbatched"] = [(_ints(rng, (6, 9), np.uint8), False), (_ints(rng, (2, 9, 7), np.int8), False)]
    cases["act-u8xu8-zero-points"] = [(_ints(rng, (4, 9), np.uint8), False), (_ints(rng, (9, 6), np.uint8), False),
                                      (np.array(200, np.uint8), True), (np.array(3, np.uint8), True)]
    return cases


def _conv_cases() -> dict[str, tuple[list, dict]]:
    """name -> (ConvInteger inputs, attributes): zero points, padding that reads as the zero point, strides, dilations."""
    rng = np.random.default_rng(3)
    w = _ints(rng, (5, 3, 3, 3), np.int8)
    w[0] = -128
    per_channel = _ints(rng, (5,), np.int8)
    per_channel[0] = 127
    x_u8 = _ints(rng, (2, 3, 9, 8), np.uint8)
    x_u8[0, 0] = 255
    return {
        "conv-u8-pad-stride": ([(x_u8, False), (w, True), (np.array(131, np.uint8), True), (np.array(-3, np.int8), True)],
                               {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
        "conv-s8-asym-dilated": ([(_ints(rng, (1, 3, 9, 8), np.int8), False), (w, True)],
                                 {"pads": [0, 2, 1, 0], "dilations": [2, 1]}),
        "conv-u8-per-channel": ([(x_u8, False), (w, True), (np.array(255, np.uint8), True), (per_channel, True)],
                                {"pads": [1, 0, 1, 2]}),
        "conv-patches": ([(_ints(rng, (2, 1, 8, 8), np.int8), False), (_ints(rng, (16, 1, 4, 4), np.int8), True)],
                         {"strides": [4, 4]}),  # a ViT's patch embedding: K = 16, no padding
    }


def _cases() -> dict[str, tuple[str, list, dict]]:
    """name -> (op type, inputs, attributes) for every case of the qemu run."""
    cases = {name: ("MatMulInteger", inputs, {}) for name, inputs in _matmul_cases().items()}
    cases.update({name: ("ConvInteger", inputs, attrs) for name, (inputs, attrs) in _conv_cases().items()})
    return cases


def _conv_reference(x, w, x_zero, w_zero, attrs) -> np.ndarray:
    """int32 ConvInteger in numpy: centered operands, zero padding after centering (= padding with x_zero)."""
    top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
    sh, sw = attrs.get("strides", [1, 1])
    dh, dw = attrs.get("dilations", [1, 1])
    centered = np.pad(x.astype(np.int64) - int(x_zero), ((0, 0), (0, 0), (top, bottom), (left, right)))
    weights = w.astype(np.int64) - np.asarray(w_zero, np.int64).reshape(-1, 1, 1, 1)
    _, _, kh, kw = w.shape
    oh = (centered.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (centered.shape[3] - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((x.shape[0], w.shape[0], oh, ow), np.int64)
    for r in range(kh):
        for c in range(kw):
            window = centered[:, :, r * dh: r * dh + sh * (oh - 1) + 1: sh, c * dw: c * dw + sw * (ow - 1) + 1: sw]
            out += np.einsum("nchw,mc->nmhw", window, weights[:, :, r, c])
    return out.astype(np.int32)


def _expected(op: str, inputs: list, attrs: dict) -> np.ndarray:
    first, second = inputs[0][0], inputs[1][0]
    zeros = [item[0] if item is not None else 0 for item in (inputs[2:] + [None, None])[:2]]
    if op == "ConvInteger":
        return _conv_reference(first, second, *zeros, attrs)
    return _reference(first, second, *zeros)


def _module(cases: dict[str, tuple[str, list, dict]], target) -> tuple[tvm.IRModule, list[TensorInfo], dict[str, np.ndarray]]:
    """One Relax ``main`` computing every case (an output each); its run-time inputs and their feeds."""
    bb = relax.BlockBuilder()
    params, infos, feeds, calls = [], [], {}, []
    for name, (op, inputs, attrs) in cases.items():
        exprs = []
        for position, item in enumerate(inputs):
            if item is None:
                exprs.append(None)
                continue
            array, is_constant = item
            if is_constant:
                exprs.append(relax.const(array))
                continue
            var_name = f"{name}.{position}"
            var = relax.Var(var_name, relax.TensorType(array.shape, str(array.dtype)))
            params.append(var)
            infos.append(TensorInfo(var_name, str(array.dtype), array.shape))
            feeds[var_name] = array
            exprs.append(var)
        calls.append((op, exprs, attrs))
    with target, bb.function("main", params):
        with bb.dataflow():
            outputs = [CONVERTERS[op](bb, exprs, attrs) for op, exprs, attrs in calls]
            result = bb.emit_output(relax.Tuple(outputs))
        bb.emit_func_output(result)
    return bb.get(), infos, feeds


def _kernel_names(mod: tvm.IRModule) -> set[str]:
    return {gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


@needs_toolchain
def test_sdot_kernels_are_bit_exact_under_qemu():
    cases = _cases()
    mod, infos, feeds = _module(cases, DOTPROD.tvm_target())
    names = _kernel_names(mod)
    assert names and all("sdot" in name for name in names), names  # no case fell back to the generic kernel
    expected = {name: _expected(*case) for name, case in cases.items()}
    outputs = [TensorInfo(name, "int32", value.shape) for name, value in expected.items()]
    artifact = TvmArtifact(DOTPROD, infos, outputs, executable=build(mod, DOTPROD))
    got = artifact.run(feeds)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def _kernel_asm(executable) -> str:
    """The assembly of a Relax executable's kernels (its imported LLVM module)."""
    return "\n".join(m.inspect_source("asm") for m in executable.mod.imports if m.kind == "llvm")


@needs_toolchain
def test_onnx_model_through_the_importer_uses_sdot_and_is_exact():
    """An ONNX linear layer (int8 × int8 initializer, batch dims, 17 rows) compiled by the backend for tvm-aarch64."""
    rng = np.random.default_rng(2)
    x, w = _ints(rng, (2, 17, 24), np.int8), _ints(rng, (24, 20), np.int8)
    node = helper.make_node("MatMulInteger", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "linear", [helper.make_tensor_value_info("x", TensorProto.INT8, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, None)], [numpy_helper.from_array(w, "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    artifact = tvm_backend.compile(ir.serde.deserialize_model(proto), target="tvm-aarch64", example_inputs={"x": x})
    assert re.search(r"\bsdot\s+v\d+\.4s", _kernel_asm(artifact.executable))
    np.testing.assert_array_equal(artifact.run({"x": x})["y"], _reference(x, w))


def _asm(func: tvm.tirx.PrimFunc) -> str:
    executable = tvm.compile(tvm.IRModule({"main": func}), target=DOTPROD.tvm_target())
    return executable.mod.inspect_source("asm")


@pytest.mark.parametrize("kind", ["weights", "activations"])
def test_generated_aarch64_code_uses_sdot(kind):
    """The tensorized loop really is sdot, with no widening multiplies (smull/mul .4s) in its place."""
    if kind == "weights":
        packed = pack_weights(np.ones((64, 32), np.int8), 0, "int8", 0)
        func = weight_matmul_func(16, 64, 32, "int8", col_bias=False, row_scale=False)
        assert packed.packed.shape == (2, 16, 16, 4) and packed.col_bias is None and packed.row_scale is None
    else:
        func = activation_matmul_func((2, 16, 64), "uint8", (2, 64, 32), "int8")
    asm = _asm(func)
    assert re.search(r"\bsdot\s+v\d+\.4s", asm)
    assert not re.search(r"\b[su]mull2?\s", asm)


def test_uint8_weights_get_exact_correction_terms():
    """pack_weights' int8 layout plus its corrections reproduce the zero-pointed product in numpy."""
    rng = np.random.default_rng(1)
    a, w = _ints(rng, (3, 10), np.uint8), _ints(rng, (10, 6), np.uint8)
    a_zero, w_zero = 9, _ints(rng, (6,), np.uint8)
    packed = pack_weights(w, w_zero, "uint8", a_zero)
    panels, k_steps, panel, _ = packed.packed.shape
    kp, np_ = k_steps * 4, panels * panel
    b_int8 = packed.packed.transpose(1, 3, 0, 2).reshape(kp, np_)[:10, :6].astype(np.int64)
    a_int8 = a.astype(np.int64) - 128
    got = a_int8 @ b_int8 + packed.col_bias + np.outer(a_int8.sum(axis=1), packed.row_scale)
    np.testing.assert_array_equal(got.astype(np.int32), _reference(a, w, a_zero, w_zero))


def test_targets_without_dotprod_keep_the_generic_kernel():
    assert has_dotprod(DOTPROD.tvm_target()) and not has_dotprod(NEON_ONLY)
    a, w = np.zeros((4, 8), np.int8), np.ones((8, 8), np.int8)
    for target in (NEON_ONLY, tvm.target.Target({"kind": "cuda", "arch": "sm_80"})):
        cases = {"weights": ("MatMulInteger", [(a, False), (w, True)], {}),
                 "activations": ("MatMulInteger", [(a, False), (w, False)], {})}
        mod, _, _ = _module(cases, target)
        assert _kernel_names(mod) == {"graphopt_int8_matmul"}  # both cases: one deduplicated generic kernel
