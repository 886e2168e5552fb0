"""The ``ShiftMatMulInteger`` kernels on TVM: integer activations times packed power-of-two weights, bit-exact.

The CPU kernels (``cpu_func``: vectorized over output columns, ``±(x << e)`` by variable shifts; and
on AVX-512 ``permute_func``: ``vpermi2d`` picking ±(x << e) from a per-row table by the code) equal
the numpy reference bit for bit: int8 and int32 activations, 1 to 8 rows in blocks, K a multiple of
the codes per word and not, ternary with zero codes, zero-free, 3-bit codes, extreme values. Through
the converter: padded N and rows, batch axes, and the TE path (no target); a model through tvm-llvm
equals ONNX Runtime running the body; the AVX2 build of the same kernel (AVX-512 switched off in the
target) too; the aarch64 build under qemu; the CUDA build compiles with nvcc.
"""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from graphopt import ops, testing  # noqa: E402
from graphopt.backends import tvm as tvm_backend  # noqa: E402
from graphopt.backends.tvm import targets  # noqa: E402
from graphopt.backends.tvm.cpu.common import vector_lanes  # noqa: E402
from graphopt.backends.tvm.kernels import shift_matmul_integer as kernels  # noqa: E402
from graphopt.backends.tvm.kernels.shift_matmul import relayout  # noqa: E402
from graphopt.ops.shift_matmul import pack  # noqa: E402
from graphopt.ops.shift_matmul_integer import OP_NAME, shift_matmul_integer_reference  # noqa: E402

HOST = targets.resolve("tvm-llvm").tvm_target()


def _x(rng, rows, k, dtype):
    if dtype == "int8":
        return rng.integers(-128, 128, (rows, k)).astype(np.int8)
    return rng.integers(-40000, 40000, (rows, k)).astype(np.int32)


def _run_cpu(x, p, bits, zero_free, block):
    lanes = vector_lanes(HOST, "int32")
    chunk = lanes * kernels.VECTORS
    n = p.shape[1]
    func = kernels.cpu_func(x.shape[0], x.shape[1], n, lanes, bits, zero_free, str(x.dtype), block)
    compiled = tvm.compile(tvm.IRModule({"main": func}), target=HOST)["main"]
    device = tvm.cpu(0)
    out = tvm.runtime.tensor(np.full((x.shape[0], n), -7, np.int32), device)
    neg = kernels.negative_counts(p, x.shape[1], bits, zero_free)
    compiled(tvm.runtime.tensor(x, device), tvm.runtime.tensor(relayout(p, chunk), device),
             tvm.runtime.tensor(neg, device), out)
    return out.numpy()


@pytest.mark.parametrize(("rows", "block", "k", "bits", "zero_free", "dtype"),
                         [(1, 1, 48, 5, 0, "int8"), (1, 1, 45, 5, 1, "int8"), (8, 4, 29, 5, 0, "int8"),
                          (3, 3, 13, 3, 0, "int8"), (4, 4, 40, 5, 1, "int32")])
def test_cpu_kernel_is_bit_exact(rows, block, k, bits, zero_free, dtype):
    rng = np.random.default_rng(testing.SEED)
    n = 3 * vector_lanes(HOST, "int32") * kernels.VECTORS
    x, p = _x(rng, rows, k, dtype), pack(rng.integers(0, 1 << bits, (k, n)), bits)
    np.testing.assert_array_equal(_run_cpu(x, p, bits, zero_free, block),
                                  shift_matmul_integer_reference(x, p, bits=bits, zero_free=zero_free))


def _run_permute(x, p, zero_free, block):
    chunk = 16 * kernels.PERMUTE_VECTORS
    func = kernels.permute_func(x.shape[0], x.shape[1], p.shape[1], zero_free, str(x.dtype), block)
    compiled = tvm.compile(tvm.IRModule({"main": func}), target=HOST)
    assert "vpermi2d" in compiled.mod.inspect_source("asm") or "vpermt2d" in compiled.mod.inspect_source("asm")
    device = tvm.cpu(0)
    out = tvm.runtime.tensor(np.full((x.shape[0], p.shape[1]), -7, np.int32), device)
    compiled["main"](tvm.runtime.tensor(x, device), tvm.runtime.tensor(relayout(p, chunk), device), out)
    return out.numpy()


@pytest.mark.skipif(not kernels.uses_permute(HOST, 5), reason="the host has no AVX-512")
@pytest.mark.parametrize(("rows", "block", "k", "zero_free", "dtype"),
                         [(1, 1, 48, 0, "int8"), (1, 1, 45, 1, "int8"), (8, 4, 29, 0, "int8"), (4, 4, 40, 1, "int32")])
def test_avx512_table_kernel_is_bit_exact(rows, block, k, zero_free, dtype):
    rng = np.random.default_rng(testing.SEED + 5)
    n = 2 * 16 * kernels.PERMUTE_VECTORS
    x, p = _x(rng, rows, k, dtype), pack(rng.integers(0, 32, (k, n)))
    np.testing.assert_array_equal(_run_permute(x, p, zero_free, block),
                                  shift_matmul_integer_reference(x, p, zero_free=zero_free))


