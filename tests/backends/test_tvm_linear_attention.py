"""The TVM kernel of ``LinearizedAttention`` agrees with the numpy reference and with ONNX Runtime
running the op's body: the op's examples (non-causal, causal, per-head decay, decay 0, broadcast
K/V), seeded random cases, float16, and a decay that enters as a constant (an initializer)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

sys.path.insert(0, str(Path(__file__).parent))
from test_tvm_kernels import _assert_matches  # noqa: E402

from graphopt import testing  # noqa: E402

# registration and the op's examples: tests/backends/test_tvm_kernels.py (FLOAT_OPS)
OP = "LinearizedAttention"


@pytest.mark.parametrize("causal", [0, 1])
def test_random_cases(causal):
    rng = np.random.default_rng(testing.SEED)
    qf, kf = (np.abs(rng.standard_normal((2, 4, 9, 16))).astype(np.float32) for _ in range(2))
    v = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    decay = rng.uniform(0.5, 1.0, (4, 1, 1)).astype(np.float32)
    _assert_matches(OP, (qf, kf, v, decay), {"causal": causal}, constant_inputs=(3,))
    half = tuple(a.astype(np.float16) for a in (qf, kf, v, decay))
    _assert_matches(OP, half, {"causal": causal})


@pytest.mark.parametrize("causal", [0, 1])
def test_tvm_llvm_build_of_a_linearized_model_matches_onnx_runtime(causal, monkeypatch):
    """linear-attention's output (feature maps as ONNX ops + the op) through the TVM importer, which
    takes the hand-scheduled CPU kernel (float32, static shapes, llvm)."""
    import onnx.parser  # noqa: PLC0415

    from graphopt.backends.tvm.kernels import linear_attention as kernel  # noqa: PLC0415

    fast = []
    original_emit = kernel.emit_fast
    monkeypatch.setattr(kernel, "emit_fast", lambda *a, **k: fast.append(original_emit(*a, **k)) or fast[-1])
    import onnx_ir as ir  # noqa: PLC0415

    from graphopt.backends import tvm as tvm_backend  # noqa: PLC0415
    from graphopt.pipeline import run_pipeline  # noqa: PLC0415

    mask = ("M = Constant <value = float[6,6] {%s}> ()" % ", ".join(
        "0" if j <= i else "-inf" for i in range(6) for j in range(6))) if causal else "M = Constant <value = float {0}> ()"
    text = f"""<ir_version: 10, opset_import: ["": 18]>
attn (float[1,2,6,8] Q, float[1,2,6,8] K, float[1,2,6,8] V) => (float[1,2,6,8] Y) {{
    {mask}
    kt = Transpose <perm = [0, 1, 3, 2]> (K)
    s = MatMul (Q, kt)
    c = Constant <value = float {{0.35}}> ()
    sc = Mul (s, c)
    l = Add (sc, M)
    p = Softmax <axis = -1> (l)
    Y = MatMul (p, V)
}}"""
    model = ir.serde.deserialize_model(onnx.parser.parse_model(text))
    run_pipeline(model, "attention,linear-attention(feature_map=performer)")
    assert OP in testing.op_types(model)
    rng = np.random.default_rng(testing.SEED)
    feeds = {n: rng.standard_normal((1, 2, 6, 8)).astype(np.float32) for n in "QKV"}
    expected = testing.run_ort(model, feeds)[0]
    artifact = tvm_backend.compile(model, target="tvm-llvm", example_inputs=feeds)
    np.testing.assert_allclose(artifact.run(feeds)["Y"], expected, rtol=1e-4, atol=1e-5)
    assert fast and all(f is not None for f in fast)
