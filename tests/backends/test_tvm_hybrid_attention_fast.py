"""The hand-scheduled CPU kernel of ``WindowedLinearAttention`` (``kernels/hybrid_attention_fast.py``)
agrees with the op's numpy reference: causal and not, N not a multiple of the chunk, N below the
window, a window of 1 (chunks of 16 here: several per sequence), D and F not multiples of the
SIMD width, a masked key (-inf in K's extra column, as the pass folds key-padding masks), per-head
γ; the converter takes it under a CPU target (broadcast V, [H, 1, 1] γ, chunks of 64) and falls back
to the TE graph without one or for a decode step (Sq != Sk)."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from graphopt import testing  # noqa: E402
from graphopt.backends.tvm import targets  # noqa: E402
from graphopt.backends.tvm.cpu.common import vector_lanes  # noqa: E402
from graphopt.backends.tvm.kernels import CONVERTERS  # noqa: E402
from graphopt.backends.tvm.kernels import hybrid_attention_fast as fast  # noqa: E402
from graphopt.backends.tvm.kernels.linear_attention_fast import compile_kernel  # noqa: E402
from graphopt.ops.hybrid_attention import hybrid_attention_reference as reference  # noqa: E402

HOST = targets.resolve("tvm-llvm").tvm_target()
LANES = vector_lanes(HOST, "float32")
SCALE = 0.3
CHUNK = 16  # small chunks: several per sequence at small N, and a quicker compile (the converter's test uses 64)


def _inputs(rng, lead, n, d, f, dv):
    q, k = (rng.standard_normal((*lead, n, d)).astype(np.float32) for _ in range(2))
    qf, kf = (np.abs(rng.standard_normal((*lead, n, f))).astype(np.float32) for _ in range(2))
    return q, k, qf, kf, rng.standard_normal((*lead, n, dv)).astype(np.float32)


def _close(got, expected):
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5 * float(np.abs(expected).max()))


@pytest.mark.parametrize("bh,n,d,f,dv,window,causal", [(2, 5, 9, 6, 4, 8, 0), (2, 45, 16, 24, 16, 6, 0),
                                                       (2, 45, 16, 24, 16, 1, 1), (1, 40, 9, 12, 5, 16, 1)],
                         ids=["n-below-window", "chunks", "chunks-causal-window-1", "masked-key-causal"])
def test_kernel_matches_reference(bh, n, d, f, dv, window, causal):
    rng = np.random.default_rng(testing.SEED)
    q, k, qf, kf, v = _inputs(rng, (bh,), n, d, f, dv)
    if d == 9 and n == 40:  # the pass's folded key mask: key 3 padded (-inf score column, zero features)
        q[..., -1], k[..., -1] = 1.0, 0.0
        k[:, 3, -1], kf[:, 3] = -np.inf, 0.0
    gamma = rng.uniform(0.05, 3.0, bh).astype(np.float32)
    func = fast.hybrid_func(bh, n, d, f, dv, LANES, window=window, scale=SCALE, causal=causal, chunk=CHUNK)
    y = tvm.runtime.tensor(np.full((bh, n, dv), np.nan, np.float32))
    compile_kernel(func, HOST)(*[tvm.runtime.tensor(a) for a in (q, k, qf, kf, v, gamma)], y)
    _close(y.numpy(), reference(q, k, qf, kf, v, gamma.reshape(bh, 1, 1), window=window, scale=SCALE, causal=causal))


def _converted(inputs, attrs, target=HOST):
    """main(Q, K, Qf, Kf, V) = CONVERTERS[...](.., γ constant) under ``target``: (output, PrimFunc names)."""
    bb = relax.BlockBuilder()
    params = [relax.Var(f"in{i}", relax.TensorType(a.shape, str(a.dtype))) for i, a in enumerate(inputs[:5])]
    with bb.function("main", params):
        with bb.dataflow():
            args = [*params, relax.const(inputs[5])]
            if target is None:
                out = CONVERTERS["WindowedLinearAttention"](bb, args, attrs)
            else:
                with target:
                    out = CONVERTERS["WindowedLinearAttention"](bb, args, attrs)
            out = bb.emit_output(out)
        bb.emit_func_output(out)
    mod = bb.get()
    vm = relax.VirtualMachine(tvm.compile(mod, target=HOST), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in inputs[:5]]).numpy(), {gv.name_hint for gv in mod.functions}


def test_converter_takes_the_fast_kernel(causal=1):
    rng = np.random.default_rng(testing.SEED)
    q, k, qf, kf, v = _inputs(rng, (2, 3), 70, 8, 16, 8)
    v = v[:1]  # broadcast over the batch
    attrs = {"window": 6, "scale": SCALE, "causal": causal}
    gamma = np.array([0.1, 0.5, 2.0], np.float32).reshape(3, 1, 1)  # per head
    got, names = _converted((q, k, qf, kf, v, gamma), attrs)
    assert "graphopt_hybrid_attention" in names and "graphopt_hybrid_weights" not in names
    _close(got, reference(q, k, qf, kf, v, gamma, **attrs))


def test_converter_falls_back_to_te():
    rng = np.random.default_rng(testing.SEED)
    q, k, qf, kf, v = _inputs(rng, (1, 2), 6, 4, 8, 4)
    attrs = {"window": 2, "scale": SCALE, "causal": 1}
    gamma = np.float32(0.5)
    for inputs, target in (((q, k, qf, kf, v, gamma), None),  # no CPU target in scope
                           ((q[..., :1, :], k, qf[..., :1, :], kf, v, gamma), HOST)):  # Sq != Sk (decode)
        got, names = _converted(inputs, attrs, target)
        assert "graphopt_hybrid_attention" not in names and "graphopt_hybrid_weights" in names
        _close(got, reference(*inputs, **attrs))
