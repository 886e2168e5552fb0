"""The sparse-input kernels: ``SparseInputMatMul`` and ``SparseGatedMatMul`` on TVM.

The ops' references equal their ONNX bodies (ORT); the CPU kernels equal the references at float
rounding at sparsities 0, 0.5, 0.9 and 1.0, one row and four, both branches of the input kernel
(dense and sparse, forced); through the converter with an N that is not a multiple of the vector
width (the padded weight and the slice) and batch axes; the CUDA kernels compile with nvcc; the
aarch64 build runs under qemu; and a CATS-rewritten tiny LLaMA decode step on tvm-llvm, where the
preparation puts in both ops, matches ONNX Runtime. The int8-weight forms: both kernels vs their
references, and a weight-only int8 MLP (DequantizeLinear and Cast + Mul) through tvm-llvm vs ORT.
"""

from __future__ import annotations

import numpy as np
import onnx.parser
import onnx_ir as ir
import pytest

tvm = pytest.importorskip("tvm")

from graphopt import ops, testing  # noqa: E402
from graphopt.backends import tvm as tvm_backend  # noqa: E402
from graphopt.backends.tvm import targets  # noqa: E402
from graphopt.backends.tvm.cpu.common import vector_lanes  # noqa: E402
from graphopt.backends.tvm.kernels import sparse_matmul as kernels  # noqa: E402
from graphopt.ops.sparse_matmul import (  # noqa: E402
    GATED_OP,
    INPUT_OP,
    gated_int8_reference,
    gated_reference,
    input_int8_reference,
    input_reference,
)

SPARSITIES = (0.0, 0.5, 0.9, 1.0)
HOST = targets.resolve("tvm-llvm").tvm_target()


def _sparse(rng, shape, sparsity):
    x = rng.standard_normal(shape).astype(np.float32)
    x[..., rng.random(shape[-1]) < sparsity] = 0
    if sparsity == 1.0:
        x[:] = 0
    return x


def _call(func, *arrays, out_shape):
    compiled = tvm.compile(tvm.IRModule({"main": func}), target=HOST)["main"]
    device = tvm.cpu(0)
    out = tvm.runtime.tensor(np.full(out_shape, np.nan, np.float32), device)
    compiled(*[tvm.runtime.tensor(a, device) for a in arrays], out)
    return out.numpy()


@pytest.mark.parametrize("op_name", [INPUT_OP, GATED_OP])
def test_reference_equals_the_onnx_body(op_name):
    op = ops.get_op(op_name)
    for inputs, _ in op.examples():
        node = ir.node(op_name, [ir.val(f"in{i}", ir.DataType.FLOAT, ir.Shape(a.shape)) for i, a in enumerate(inputs)],
                       domain=ops.DOMAIN, version=ops.OPSET_VERSION, num_outputs=1)
        node.outputs[0].name, node.outputs[0].dtype = "y", ir.DataType.FLOAT
        graph = ir.Graph(node.inputs, node.outputs, nodes=[node], opset_imports={"": 20, ops.DOMAIN: 1})
        model = ir.Model(graph, ir_version=10)
        ops.attach_functions(model)
        got = testing.run_ort(model, {f"in{i}": a for i, a in enumerate(inputs)})[0]
        np.testing.assert_allclose(got, op.reference(*inputs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 4])
@pytest.mark.parametrize("dense_below", [0.0, 1.0], ids=["sparse-branch", "dense-branch"])
def test_input_kernel_matches_the_reference(rows, dense_below):
    rng = np.random.default_rng(testing.SEED)
    lanes = vector_lanes(HOST, "float32")
    k, n = 45, 2 * lanes * kernels.VECTORS * 3  # K not a multiple of the row group
    w = rng.standard_normal((k, n)).astype(np.float32)
    func = kernels.input_func(rows, k, n, lanes, 2, dense_below)
    for sparsity in SPARSITIES:
        x = _sparse(rng, (rows, k), sparsity)
        got = _call(func, x, w, out_shape=(rows, n))
        np.testing.assert_allclose(got, input_reference(x, w), rtol=1e-5, atol=1e-5)


