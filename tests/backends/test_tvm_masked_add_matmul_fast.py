"""The hand-scheduled CPU kernels of ``MaskedAddMatMul`` (``kernels/masked_add_matmul_fast.py``) agree
with the op's numpy reference: 197 keys (a partial last word) and 197 rows (a partial last row
tile), N = 65 (the binary-attention state [S | z]: an overlapping last chunk), N below one vector,
k < 16, several widths of SIMD vector; the table kernel (many rows) with partial nibbles and words
and bits past k set; the converter takes it for static float32 shapes (broadcast
leading axes), and falls back to the TE compute for float16; it compiles to vector AND + add for
AVX2, AVX-512 and aarch64 NEON (codegen only: the target decides the width, never the host)."""

from __future__ import annotations

import re

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from graphopt import testing  # noqa: E402
from graphopt.backends.tvm import targets  # noqa: E402
from graphopt.backends.tvm.cpu.common import vector_lanes  # noqa: E402
from graphopt.backends.tvm.kernels import masked_add_matmul as kernels  # noqa: E402
from graphopt.backends.tvm.kernels import masked_add_matmul_fast as fast  # noqa: E402
from graphopt.ops.masked_add_matmul import MASKED_ADD_MATMUL_OP, pack_bits  # noqa: E402

HOST = targets.resolve("tvm-llvm").tvm_target()
LANES = vector_lanes(HOST, "float32")


def _operands(rng, lead, m, k, n, dtype=np.float32):
    return pack_bits(rng.random((*lead, m, k)) < 0.5), rng.standard_normal((*lead, k, n)).astype(dtype)


@pytest.mark.parametrize(("bh", "m", "k", "n", "lanes"), [
    (3, 16, 197, 65, LANES), (2, 197, 16, 65, LANES), (1, 3, 9, 1, LANES), (2, 9, 33, 40, LANES), (2, 9, 33, 40, 4)],
    ids=["keys-197", "queries-197", "one-column", "odd", "odd-4-lanes"])
def test_cpu_kernel_matches_the_reference(bh, m, k, n, lanes):
    rng = np.random.default_rng(testing.SEED)
    bits, x = _operands(rng, (bh,), m, k, n)
    compiled = fast.compile_kernel(fast.cpu_func(bh, m, bits.shape[-1], k, n, lanes), HOST)
    y = tvm.runtime.tensor(np.full((bh, m, n), np.nan, np.float32))
    compiled(tvm.runtime.tensor(bits), tvm.runtime.tensor(x), y)
    np.testing.assert_allclose(y.numpy(), MASKED_ADD_MATMUL_OP.reference(bits, x, k=k), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("bh", "m", "k", "n"), [(2, 197, 16, 65), (1, 64, 33, 3), (2, 70, 13, 7)],
                         ids=["queries-197", "partial-nibble", "partial-word"])
def test_table_kernel_matches_the_reference(bh, m, k, n):
    rng = np.random.default_rng(testing.SEED + 3)
    bits, x = _operands(rng, (bh,), m, k, n)
    bits[0, :3] = 65535  # bits past k are ignored
    compiled = fast.compile_kernel(fast.table_func(bh, m, bits.shape[-1], k, n, LANES), HOST)
    y = tvm.runtime.tensor(np.full((bh, m, n), np.nan, np.float32))
    compiled(tvm.runtime.tensor(bits), tvm.runtime.tensor(x), y)
    np.testing.assert_allclose(y.numpy(), MASKED_ADD_MATMUL_OP.reference(bits, x, k=k), rtol=1e-5, atol=1e-5)


def _converter(bits, x, k, target):
    bb = relax.BlockBuilder()
    b_var = relax.Var("bits", relax.TensorType(bits.shape, "int32"))
    x_var = relax.Var("x", relax.TensorType(x.shape, str(x.dtype)))
    with target:
        with bb.function("main", [b_var, x_var]):
            with bb.dataflow():
                out = bb.emit_output(kernels.convert(bb, [b_var, x_var], {"k": k}))
            bb.emit_func_output(out)
        module = bb.get()
        executable = tvm.compile(module, target=target)
    scheduled = [f for f in module.functions.values() if isinstance(f, tvm.tirx.PrimFunc)
                 and f.attrs is not None and "tirx.is_scheduled" in f.attrs]
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(bits), tvm.runtime.tensor(x)).numpy(), bool(scheduled)


