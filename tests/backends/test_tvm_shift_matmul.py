"""The ``ShiftMatMul`` kernels on TVM: the packed power-of-two matmul.

The CPU register kernel (``cpu_func``: codes decoded with integer shifts and masks, the weight
float built from its bits) equals the numpy reference at float rounding for 1, 3 and 8 rows, K a
multiple of the codes per word and not, bits 3/5/7, ternary and zero-free; its decoded weights are
bit-exact (an identity X reads D back). Through the converter: the register path (under a target,
padded N) and the decode-then-matmul path (more rows than ``MAX_ROWS``, no target); a model through
the tvm-llvm backend matches ONNX Runtime running the body; the CUDA kernel compiles with nvcc; the
aarch64 build runs under qemu.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from graphopt import ops, testing  # noqa: E402
from graphopt.backends import tvm as tvm_backend  # noqa: E402
from graphopt.backends.tvm import targets  # noqa: E402
from graphopt.backends.tvm.cpu.common import vector_lanes  # noqa: E402
from graphopt.backends.tvm.kernels import shift_matmul as kernels  # noqa: E402
from graphopt.ops.shift_matmul import OP_NAME, decode, pack, shift_matmul_reference, unpack  # noqa: E402

HOST = targets.resolve("tvm-llvm").tvm_target()


def _case(rng, rows, k, n, bits=5):
    codes = rng.integers(0, 1 << bits, (k, n))
    return (rng.standard_normal((rows, k)).astype(np.float32), pack(codes, bits),
            rng.uniform(0.25, 2.0, n).astype(np.float32))


def _run_cpu(x, p, s, bits, zero_free):
    lanes = vector_lanes(HOST, "float32")
    chunk = lanes * kernels.VECTORS
    n = p.shape[1]
    assert n % chunk == 0
    func = kernels.cpu_func(x.shape[0], x.shape[1], n, lanes, bits, zero_free)
    compiled = tvm.compile(tvm.IRModule({"main": func}), target=HOST)["main"]
    device = tvm.cpu(0)
    out = tvm.runtime.tensor(np.full((x.shape[0], n), np.nan, np.float32), device)
    compiled(tvm.runtime.tensor(x, device), tvm.runtime.tensor(kernels.relayout(p, chunk), device),
             tvm.runtime.tensor(s, device), out)
    return out.numpy()


@pytest.mark.parametrize(("rows", "k", "bits", "zero_free"),
                         [(1, 48, 5, 0), (1, 45, 5, 1), (3, 13, 3, 0), (8, 29, 7, 1), (8, 64, 5, 0)])
def test_cpu_kernel_matches_the_reference(rows, k, bits, zero_free):
    rng = np.random.default_rng(testing.SEED)
    n = 3 * vector_lanes(HOST, "float32") * kernels.VECTORS
    x, p, s = _case(rng, rows, k, n, bits)
    np.testing.assert_allclose(_run_cpu(x, p, s, bits, zero_free),
                               shift_matmul_reference(x, p, s, bits=bits, zero_free=zero_free), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("bits", "zero_free"), [(5, 0), (5, 1), (3, 0), (7, 1)])
def test_cpu_kernel_decodes_every_code_bit_exactly(bits, zero_free):
    """X = I reads the decoded weights back (times S = 1): every code, each slot of a word."""
    n = vector_lanes(HOST, "float32") * kernels.VECTORS
    codes = np.arange(n * 8) % (1 << bits)
    codes = codes.reshape(8, n)
    p, x, s = pack(codes, bits), np.eye(8, dtype=np.float32), np.ones(n, np.float32)
    got = _run_cpu(x, p, s, bits, zero_free)
    np.testing.assert_array_equal(got, decode(unpack(p, 8, bits), bits, zero_free))


def _converter(x, p, s, attrs, target):
    bb = relax.BlockBuilder()
    var = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with target:
        with bb.function("main", [var]):
            with bb.dataflow():
                out = bb.emit_output(kernels.convert(bb, [var, relax.const(p), relax.const(s)], attrs))
            bb.emit_func_output(out)
        executable = tvm.compile(bb.get(), target=target)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


@pytest.mark.parametrize("shape", [(1, 21), (2, 3, 21), (40, 21)], ids=["gemv", "batch-axes", "many-rows"])
def test_converter_matches_the_reference(shape):
    rng = np.random.default_rng(testing.SEED + 1)
    n = 37  # padded to whole chunks, sliced back
    codes = rng.integers(0, 32, (shape[-1], n))
    x = rng.standard_normal(shape).astype(np.float32)
    p, s = pack(codes), rng.uniform(0.25, 2.0, n).astype(np.float32)
    got = _converter(x, p, s, {"bits": 5, "tvm_custom": {"name": "n0", "num_outputs": 1}}, HOST)
    np.testing.assert_allclose(got, shift_matmul_reference(x, p, s), rtol=1e-5, atol=1e-5)


def _model(rows: int, k: int, n: int) -> tuple[ir.Model, dict]:
    rng = np.random.default_rng(testing.SEED + 2)
    p = ir.tensor(pack(rng.integers(0, 32, (k, n))), name="p")
    s = ir.tensor(rng.uniform(0.25, 2.0, n).astype(np.float32), name="s")
    x = ir.val("x", ir.DataType.FLOAT, ir.Shape([rows, k]))
    pv, sv = ir.Value(name="p", const_value=p), ir.Value(name="s", const_value=s)
    pv.type, sv.type = ir.TensorType(ir.DataType.INT32), ir.TensorType(ir.DataType.FLOAT)
    pv.shape, sv.shape = ir.Shape(p.shape), ir.Shape(s.shape)
    node = ir.node(OP_NAME, [x, pv, sv], attributes={"bits": 5}, domain=ops.DOMAIN, version=ops.OPSET_VERSION)
    node.outputs[0].name, node.outputs[0].dtype, node.outputs[0].shape = "y", ir.DataType.FLOAT, ir.Shape([rows, n])
    graph = ir.Graph([x], node.outputs, nodes=[node], initializers=[pv, sv], opset_imports={"": 20, ops.DOMAIN: 1}, name="shift")
    model = ir.Model(graph, ir_version=10)
    ops.attach_functions(model)
    return model, {"x": rng.standard_normal((rows, k)).astype(np.float32)}


@pytest.mark.parametrize("rows", [1, 16])
def test_tvm_llvm_backend_matches_onnx_runtime(rows):
    model, feeds = _model(rows, 30, 19)
    testing.assert_valid(model)
    artifact = tvm_backend.compile(model, target="tvm-llvm", example_inputs=feeds)
    np.testing.assert_allclose(artifact.run(feeds)["y"], testing.run_ort(model, feeds)[0], rtol=1e-5, atol=1e-5)


def test_cuda_kernel_compiles_with_nvcc(tmp_path):
    """No GPU needed: the generated CUDA compiles (a GPU run is a device check)."""
    from graphopt.backends.tvm.cuda.nvcc import compile_source, nvcc_path  # noqa: PLC0415

    if nvcc_path() is None:
        pytest.skip("nvcc is not installed")
    model, feeds = _model(1, 30, 19)
    artifact = tvm_backend.compile(model, target="tvm-cuda", example_inputs=feeds)
    artifact.save(str(tmp_path))
    source = (tmp_path / "kernels.cu").read_text()
    assert "graphopt_shift_matmul_kernel(" in source
    assert len(compile_source(source, arch="sm_80")) > 0


def test_aarch64_build_matches_onnx_runtime_under_qemu():
    from graphopt.backends.tvm import edge  # noqa: PLC0415

    missing = edge.toolchain_problems()
    if missing:
        pytest.skip(f"aarch64 toolchain missing ({'; '.join(missing)}): run backends/tvm/edge/install_toolchain.sh")
    model, feeds = _model(1, 30, 19)
    artifact = tvm_backend.compile(model, target="tvm-aarch64", example_inputs=feeds)
    np.testing.assert_allclose(artifact.run(feeds)["y"], testing.run_ort(model, feeds)[0], rtol=1e-5, atol=1e-5)