def test_default_crossover_takes_each_branch():
    """With the default DENSE_BELOW a nearly dense x takes the dense branch, a sparse one the sparse
    branch; both give the reference."""
    rng = np.random.default_rng(testing.SEED + 1)
    lanes = vector_lanes(HOST, "float32")
    k, n = 64, 2 * lanes * kernels.VECTORS
    w = rng.standard_normal((k, n)).astype(np.float32)
    func = kernels.input_func(1, k, n, lanes, 2)
    dense = rng.standard_normal((1, k)).astype(np.float32)  # sparsity 0 < DENSE_BELOW
    assert kernels.DENSE_BELOW > 0
    for x in (dense, _sparse(rng, (1, k), 0.5)):
        np.testing.assert_allclose(_call(func, x, w, out_shape=(1, n)), input_reference(x, w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 4])
def test_gated_kernel_matches_the_reference(rows):
    rng = np.random.default_rng(testing.SEED + 2)
    lanes = vector_lanes(HOST, "float32")
    k, n = 4 * lanes + 5, 19  # K with a scalar remainder, N odd
    wt = rng.standard_normal((n, k)).astype(np.float32)
    func = kernels.gated_func(rows, k, n, lanes)
    for sparsity in SPARSITIES:
        a = _sparse(rng, (rows, n), sparsity)
        x = rng.standard_normal((rows, k)).astype(np.float32)
        got = _call(func, a, x, wt, out_shape=(rows, n))
        np.testing.assert_allclose(got, gated_reference(a, x, wt), rtol=1e-5, atol=1e-5)


def _int8(rng, shape):
    return rng.integers(-128, 128, shape, dtype=np.int8), (rng.random(shape[-1]) * 0.01 + 0.001).astype(np.float32)


@pytest.mark.parametrize("rows, dense_below", [(1, 0.0), (4, 1.0)], ids=["sparse-branch-1-row", "dense-branch-4-rows"])
def test_input_int8_kernel_matches_the_reference(rows, dense_below):
    rng = np.random.default_rng(testing.SEED + 4)
    lanes = vector_lanes(HOST, "float32")
    k, n = 45, 2 * lanes * kernels.VECTORS * 3
    wq, scale = _int8(rng, (k, n))
    func = kernels.input_int8_func(rows, k, n, lanes, 2, dense_below)
    for sparsity in SPARSITIES:
        x = _sparse(rng, (rows, k), sparsity)
        got = _call(func, x, wq, scale, out_shape=(rows, n))
        np.testing.assert_allclose(got, input_int8_reference(x, wq, scale), rtol=1e-5, atol=1e-5)


def test_gated_int8_kernel_matches_the_reference(rows=4):
    rng = np.random.default_rng(testing.SEED + 5)
    lanes = vector_lanes(HOST, "float32")
    k, n = 4 * lanes + 5, 19
    wtq, _ = _int8(rng, (n, k))
    scale = (rng.random(n) * 0.01 + 0.001).astype(np.float32)
    func = kernels.gated_int8_func(rows, k, n, lanes)
    for sparsity in SPARSITIES:
        a = _sparse(rng, (rows, n), sparsity)
        x = rng.standard_normal((rows, k)).astype(np.float32)
        got = _call(func, a, x, wtq, scale, out_shape=(rows, n))
        np.testing.assert_allclose(got, gated_int8_reference(a, x, wtq, scale), rtol=1e-5, atol=1e-5)


def _int8_mlp(shape: str, k: int, n: int, style: str) -> ir.Model:
    """``_mlp`` with every weight weight-only int8 (the zoo's forms: ``DequantizeLinear`` per output column, or
    ``Cast + Mul``)."""
    from graphopt.models.zoo.forms import weight_only_int8  # noqa: PLC0415

    return ir.serde.deserialize_model(weight_only_int8(ir.to_proto(_mlp(shape, k, n)), style))


@pytest.mark.parametrize("style", ["dql", "castmul"])
def test_int8_weights_reach_the_int8_kernels_and_match_onnx_runtime(style):
    """sparse-linear, run by the preparation before its folding (which makes these small weights float32 in both
    forms), takes the int8 weights of the thresholded layers to the int8 kernels."""
    model = _int8_mlp("1", 21, 37, style)
    ops.attach_functions(model)
    feeds = {"x": np.random.default_rng(testing.SEED).standard_normal((1, 21)).astype(np.float32)}
    artifact = tvm_backend.compile(model, target="tvm-llvm", example_inputs=feeds)
    rewrites = [p["rewrites"] for p in artifact.details["prepare"] if p["pass"] == "sparse-linear" and p["rewrites"]]
    assert rewrites == [{"sparse-gated-up": 1, "sparse-input-matmul": 2, "int8-dense-matmul": 1}]  # the gate: int8 GEMV
    prepared, _ = tvm_backend.importer.prepare(model, {"x": [1, 21]})
    prepared_ops = [n.op_type for n in prepared.graph]
    assert sorted(op for op in prepared_ops if op.startswith("Sparse")) == [
        "SparseGatedMatMulInt8", "SparseInputMatMulInt8", "SparseInputMatMulInt8", "SparseInputMatMulInt8"]
    np.testing.assert_allclose(artifact.run(feeds)["y"], testing.run_ort(model, feeds)[0], rtol=1e-4, atol=1e-4)


