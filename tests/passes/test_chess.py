"""chess: per-channel gate thresholds (importance a_g²·E[a_u²]) and selective attention thresholds
(q_proj's and o_proj's inputs; k_proj and v_proj dense).

Structure (golden op lists; the per-channel T), the thresholds against CHESS's formula in numpy, the
declines (k/v, a fused QKV projection, cats' checks), numerics (sparsity 0 is the original model;
on tiny-llama 0.5 is met within ±2 points on other samples), validity and ORT at every level.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
import pytest

from graphopt import ops, testing
from graphopt.backends import ort as ort_backend
from graphopt.ops.threshold import SITE_KEY, TARGET_KEY
from graphopt.pipeline import run_pipeline
from graphopt.sparsity import measure_sparsity

SAMPLES = 16  # of 2 x 16 tokens, as for cats and teal


def _floats(shape, seed):
    values = np.random.default_rng(seed).standard_normal(shape) * 0.5
    return "{" + ", ".join(f"{v:.5f}" for v in values.ravel()) + "}"


def graph(body: str, weights: dict[str, tuple[int, int]], extra: str = "") -> str:
    inits = ", ".join(f"float[{a}, {b}] {name} = {_floats((a, b), i)}" for i, (name, (a, b)) in enumerate(weights.items()))
    return f'<ir_version: 10, opset_import: ["" : 20]>\ng (float[N, 8] x) => (float[N, 8] y) <{inits}{extra}> {{\n{body}\n}}'


SWIGLU = graph("g = MatMul(x, wg)\n s = Sigmoid(g)\n a = Mul(g, s)\n u = MatMul(x, wu)\n h = Mul(a, u)\n y = MatMul(h, wd)",
               {"wg": (8, 16), "wu": (8, 16), "wd": (16, 8)})
GELU_MLP = graph("h = MatMul(x, w1)\n a = Gelu(h)\n y = MatMul(a, w2)", {"w1": (8, 16), "w2": (16, 8)})
_SCORES = " kt = Transpose <perm = [1, 0]> (k)\n s = MatMul(q, kt)\n s2 = Mul(s, c)\n p = Softmax(s2)\n a = MatMul(p, v)\n"
ATTENTION = graph(" q = MatMul(x, wq)\n k = MatMul(x, wk)\n v = MatMul(x, wv)\n" + _SCORES + " o = MatMul(a, wo)\n y = Add(o, x)",
                  {n: (8, 8) for n in ("wq", "wk", "wv", "wo")}, ", float c = {0.35}")
FUSED_QKV = graph(" qkv = MatMul(x, w)\n q, k, v = Split <axis = 1, num_outputs = 3> (qkv)\n" + _SCORES + " y = Add(a, a)",
                  {"w": (8, 24)}, ", float c = {0.35}")


def _thresholds(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if n.op_type == "ActivationThreshold" and n.domain == ops.DOMAIN]


def _t(node: ir.Node) -> np.ndarray:
    return node.inputs[1].const_value.numpy()


def _samples(count=4, rows=24):
    rng = np.random.default_rng(testing.SEED)
    return [{"x": rng.standard_normal((rows, 8)).astype(np.float32)} for _ in range(count)]


def _rewritten(check, source, pipeline, samples):
    model = ir.serde.deserialize_model(check.proto(source))
    records = run_pipeline(model, pipeline, samples=samples)
    return model, records[-1]


def test_gate_gets_one_threshold_per_channel(check):
    model, record = _rewritten(check, SWIGLU, "silu,chess", _samples())
    assert record.rewrites == {"chess-silu-gated-mlp": 1}
    assert testing.op_types(model) == ["MatMul", "MatMul", "SigmoidLinearUnit", "Constant", "ActivationThreshold", "Mul", "MatMul"]
    testing.assert_valid(model)
    (node,) = _thresholds(model)
    assert _t(node).shape == (16,) and len(set(_t(node).tolist())) == 16
    assert node.metadata_props[TARGET_KEY] == "0.5" and node.metadata_props[SITE_KEY] == "a"


def test_gate_thresholds_follow_chess_importance(check):
    samples = _samples(count=1, rows=256)
    model, _ = _rewritten(check, SWIGLU, "silu,chess(sparsity=0.3)", samples)
    weights = {k: v.const_value.numpy() for k, v in ir.serde.deserialize_model(check.proto(SWIGLU)).graph.initializers.items()}
    g, u = samples[0]["x"] @ weights["wg"], samples[0]["x"] @ weights["wu"]
    a = g / (1 + np.exp(-g))
    energy = np.mean(u.astype(np.float64) ** 2, axis=0)
    expected = np.sqrt(np.quantile(a.astype(np.float64) ** 2 * energy, 0.3) / energy)
    (node,) = _thresholds(model)
    np.testing.assert_allclose(_t(node), expected, rtol=1e-4)
    kept = np.abs(a) > _t(node)
    assert abs(1 - kept.mean() - 0.3) < 0.01  # the layer's target, over all channels


def test_plain_mlp_channels_share_cats_threshold(check):
    samples = _samples(count=1, rows=64)
    model, record = _rewritten(check, GELU_MLP, "chess(sparsity=0.4)", samples)
    assert record.rewrites == {"chess-gelu-mlp-matmul": 1}
    w1 = ir.serde.deserialize_model(check.proto(GELU_MLP)).graph.initializers["w1"].const_value.numpy()
    h = (samples[0]["x"] @ w1).astype(np.float64)
    a = 0.5 * h * (1 + np.vectorize(math.erf)(h / np.sqrt(2)))
    (node,) = _thresholds(model)
    np.testing.assert_allclose(_t(node), np.full(16, np.quantile(np.abs(a), 0.4)), rtol=1e-4)


def test_attention_thresholds_q_and_o_inputs_only(check):
    model, record = _rewritten(check, ATTENTION, "attention,chess", _samples())
    assert record.rewrites == {"chess-attention-matmul": 2}
    assert testing.op_types(model) == ["Constant", "ActivationThreshold", "MatMul", "MatMul", "MatMul", "DotProductAttention",
                                       "Constant", "ActivationThreshold", "MatMul", "Add"]
    testing.assert_valid(model)
    assert sorted(n.metadata_props[SITE_KEY].split(" -> ")[0] for n in _thresholds(model)) == ["a", "x"]
    readers = sorted(n.outputs[0].consumers()[0].outputs[0].name for n in _thresholds(model))
    assert readers == ["o", "q"]
    assert len(record.declines) == 2, record.declines
    for name in ("k", "v"):
        assert any(d.endswith(f"{name} makes attention's K or V: CHESS keeps k_proj and v_proj dense") for d in record.declines)


def test_fused_qkv_projection_is_declined(check):
    model, record = _rewritten(check, FUSED_QKV, "attention,chess", _samples())
    assert not record.modified and not _thresholds(model)
    assert any("makes attention's Q and K or V (a fused projection)" in d for d in record.declines), record.declines


@pytest.mark.parametrize("source", [SWIGLU, GELU_MLP, ATTENTION])
def test_sparsity_zero_is_the_original_model(check, source):
    original = check.proto(source)
    model, record = _rewritten(check, source, "silu,attention,chess(sparsity=0)", _samples())
    assert record.modified and all(not np.any(_t(n)) for n in _thresholds(model))
    testing.assert_valid(model)
    testing.assert_numerically_equal(original, model, check.feeds(original, {"N": 8}), rtol=1e-5, atol=1e-6)


def test_no_mlp_and_no_attention_does_not_fire(check):
    source = graph("h = MatMul(x, w1)\n y = MatMul(h, w2)", {"w1": (8, 8), "w2": (8, 8)})
    model, record = _rewritten(check, source, "chess", _samples())
    assert not record.modified and testing.op_types(model) == ["MatMul", "MatMul"] and not record.declines


# --- tiny-llama -------------------------------------------------------------------------------------


def test_tiny_llama_half_sparsity_is_met_on_held_out_samples():
    tiny_llama = pytest.importorskip("graphopt.models.tiny_llama")
    pytest.importorskip("torch")
    proto = tiny_llama.build()
    calib = [tiny_llama.example_inputs(seed=s, seq_len=16) for s in range(SAMPLES)]
    held_out = [tiny_llama.example_inputs(seed=100 + s, seq_len=16) for s in range(SAMPLES)]
    model = ir.serde.deserialize_model(proto)
    record = run_pipeline(model, "canonicalize,chess(sparsity=0.5)", samples=calib)[-1]
    assert record.rewrites == {"chess-silu-gated-mlp": 2, "chess-attention-matmul": 4}  # per layer: gate, q, o
    assert sum("CHESS keeps k_proj and v_proj dense" in d for d in record.declines) == 4
    testing.assert_valid(model)
    report = measure_sparsity(model, held_out)
    assert len(report.tensors) == 6
    for tensor in report.tensors:
        assert tensor.target == 0.5 and abs(tensor.achieved - 0.5) <= 0.02, tensor
    for level in ort_backend.OPTIMIZATION_LEVELS:
        session = ort_backend.make_session(model, optimization=level, threads=1)
        (logits,) = session.run(["logits"], held_out[0])
        assert np.isfinite(logits).all()