@pytest.mark.parametrize(("b_lead", "x_lead", "m"), [((2, 3), (2, 3), 6), ((2, 3), (1, 3), 6), ((3,), (2, 1), 6),
                                                     ((2, 1), (2, 3), 80)],
                         ids=["same", "x-broadcast", "both-broadcast", "tables"])
def test_converter_takes_the_cpu_kernel(b_lead, x_lead, m):
    rng = np.random.default_rng(testing.SEED + 1)
    bits = pack_bits(rng.random((*b_lead, m, 21)) < 0.5)
    x = rng.standard_normal((*x_lead, 21, 10)).astype(np.float32)
    got, hand_scheduled = _converter(bits, x, 21, HOST)
    assert hand_scheduled
    np.testing.assert_allclose(got, MASKED_ADD_MATMUL_OP.reference(bits, x, k=21), rtol=1e-5, atol=1e-5)


def test_float16_falls_back_to_te():
    rng = np.random.default_rng(testing.SEED + 2)
    bits, x = _operands(rng, (2,), 4, 12, 6, np.float16)
    got, hand_scheduled = _converter(bits, x, 12, HOST)
    assert not hand_scheduled
    np.testing.assert_allclose(got, MASKED_ADD_MATMUL_OP.reference(bits, x, k=12), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize(("target", "lanes", "and_add"), [
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}, 8, r"vpand\s+.*ymm|vaddps\s+.*ymm"),
    ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"}, 16, r"vpandd\s+.*zmm|vaddps\s+.*zmm"),
    ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}, 4, r"and\s+v\d+\.16b|fadd\s+v\d+\.4s"),
], ids=["avx2", "avx512", "neon"])
def test_codegen_uses_the_targets_vectors(target, lanes, and_add):
    target = tvm.target.Target(target)
    assert vector_lanes(target, "float32") == lanes
    func = fast.cpu_func(2, 16, 13, 197, 65, lanes)
    asm = tvm.compile(tvm.IRModule({"main": func}), target=target).mod.inspect_source("asm")
    kinds = {m.group(0).split()[0] for m in re.finditer(and_add, asm)}
    assert len(kinds) == 2, kinds  # the lane AND and the float add, both on full vectors


def test_aarch64_build_matches_the_reference_under_qemu():
    """Both kernels (6 rows: masked adds; 80 rows: tables) cross-compiled for aarch64 and run under qemu."""
    import onnx_ir as ir  # noqa: PLC0415

    from graphopt import ops  # noqa: PLC0415
    from graphopt.backends import tvm as tvm_backend  # noqa: PLC0415
    from graphopt.backends.tvm import edge  # noqa: PLC0415

    missing = edge.toolchain_problems()
    if missing:
        pytest.skip(f"aarch64 toolchain missing ({'; '.join(missing)}): run backends/tvm/edge/install_toolchain.sh")
    rng = np.random.default_rng(testing.SEED + 4)
    feeds = {"few": pack_bits(rng.random((2, 6, 21)) < 0.5), "many": pack_bits(rng.random((2, 80, 21)) < 0.5),
             "x": rng.standard_normal((2, 21, 10)).astype(np.float32)}
    inputs = [ir.val(name, ir.DataType.from_numpy(a.dtype), ir.Shape(a.shape)) for name, a in feeds.items()]
    nodes = [ir.node("MaskedAddMatMul", [inputs[i], inputs[2]], attributes={"k": 21}, domain=ops.DOMAIN) for i in (0, 1)]
    for node, name, rows in zip(nodes, ("y_few", "y_many"), (6, 80), strict=True):
        node.outputs[0].name, node.outputs[0].dtype, node.outputs[0].shape = name, ir.DataType.FLOAT, ir.Shape([2, rows, 10])
    graph = ir.Graph(inputs, [n.outputs[0] for n in nodes], nodes=nodes, opset_imports={"": 18}, name="mam")
    model = ir.Model(graph, ir_version=10)
    ops.attach_functions(model)
    got = tvm_backend.compile(model, target="tvm-aarch64", example_inputs=feeds).run(feeds)
    for name, bits in (("y_few", feeds["few"]), ("y_many", feeds["many"])):
        np.testing.assert_allclose(got[name], MASKED_ADD_MATMUL_OP.reference(bits, feeds["x"], k=21), rtol=1e-5, atol=1e-5)
