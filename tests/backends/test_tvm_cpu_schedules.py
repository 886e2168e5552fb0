"""graphopt's TVM CPU schedule rules and pipeline: each rule schedules its kind of PrimFunc correctly
(vs numpy), really fires (parallel / vectorized loops in the TIR), and declines what is not its kind;
the pipeline packs constant weights, leaves pre-scheduled kernels alone, and compiles MiniLM to the
same outputs as ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax, te, topi  # noqa: E402

from graphopt.backends.tvm.cpu import (  # noqa: E402
    ApplyCpuSchedules,
    Elementwise,
    Fallback,
    Matmul,
    RowReduction,
    cpu_pipeline,
)

TARGET = tvm.target.Target({"kind": "llvm", "num-cores": 2})
RNG = np.random.default_rng(0)


def _random(shape, dtype):
    if "float" in dtype:
        return RNG.standard_normal(shape).astype(dtype)
    return RNG.integers(-100, 100, shape).astype(dtype)


def _run_scheduled(rule, func, inputs):
    """Apply ``rule`` to ``func`` (asserting it fires), build, run on ``inputs``; (outputs, TIR text)."""
    sch = rule.apply(func, TARGET, False)
    assert sch is not None, f"{type(rule).__name__} did not fire"
    lib = tvm.compile(sch.mod, target=TARGET)
    dev = tvm.cpu()
    outs = [tvm.runtime.tensor(np.zeros([int(d) for d in p.shape], str(p.dtype)), dev) for p in func.params[len(inputs) :]]
    lib["main"](*[tvm.runtime.tensor(x, dev) for x in inputs], *outs)
    return [o.numpy() for o in outs], sch.mod.script()


def _gelu(x):
    from math import erf

    return x * 0.5 * (1.0 + np.vectorize(erf)(x / np.sqrt(2.0))).astype(x.dtype)


# ---------------------------------------------------------------- matmul


def _dense_gelu(m, k, n):
    a, w, b = te.placeholder((1, m, k), name="a"), te.placeholder((k, n), name="w"), te.placeholder((n,), name="b")
    r = te.reduce_axis((0, k), "r")
    mm = te.compute((1, m, n), lambda z, i, j: te.sum(a[z, i, r] * w[r, j], axis=r), name="matmul")
    biased = te.compute((1, m, n), lambda z, i, j: mm[z, i, j] + b[j], name="bias")
    out = te.compute((1, m, n), lambda z, i, j: biased[z, i, j] * 0.5 * (1 + te.erf(biased[z, i, j] * 0.70710678)))
    return te.create_prim_func([a, w, b, out])


def test_matmul_dense_with_epilogue():
    a, w, b = _random((1, 16, 64), "float32"), _random((64, 48), "float32"), _random((48,), "float32")
    (out,), tir = _run_scheduled(Matmul(), _dense_gelu(16, 64, 48), [a, w, b])
    np.testing.assert_allclose(out, _gelu(a @ w + b), atol=1e-4, rtol=1e-4)
    assert "T.parallel" in tir and "T.vectorized" in tir and 'scope="local"' in tir


def test_matmul_activation_batch_with_shared_weight():
    # [b, s, k] x [k, n]: b is read by A only, so it sorts with M; every b must get its own rows
    a, w = te.placeholder((4, 17, 32), name="a"), te.placeholder((32, 48), name="w")
    r = te.reduce_axis((0, 32), "r")
    c = te.compute((4, 17, 48), lambda z, i, j: te.sum(a[z, i, r] * w[r, j], axis=r))
    av, wv = _random((4, 17, 32), "float32"), _random((32, 48), "float32")
    (out,), _ = _run_scheduled(Matmul(), te.create_prim_func([a, w, c]), [av, wv])
    np.testing.assert_allclose(out, av @ wv, atol=1e-4, rtol=1e-4)


def test_matmul_batched_qk():
    q, kt = te.placeholder((1, 2, 16, 8), name="q"), te.placeholder((1, 2, 8, 32), name="kt")
    r = te.reduce_axis((0, 8), "r")
    s = te.compute((1, 2, 16, 32), lambda z, h, i, j: te.sum(q[z, h, i, r] * kt[z, h, r, j], axis=r))
    qv, ktv = _random((1, 2, 16, 8), "float32"), _random((1, 2, 8, 32), "float32")
    (out,), tir = _run_scheduled(Matmul(), te.create_prim_func([q, kt, s]), [qv, ktv])
    np.testing.assert_allclose(out, qv @ ktv, atol=1e-4, rtol=1e-4)
    assert "T.parallel" in tir and "T.vectorized" in tir


def test_matmul_transposed_b():
    a, w = te.placeholder((8, 16), name="a"), te.placeholder((24, 16), name="w")
    r = te.reduce_axis((0, 16), "r")
    c = te.compute((8, 24), lambda i, j: te.sum(a[i, r] * w[j, r], axis=r))
    av, wv = _random((8, 16), "float32"), _random((24, 16), "float32")
    (out,), tir = _run_scheduled(Matmul(), te.create_prim_func([a, w, c]), [av, wv])
    np.testing.assert_allclose(out, av @ wv.T, atol=1e-4, rtol=1e-4)
    assert "T.vectorized" in tir


def test_matmul_int8_to_int32():
    a, w = te.placeholder((8, 32), "int8", name="a"), te.placeholder((32, 16), "int8", name="w")
    r = te.reduce_axis((0, 32), "r")
    c = te.compute((8, 16), lambda i, j: te.sum(a[i, r].astype("int32") * w[r, j].astype("int32"), axis=r))
    av, wv = _random((8, 32), "int8"), _random((32, 16), "int8")
    (out,), tir = _run_scheduled(Matmul(), te.create_prim_func([a, w, c]), [av, wv])
    np.testing.assert_array_equal(out, av.astype(np.int32) @ wv.astype(np.int32))
    assert "T.vectorized" in tir


def test_matmul_declines_other_kinds():
    x = te.placeholder((8, 32), name="x")
    r = te.reduce_axis((0, 32), "r")
    row_sum = te.compute((8,), lambda i: te.sum(x[i, r], axis=r))
    assert Matmul().apply(te.create_prim_func([x, row_sum]), TARGET, False) is None
    assert Matmul().apply(te.create_prim_func([x, topi.exp(x)]), TARGET, False) is None


# ---------------------------------------------------------------- row reductions


def test_reduction_softmax_fp32():
    x = te.placeholder((4, 16, 64), name="x")
    xv = _random((4, 16, 64), "float32")
    (out,), tir = _run_scheduled(RowReduction(), te.create_prim_func([x, topi.nn.softmax(x, axis=-1)]), [xv])
    e = np.exp(xv - xv.max(-1, keepdims=True))
    np.testing.assert_allclose(out, e / e.sum(-1, keepdims=True), atol=1e-6)
    assert "T.parallel" in tir and "T.vectorized" in tir and "_rf" in tir  # rows parallel, rfactor-vectorized


def test_reduction_layer_norm_fp32():
    x, g, b = te.placeholder((1, 32, 48), name="x"), te.placeholder((48,), name="g"), te.placeholder((48,), name="b")
    out = topi.nn.layer_norm(x, g, b, axis=[-1], epsilon=1e-5)
    xv, gv, bv = _random((1, 32, 48), "float32"), _random((48,), "float32"), _random((48,), "float32")
    (got,), tir = _run_scheduled(RowReduction(), te.create_prim_func([x, g, b, out]), [xv, gv, bv])
    mu, var = xv.mean(-1, keepdims=True), xv.var(-1, keepdims=True)
    np.testing.assert_allclose(got, (xv - mu) / np.sqrt(var + 1e-5) * gv + bv, atol=1e-4)
    assert "T.vectorized" in tir


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_reduction_integer_row_max_subtract(dtype):
    # the shape of Shiftmax's first half: x - max(x) per row, integer end to end
    x = te.placeholder((64, 40), dtype, name="x")
    r = te.reduce_axis((0, 40), "r")
    row_max = te.compute((64,), lambda i: te.max(x[i, r], axis=r), name="row_max")
    out = te.compute((64, 40), lambda i, j: x[i, j] - row_max[i], name="shifted")
    xv = _random((64, 40), dtype)
    (got,), tir = _run_scheduled(RowReduction(), te.create_prim_func([x, out]), [xv])
    np.testing.assert_array_equal(got, xv - xv.max(-1, keepdims=True))
    assert "T.vectorized" in tir


def test_reduction_declines_injective():
    x = te.placeholder((8, 32), name="x")
    assert RowReduction().apply(te.create_prim_func([x, topi.exp(x)]), TARGET, False) is None


# ---------------------------------------------------------------- elementwise / fallback


def test_elementwise_broadcast_chain_fp32():
    x, b = te.placeholder((4, 64, 96), name="x"), te.placeholder((96,), name="b")
    y = te.compute((4, 64, 96), lambda i, j, k: x[i, j, k] + b[k], name="add")
    z = te.compute((4, 64, 96), lambda i, j, k: te.max(y[i, j, k], 0.0) * 2.0, name="relu2")
    xv, bv = _random((4, 64, 96), "float32"), _random((96,), "float32")
    (got,), tir = _run_scheduled(Elementwise(), te.create_prim_func([x, b, z]), [xv, bv])
    np.testing.assert_allclose(got, np.maximum(xv + bv, 0) * 2, atol=1e-6)
    assert "T.parallel" in tir and "T.vectorized" in tir
    assert tir.count("T.sblock(") - tir.count('T.sblock("root")') == 1  # the chain was inlined into one block


def test_elementwise_integer_transpose_cast():
    x = te.placeholder((32, 64, 48), "int32", name="x")
    y = te.compute((64, 32, 48), lambda i, j, k: (x[j, i, k] >> 2).astype("int8"), name="shift_cast")
    xv = _random((32, 64, 48), "int32")
    (got,), tir = _run_scheduled(Elementwise(), te.create_prim_func([x, y]), [xv])
    np.testing.assert_array_equal(got, (xv.transpose(1, 0, 2) >> 2).astype(np.int8))
    assert "T.parallel" in tir and "T.vectorized" in tir


def test_elementwise_declines_reduction():
    x = te.placeholder((8, 32), name="x")
    r = te.reduce_axis((0, 32), "r")
    assert Elementwise().apply(te.create_prim_func([x, te.compute((8,), lambda i: te.sum(x[i, r], axis=r))]), TARGET, False) is None


def test_fallback_middle_axis_reduction():
    # whatever the other rules decline ends here: it must still come out parallel and correct
    x = te.placeholder((64, 16, 80), name="x")
    r = te.reduce_axis((0, 16), "r")
    s = te.compute((64, 80), lambda i, j: te.sum(x[i, r, j], axis=r))
    func = te.create_prim_func([x, s])
    xv = _random((64, 16, 80), "float32")
    (got,), tir = _run_scheduled(Fallback(), func, [xv])
    np.testing.assert_allclose(got, xv.sum(1), atol=1e-4)
    assert "T.parallel" in tir


def test_fallback_declines_blockless_tir():
    # hand-written TIR without blocks has no structure the schedule primitives can work on
    from tvm.script import tirx as T

    @T.prim_func
    def doubled(a: T.Buffer((64,), "float32"), b: T.Buffer((64,), "float32")):
        for i in range(64):
            b[i] = a[i] * T.float32(2.0)

    assert Fallback().apply(doubled, TARGET, False) is None


# ---------------------------------------------------------------- pipeline


def _dense_module(weight_constant: bool):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 32), "float32"))
    params = [x]
    w_np = _random((32, 48), "float32")
    if weight_constant:
        w = relax.const(w_np)
    else:
        w = relax.Var("w", relax.TensorType((32, 48), "float32"))
        params.append(w)
    with bb.function("main", params):
        with bb.dataflow():
            y = bb.emit(relax.op.add(relax.op.matmul(x, w), relax.const(np.ones(48, "float32"))))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get(), w_np


@pytest.mark.parametrize("weight_constant", [True, False])
def test_pipeline_dense_weights(weight_constant):
    mod, w = _dense_module(weight_constant)
    from graphopt.backends.tvm.cpu import legalize_passes, schedule_passes

    with TARGET:
        scheduled = tvm.transform.Sequential(legalize_passes(TARGET) + schedule_passes(TARGET))(mod)
    packed = [gv.name_hint for gv, _ in scheduled.functions_items() if gv.name_hint.endswith("_prepacked")]
    assert bool(packed) == weight_constant

    ex = tvm.compile(mod, target=TARGET, relax_pipeline=cpu_pipeline(TARGET))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    x = _random((1, 8, 32), "float32")
    args = [tvm.runtime.tensor(x)] + ([] if weight_constant else [tvm.runtime.tensor(w)])
    np.testing.assert_allclose(vm["main"](*args).numpy(), x @ w + 1, atol=1e-4)


def test_pipeline_leaves_prescheduled_kernels_alone():
    x = te.placeholder((64, 64), name="x")
    plain = te.create_prim_func([x, topi.exp(x)])
    mod = tvm.IRModule({"pre": plain.with_attr("tir.is_scheduled", True), "free": plain})
    with TARGET:
        out = ApplyCpuSchedules(TARGET)(mod)
    tvm.ir.assert_structural_equal(out["pre"], mod["pre"])
    assert "T.parallel" in out["free"].script() and "T.parallel" not in out["pre"].script()


@pytest.mark.slow
def test_pipeline_minilm_matches_onnxruntime():
    import onnxruntime as ort
    from tvm.relax.frontend.onnx import from_onnx

    from graphopt.models import minilm

    proto = minilm.build(dynamic=False)  # static shapes: TVM's importer needs them
    feeds = minilm.tokenize(minilm.sentences()[:1], seq_len=128)
    mod = from_onnx(proto, shape_dict={k: list(v.shape) for k, v in feeds.items()})
    ex = tvm.compile(mod, target=TARGET, relax_pipeline=cpu_pipeline(TARGET))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(feeds[i.name]) for i in proto.graph.input])
    got = got.numpy() if hasattr(got, "numpy") else got[0].numpy()
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