def test_cpu_kernel_extremes_are_exact():
    """-128 · -2^15 on every weight (zero-free code 31), and the int32 wrap of int32 activations."""
    n = vector_lanes(HOST, "int32") * kernels.VECTORS
    x = np.full((1, 60), -128, np.int8)
    p = pack(np.full((60, n), 31))
    np.testing.assert_array_equal(_run_cpu(x, p, 5, 1, 1), np.full((1, n), 60 * 128 * 2**15, np.int32))
    big = np.full((1, 12), 2**30 - 1, np.int32)
    np.testing.assert_array_equal(_run_cpu(big, p[:2], 5, 1, 1), shift_matmul_integer_reference(big, p[:2], zero_free=1))


def _converter(x, p, attrs, target):
    bb = relax.BlockBuilder()
    var = relax.Var("x", relax.TensorType(x.shape, str(x.dtype)))
    with bb.function("main", [var]):
        with bb.dataflow():
            if target is None:
                out = bb.emit_output(kernels.convert(bb, [var, relax.const(p)], attrs))
            else:
                with target:
                    out = bb.emit_output(kernels.convert(bb, [var, relax.const(p)], attrs))
        bb.emit_func_output(out)
    executable = tvm.compile(bb.get(), target=target or HOST)
    return relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


@pytest.mark.parametrize("shape", [(1, 21), (2, 3, 21), (7, 21)], ids=["gemv", "batch-axes", "rows-padded"])
@pytest.mark.parametrize("zero_free", [0, 1])
def test_converter_is_bit_exact(shape, zero_free):
    rng = np.random.default_rng(testing.SEED + 1)
    n = 37  # padded to whole chunks, sliced back
    x = rng.integers(-128, 128, shape).astype(np.int8)
    p = pack(rng.integers(0, 32, (shape[-1], n)))
    expected = shift_matmul_integer_reference(x, p, zero_free=zero_free)
    attrs = {"bits": 5, "zero_free": zero_free, "tvm_custom": {"name": "n0", "num_outputs": 1}}
    np.testing.assert_array_equal(_converter(x, p, attrs, HOST), expected)
    if shape == (2, 3, 21):  # no target: the TE compute
        np.testing.assert_array_equal(_converter(x, p, attrs, None), expected)


def _model(rows: int, k: int, n: int) -> tuple[ir.Model, dict]:
    rng = np.random.default_rng(testing.SEED + 2)
    p = ir.tensor(pack(rng.integers(0, 32, (k, n))), name="p")
    x = ir.val("x", ir.DataType.INT8, ir.Shape([rows, k]))
    pv = ir.Value(name="p", const_value=p)
    pv.type, pv.shape = ir.TensorType(ir.DataType.INT32), ir.Shape(p.shape)
    node = ir.node(OP_NAME, [x, pv], attributes={"bits": 5, "zero_free": 0}, domain=ops.DOMAIN, version=ops.OPSET_VERSION)
    node.outputs[0].name, node.outputs[0].dtype, node.outputs[0].shape = "y", ir.DataType.INT32, ir.Shape([rows, n])
    graph = ir.Graph([x], node.outputs, nodes=[node], initializers=[pv], opset_imports={"": 20, ops.DOMAIN: 1}, name="shift")
    model = ir.Model(graph, ir_version=10)
    ops.attach_functions(model)
    return model, {"x": rng.integers(-128, 128, (rows, k)).astype(np.int8)}


@pytest.mark.parametrize("rows", [1, 6])
def test_tvm_llvm_backend_equals_onnx_runtime(rows):
    model, feeds = _model(rows, 30, 19)
    testing.assert_valid(model)
    artifact = tvm_backend.compile(model, target="tvm-llvm", example_inputs=feeds)
    np.testing.assert_array_equal(artifact.run(feeds)["y"], testing.run_ort(model, feeds)[0])


def test_avx2_build_equals_onnx_runtime():
    """The host target without AVX-512: 8-lane vectors (the kernel reads the lanes from the target)."""
    config = targets.host_target_config()
    target = json.dumps({**config, "mattr": [*config.get("mattr", []), "-avx512f"]})
    model, feeds = _model(1, 30, 19)
    artifact = tvm_backend.compile(model, target=target, example_inputs=feeds)
    np.testing.assert_array_equal(artifact.run(feeds)["y"], testing.run_ort(model, feeds)[0])


def test_aarch64_build_equals_onnx_runtime_under_qemu():
    from graphopt.backends.tvm import edge  # noqa: PLC0415

    missing = edge.toolchain_problems()
    if missing:
        pytest.skip(f"aarch64 toolchain missing ({'; '.join(missing)}): run backends/tvm/edge/install_toolchain.sh")
    model, feeds = _model(1, 30, 19)
    artifact = tvm_backend.compile(model, target="tvm-aarch64", example_inputs=feeds)
    np.testing.assert_array_equal(artifact.run(feeds)["y"], testing.run_ort(model, feeds)[0])


def test_cuda_build_compiles_with_nvcc(tmp_path):
    """No GPU needed: the TE compute scheduled by dlight compiles (a GPU run is a device check)."""
    from graphopt.backends.tvm.cuda.nvcc import compile_source, nvcc_path  # noqa: PLC0415

    if nvcc_path() is None:
        pytest.skip("nvcc is not installed")
    model, feeds = _model(1, 30, 19)
    artifact = tvm_backend.compile(model, target="tvm-cuda", example_inputs=feeds)
    artifact.save(str(tmp_path))
    source = (tmp_path / "kernels.cu").read_text()
    assert "shift_matmul_integer" in source
    assert len(compile_source(source, arch="sm_80")) > 0
