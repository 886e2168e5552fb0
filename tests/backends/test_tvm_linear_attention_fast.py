"""The hand-scheduled CPU kernels of ``LinearizedAttention`` (``kernels/linear_attention_fast.py``)
agree with the op's numpy reference: non-causal (Sq != Sk, odd F and Dv, F not a multiple of the
SIMD width, one query row), causal chunked (N below, at and past a chunk, not a multiple of it;
per-head decay including 0 and 1), the recurrent decode step stepped through a sequence, and
``emit`` inside a Relax function (broadcast K/V, decay scalar and [H, 1, 1], the leading axes put
back) next to its declines (no target, float16, causal with Sq != Sk, a decay along the sequence)."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from graphopt import testing  # noqa: E402
from graphopt.backends.tvm import targets  # noqa: E402
from graphopt.backends.tvm.cpu.common import vector_lanes  # noqa: E402
from graphopt.backends.tvm.kernels import linear_attention_fast as fast  # noqa: E402
from graphopt.ops.linear_attention import linear_attention_reference as reference  # noqa: E402

HOST = targets.resolve("tvm-llvm").tvm_target()
LANES = vector_lanes(HOST, "float32")
EPS = 1e-6


def _inputs(rng, bh, sq, sk, f, dv):
    qf = np.abs(rng.standard_normal((bh, sq, f))).astype(np.float32)
    kf = np.abs(rng.standard_normal((bh, sk, f))).astype(np.float32)
    v = rng.standard_normal((bh, sk, dv)).astype(np.float32)
    return qf, kf, v


def _run(func, *arrays, outs):
    compiled = fast.compile_kernel(func, HOST)
    results = [tvm.runtime.tensor(np.full(shape, np.nan, np.float32)) for shape in outs]
    compiled(*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays], *results)
    return [r.numpy() for r in results]


def _close(got, expected):
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5 * float(np.abs(expected).max()))


@pytest.mark.parametrize("bh,sq,sk,f,dv", [(3, 37, 53, 8, 5), (2, 130, 130, 64, 64), (1, 1, 9, 266, 16),
                                           (4, 3, 70, 128, 64), (2, 64, 5, 12, 24)])
def test_noncausal(bh, sq, sk, f, dv):
    qf, kf, v = _inputs(np.random.default_rng(testing.SEED), bh, sq, sk, f, dv)
    (y,) = _run(fast.noncausal_func(bh, sq, sk, f, dv, LANES, EPS), qf, kf, v, outs=[(bh, sq, dv)])
    _close(y, reference(qf, kf, v, np.float32(1), causal=0, eps=EPS))


@pytest.mark.parametrize("bh,n,f,dv", [(3, 5, 8, 5), (2, 64, 16, 16), (2, 130, 64, 64), (1, 200, 128, 64), (2, 97, 10, 24)])
def test_causal_chunked(bh, n, f, dv):
    rng = np.random.default_rng(testing.SEED)
    qf, kf, v = _inputs(rng, bh, n, n, f, dv)
    decay = rng.uniform(0.8, 1.0, bh).astype(np.float32)
    decay[0] = 1.0
    if bh > 2:
        decay[2] = 0.0  # λ = 0: each row sees its own key only
    (y,) = _run(fast.causal_func(bh, n, f, dv, LANES, EPS), qf, kf, v, decay, outs=[(bh, n, dv)])
    _close(y, reference(qf, kf, v, decay.reshape(bh, 1, 1), causal=1, eps=EPS))


def test_causal_chunk_size_does_not_matter():
    rng = np.random.default_rng(testing.SEED)
    qf, kf, v = _inputs(rng, 2, 100, 100, 16, 8)
    decay = np.array([0.95, 1.0], np.float32)
    outs = [_run(fast.causal_func(2, 100, 16, 8, LANES, EPS, chunk=c), qf, kf, v, decay, outs=[(2, 100, 8)])[0]
            for c in (8, 32, 64, 128)]
    for y in outs[1:]:
        _close(y, outs[0])


def test_recurrent_step_matches_causal_prefill():
    rng = np.random.default_rng(testing.SEED)
    bh, n, f, dv = 3, 12, 16, 24
    qf, kf, v = _inputs(rng, bh, n, n, f, dv)
    decay = np.array([1.0, 0.9, 0.5], np.float32)
    expected = reference(qf, kf, v, decay.reshape(bh, 1, 1), causal=1, eps=EPS)
    step = fast.compile_kernel(fast.recurrent_step_func(bh, f, dv, LANES, EPS), HOST)
    state = [tvm.runtime.tensor(np.zeros(shape, np.float32)) for shape in ((bh, f, dv), (bh, f))]
    for t in range(n):
        y, s_out, z_out = (tvm.runtime.tensor(np.zeros(shape, np.float32)) for shape in ((bh, 1, dv), (bh, f, dv), (bh, f)))
        step(*(tvm.runtime.tensor(np.ascontiguousarray(a[:, t:t + 1])) for a in (qf, kf, v)), tvm.runtime.tensor(decay),
             *state, y, s_out, z_out)
        _close(y.numpy()[:, 0], expected[:, t])
        state = [s_out, z_out]


# --- emit: the kernels inside a Relax function -----------------------------------------------------


def _emitted(inputs, causal, target=HOST):
    """main(inputs) = emit(...) under ``target``; (compiled output or None when emit declined, the Relax module)."""
    bb = relax.BlockBuilder()
    params = [relax.Var(f"in{i}", relax.TensorType(a.shape, str(a.dtype))) for i, a in enumerate(inputs[:3])]
    decay = relax.const(inputs[3])
    with bb.function("main", params):
        with bb.dataflow():
            if target is None:
                out = fast.emit(bb, *params, decay, causal=causal, eps=EPS)
            else:
                with target:
                    out = fast.emit(bb, *params, decay, causal=causal, eps=EPS)
            declined = out is None
            out = bb.emit_output(params[0] if declined else out)
        bb.emit_func_output(out)
    if declined:
        return None
    mod = bb.get()
    names = {gv.name_hint for gv in mod.functions}
    vm = relax.VirtualMachine(tvm.compile(mod, target=HOST), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in inputs[:3]]).numpy(), names


@pytest.mark.parametrize("causal", [0, 1])
def test_emit_heads_broadcast_and_decay(causal):
    rng = np.random.default_rng(testing.SEED)
    qf = np.abs(rng.standard_normal((2, 3, 70, 16))).astype(np.float32)
    kf = np.abs(rng.standard_normal((2, 3, 70, 16))).astype(np.float32)
    v = rng.standard_normal((1, 3, 70, 8)).astype(np.float32)  # broadcast over the batch
    for decay in (np.float32(1), np.array([0.9, 0.5, 1.0], np.float32).reshape(3, 1, 1)):
        got, names = _emitted((qf, kf, v, decay), causal)
        assert ("graphopt_linear_attention_causal" if causal else "graphopt_linear_attention") in names
        _close(got, reference(qf, kf, v, decay, causal=causal, eps=EPS))


def test_emit_shared_rank2_keys():
    rng = np.random.default_rng(testing.SEED)
    qf = np.abs(rng.standard_normal((3, 4, 8))).astype(np.float32)
    kf = np.abs(rng.standard_normal((6, 8))).astype(np.float32)
    v = rng.standard_normal((6, 5)).astype(np.float32)
    got, _ = _emitted((qf, kf, v, np.float32(1)), 0)
    _close(got, reference(qf, kf, v, np.float32(1), causal=0, eps=EPS))


def test_emit_declines():
    rng = np.random.default_rng(testing.SEED)
    qf, kf, v = (a[None] for a in _inputs(rng, 2, 6, 6, 8, 4))
    one = np.float32(1)
    assert _emitted((qf, kf, v, one), 0, target=None) is None  # no target: the TE kernels
    assert _emitted(tuple(a.astype(np.float16) for a in (qf, kf, v)) + (np.float16(1),), 0) is None  # float16
    assert _emitted((qf, kf[:, :, :5], v[:, :, :5], one), 1) is None  # causal with Sq != Sk
    assert _emitted((qf, kf, v, np.full((1, 1, 6), 0.9, np.float32)), 1) is None  # a decay along the keys


def test_kernels_build_for_aarch64():
    """The kernels cross-compile for tvm-aarch64 (NEON: 4 fp32 lanes); running them under qemu goes
    through the backend once the LinearizedAttention converter calls ``emit``."""
    target = targets.resolve("tvm-aarch64").tvm_target()
    lanes = vector_lanes(target, "float32")
    assert lanes == 4
    for func in (fast.noncausal_func(2, 37, 53, 8, 5, lanes, EPS), fast.causal_func(2, 70, 16, 8, lanes, EPS),
                 fast.recurrent_step_func(2, 16, 8, lanes, EPS)):
        module = tvm.compile(tvm.IRModule({"main": func}), target=target)
        assert "fmla" in module.mod.inspect_source("asm")  # NEON fused multiply-adds


def test_host_kernels_use_vector_fma():
    for func in (fast.noncausal_func(2, 64, 64, 64, 64, LANES, EPS), fast.causal_func(2, 128, 64, 64, LANES, EPS)):
        asm = tvm.compile(tvm.IRModule({"main": func}), target=HOST).mod.inspect_source("asm")
        assert "vfmadd" in asm and ("ymm" in asm or "zmm" in asm)