def _mlp(shape: str, k: int, n: int) -> ir.Model:
    rng = np.random.default_rng(testing.SEED + 3)

    def floats(*dims):
        return "{" + ", ".join(f"{v:.5f}" for v in rng.standard_normal(dims).ravel() * 0.5) + "}"

    text = f"""<ir_version: 10, opset_import: ["" : 20, "pkg.graphopt" : 1]>
g (float[{shape}, {k}] x) => (float[{shape}, {k}] y) <float[{k}, {n}] wg = {floats(k, n)}, float[{k}, {n}] wu = {floats(k, n)},
    float[{n}, {k}] wd = {floats(n, k)}, float[{k}, {k}] wx = {floats(k, k)}, float t = {{0.4}}> {{
  gate = MatMul(x, wg)
  s = Sigmoid(gate)
  act = Mul(gate, s)
  a = pkg.graphopt.ActivationThreshold(act, t)
  up = MatMul(x, wu)
  h = Mul(a, up)
  xt = pkg.graphopt.ActivationThreshold(x, t)
  p = MatMul(xt, wx)
  q = Add(p, x)
  o = MatMul(h, wd)
  y = Add(o, q)
}}"""
    return ir.serde.deserialize_model(onnx.parser.parse_model(text))


@pytest.mark.parametrize("shape", ["1", "4", "2, 3"])
def test_converter_pads_an_odd_width_and_matches_onnx_runtime(shape):
    model = _mlp(shape, k=21, n=37)
    ops.attach_functions(model)
    feeds = {"x": np.random.default_rng(testing.SEED).standard_normal([int(d) for d in shape.split(",")] + [21]).astype(np.float32)}
    artifact = tvm_backend.compile(model, target="tvm-llvm", example_inputs=feeds)
    rewrites = [p["rewrites"] for p in artifact.details["prepare"] if p["pass"] == "sparse-linear" and p["rewrites"]]
    assert rewrites == [{"sparse-gated-up": 1, "sparse-input-matmul": 2}]
    expected = testing.run_ort(model, feeds)[0]
    np.testing.assert_allclose(artifact.run(feeds)["y"], expected, rtol=1e-5, atol=1e-5)


def test_cuda_kernels_compile_with_nvcc(tmp_path):
    """No GPU here: the generated CUDA of both kernels compiles (tests/backends/test_tvm_cuda.py runs GPUs)."""
    from graphopt.backends.tvm.cuda.nvcc import compile_source, nvcc_path  # noqa: PLC0415

    if nvcc_path() is None:
        pytest.skip("nvcc is not installed")
    model = _mlp("1", k=21, n=37)
    artifact = tvm_backend.compile(model, target="tvm-cuda", example_inputs={"x": np.zeros((1, 21), np.float32)})
    artifact.save(str(tmp_path))
    source = (tmp_path / "kernels.cu").read_text()
    assert "graphopt_sparse_gated_matmul_kernel(" in source and "graphopt_sparse_input_matmul_kernel(" in source
    assert len(compile_source(source, arch="sm_80")) > 0


def test_aarch64_build_matches_onnx_runtime_under_qemu():
    from graphopt.backends.tvm import edge  # noqa: PLC0415

    missing = edge.toolchain_problems()
    if missing:
        pytest.skip(f"aarch64 toolchain missing ({'; '.join(missing)}): run backends/tvm/edge/install_toolchain.sh")
    model = _mlp("1", k=21, n=37)
    ops.attach_functions(model)
    feeds = {"x": np.random.default_rng(testing.SEED).standard_normal((1, 21)).astype(np.float32)}
    artifact = tvm_backend.compile(model, target="tvm-aarch64", example_inputs=feeds)
    assert [p["rewrites"] for p in artifact.details["prepare"] if p["pass"] == "sparse-linear" and p["rewrites"]]
    np.testing.assert_allclose(artifact.run(feeds)["y"], testing.run_ort(model, feeds)[0], rtol=1e-5, atol=1e-5)
