"""teal: a calibrated ActivationThreshold on the input of every linear layer, per layer and projection.

Structure (golden op lists; one threshold per projection of a shared input; Gemm), the declines
(runtime weight, non-float input, the head, an input cats already thresholded), numerics (sparsity
0 is the original model; on tiny-llama 0.5 is met within ±2 points on other samples), validity and
ONNX Runtime at every optimization level.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from graphopt import ops, testing
from graphopt.backends import ort as ort_backend
from graphopt.ops.threshold import SITE_KEY, TARGET_KEY
from graphopt.pipeline import run_pipeline
from graphopt.sparsity import measure_sparsity

SAMPLES = 16  # of 2 x 16 tokens: fewer leave the held-out sparsity of one threshold a few points off by chance


def _floats(shape, seed):
    values = np.random.default_rng(seed).standard_normal(shape) * 0.5
    return "{" + ", ".join(f"{v:.5f}" for v in values.ravel()) + "}"


def graph(body: str, weights: dict[str, tuple[int, int]], out: str = "float[N, 8] y, float[N, 8] z") -> str:
    """``x`` through linear layers; the outputs ``y``, ``z`` come from an elementwise op, so no linear
    layer here is a head (makes a graph output, alone or plus a constant bias) unless the test makes it one."""
    inits = ", ".join(f"float[{a}, {b}] {name} = {_floats((a, b), i)}" for i, (name, (a, b)) in enumerate(weights.items()))
    return f'<ir_version: 10, opset_import: ["" : 20]>\ng (float[N, 8] x) => ({out}) <{inits}> {{\n{body}\n}}'


TWO_PROJECTIONS = graph("q = MatMul(x, wq)\n k = MatMul(x, wk)\n y = Relu(q)\n z = Relu(k)", {"wq": (8, 8), "wk": (8, 8)})
CHAIN = graph("h = MatMul(x, w1)\n r = Relu(h)\n o = MatMul(r, w2)\n y = Relu(o)\n z = Neg(o)", {"w1": (8, 16), "w2": (16, 8)})
GEMM = graph("g = Gemm <transB = 1> (x, w)\n y = Relu(g)\n z = Neg(g)", {"w": (8, 8)})
HEAD_WITH_BIAS = graph("h = MatMul(x, w1)\n m = MatMul(h, w2)\n y = Add(m, b)", {"w1": (8, 8), "w2": (8, 8), "b": (1, 8)},
                       out="float[N, 8] y")
RESIDUAL_OUT = graph("h = MatMul(x, w1)\n y = Add(h, x)", {"w1": (8, 8)}, out="float[N, 8] y")
HEAD = graph("h = MatMul(x, w1)\n y = MatMul(h, w2)", {"w1": (8, 8), "w2": (8, 8)}, out="float[N, 8] y")
RUNTIME_WEIGHT = ('<ir_version: 10, opset_import: ["" : 20]>\n'
                  "g (float[N, 8] x, float[8, 8] w) => (float[N, 8] y) {\n m = MatMul(x, w)\n y = Add(m, x)\n}")
INTEGER = ('<ir_version: 10, opset_import: ["" : 20]>\n'
           "g (int32[N, 2] x) => (int32[N, 2] y) <int32[2, 2] w = {1, 2, 3, 4}> {\n m = MatMul(x, w)\n y = Add(m, x)\n}")
GELU_MLP = graph("h = MatMul(x, w1)\n a = Gelu(h)\n o = MatMul(a, w2)\n y = Relu(o)\n z = Neg(o)", {"w1": (8, 16), "w2": (16, 8)})


def _thresholds(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if n.op_type == "ActivationThreshold" and n.domain == ops.DOMAIN]


def test_each_projection_gets_its_own_threshold(check):
    result = check.run(TWO_PROJECTIONS, "teal")
    assert result.last.rewrites == {"teal-matmul": 2} and not result.last.declines
    assert result.ops == ["Constant", "ActivationThreshold", "MatMul", "Constant", "ActivationThreshold", "MatMul", "Relu", "Relu"]
    testing.assert_valid(result.model)
    nodes = _thresholds(result.model)
    assert [n.inputs[0].name for n in nodes] == ["x", "x"]
    sites = [n.metadata_props[SITE_KEY] for n in nodes]
    assert all(site.startswith("x -> ") for site in sites) and len(set(sites)) == 2  # one per projection
    assert {n.metadata_props[TARGET_KEY] for n in nodes} == {"0.5"}


def test_every_linear_layer_of_a_chain(check):
    result = check.run(CHAIN, "teal(sparsity=0.3)")
    assert result.last.rewrites == {"teal-matmul": 2}
    assert result.ops == ["Constant", "ActivationThreshold", "MatMul", "Relu", "Constant", "ActivationThreshold", "MatMul", "Relu", "Neg"]
    assert {n.metadata_props[TARGET_KEY] for n in _thresholds(result.model)} == {"0.3"}
    testing.assert_valid(result.model)


def test_gemm_keeps_its_attributes(check):
    result = check.run(GEMM, "teal")
    assert result.last.rewrites == {"teal-gemm": 1}
    assert result.ops == ["Constant", "ActivationThreshold", "Gemm", "Relu", "Neg"]
    (gemm,) = [n for n in result.model.graph if n.op_type == "Gemm"]
    assert gemm.attributes.get_int("transB") == 1


@pytest.mark.parametrize("source", [TWO_PROJECTIONS, CHAIN, GEMM, GELU_MLP])
def test_sparsity_zero_is_the_original_model(check, source):
    result = check.fires(source, "teal(sparsity=0)", None, rtol=0, atol=0)
    assert all(float(n.inputs[1].const_value.numpy()) == 0.0 for n in _thresholds(result.model))


def test_threshold_is_the_calibrated_quantile_of_the_input(check):
    original = check.proto(TWO_PROJECTIONS)
    samples = [check.feeds(original, {"N": 32})]
    model = ir.serde.deserialize_model(original)
    run_pipeline(model, "teal(sparsity=0.4)", samples=samples)
    expected = np.quantile(np.abs(samples[0]["x"]), 0.4)
    for node in _thresholds(model):
        assert float(node.inputs[1].const_value.numpy()) == pytest.approx(expected, rel=1e-6)


def test_runtime_weight_is_declined(check):
    check.declines(RUNTIME_WEIGHT, "teal", "is not a constant 2-D matrix")


def test_integer_input_is_declined(check):
    check.declines(INTEGER, "teal", "its input x is INT32, not float")


def test_head_is_declined_unless_asked_for(check):
    result = check.run(HEAD, "teal")
    assert result.last.rewrites == {"teal-matmul": 1}
    assert any("is the model's head" in d for d in result.last.declines), result.last.declines
    assert check.run(HEAD, "teal(head=true)").last.rewrites == {"teal-matmul": 2}


def test_head_with_a_bias_is_declined_but_a_residual_output_is_not(check):
    result = check.run(HEAD_WITH_BIAS, "teal")
    assert result.last.rewrites == {"teal-matmul": 1} and any("is the model's head" in d for d in result.last.declines)
    result = check.run(RESIDUAL_OUT, "teal")
    assert result.last.rewrites == {"teal-matmul": 1} and not result.last.declines


def test_input_thresholded_by_cats_is_declined(check):
    result = check.run(GELU_MLP, "cats,teal")
    assert result.records[-2].rewrites == {"cats-gelu-mlp-matmul": 1}
    assert result.last.rewrites == {"teal-matmul": 1}  # fc1 only
    assert any("already thresholded by cats" in d for d in result.last.declines), result.last.declines
    assert len(_thresholds(result.model)) == 2


def test_input_without_statistics_is_declined(check):
    model = ir.serde.deserialize_model(check.proto(TWO_PROJECTIONS))
    nan = {"x": np.full((2, 8), np.nan, np.float32)}
    record = run_pipeline(model, "teal", samples=[nan])[-1]
    assert not record.modified and any("no calibration statistics for x" in d for d in record.declines)


def test_no_linear_layer_does_not_fire(check):
    source = '<ir_version: 10, opset_import: ["" : 20]>\ng (float[N, 8] x) => (float[N, 8] y) {\n y = Relu(x)\n}'
    result = check.run(source, "teal")
    assert not result.last.modified and result.ops == ["Relu"] and not result.last.declines


# --- tiny-llama: q/k/v/o and gate/up/down of two layers --------------------------------------------


@pytest.fixture(scope="module")
def llama():
    tiny_llama = pytest.importorskip("graphopt.models.tiny_llama")
    pytest.importorskip("torch")
    proto = tiny_llama.build()
    calib = [tiny_llama.example_inputs(seed=s, seq_len=16) for s in range(SAMPLES)]
    held_out = [tiny_llama.example_inputs(seed=100 + s, seq_len=16) for s in range(SAMPLES)]
    return proto, calib, held_out


def _rewritten(proto, pipeline, samples):
    model = ir.serde.deserialize_model(proto)
    record = run_pipeline(model, pipeline, samples=samples)[-1]
    assert record.modified, record.declines
    return model, record


def test_tiny_llama_sparsity_zero_keeps_the_logits(llama):
    proto, calib, held_out = llama
    model, record = _rewritten(proto, "canonicalize,teal(sparsity=0)", calib)
    assert record.rewrites == {"teal-matmul": 14}  # 7 per layer; lm_head stays dense
    assert any("head" in d for d in record.declines)
    testing.assert_valid(model)
    testing.assert_numerically_equal(proto, model, held_out[0], rtol=1e-5, atol=1e-5)


def test_tiny_llama_half_sparsity_is_met_on_held_out_samples(llama):
    proto, calib, held_out = llama
    model, _ = _rewritten(proto, "canonicalize,teal(sparsity=0.5)", calib)
    testing.assert_valid(model)
    report = measure_sparsity(model, held_out)
    assert len(report.tensors) == 14
    for tensor in report.tensors:
        assert tensor.target == 0.5 and abs(tensor.achieved - 0.5) <= 0.02, tensor
    assert abs(report.model_wide - 0.5) <= 0.02
    assert sum(t.weight for t in report.tensors) == 2 * (3 * 64 * 64 - 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128)
    for level in ort_backend.OPTIMIZATION_LEVELS:
        session = ort_backend.make_session(model, optimization=level, threads=1)
        (logits,) = session.run(["logits"], held_out[0])
        assert np.isfinite(logits).all()


# --- greedy=true: TEAL's block-wise allocation ------------------------------------------------------

TWO_BLOCKS = graph("n1 = LayerNormalization <axis = -1> (x, g1)\n q = MatMul(n1, wq)\n k = MatMul(n1, wk)\n a = Add(q, k)\n"
                   " o = MatMul(a, wo)\n n2 = LayerNormalization <axis = -1> (o, g2)\n h = MatMul(n2, w1)\n r = Relu(h)\n"
                   " m = MatMul(r, w2)\n y = Relu(m)\n z = Neg(m)",
                   {"wq": (8, 8), "wk": (8, 8), "wo": (8, 8), "w1": (8, 16), "w2": (16, 8), "g1": (1, 8), "g2": (1, 8)})


def test_greedy_blocks_are_the_sublayers_of_each_normalization(check):
    from graphopt.passes._teal_greedy import blocks  # noqa: PLC0415 — the pass's helper, tested directly

    model = ir.serde.deserialize_model(check.proto(TWO_BLOCKS))
    inputs = {node.outputs[0].name: node.inputs[0] for node in model.graph if node.op_type == "MatMul"}
    assert blocks(model.graph, inputs) == [["q", "k", "o"], ["h", "m"]]


def test_greedy_meets_the_target_in_every_block(check):
    original = check.proto(TWO_BLOCKS)
    rng = np.random.default_rng(testing.SEED)
    samples = [{"x": rng.standard_normal((16, 8)).astype(np.float32)} for _ in range(4)]
    model = ir.serde.deserialize_model(original)
    record = run_pipeline(model, "teal(sparsity=0.4, greedy=true)", samples=samples)[-1]
    assert record.rewrites == {"teal-matmul": 5}
    testing.assert_valid(model)
    # each linear layer's output (the name it keeps) -> the sparsity greedy gave its input
    targets = {n.outputs[0].consumers()[0].outputs[0].name: float(n.metadata_props[TARGET_KEY]) for n in _thresholds(model)}
    weight = {"q": 64, "k": 64, "o": 64, "h": 128, "m": 128}
    for block in (("q", "k", "o"), ("h", "m")):
        mean = sum(targets[b] * weight[b] for b in block) / sum(weight[b] for b in block)
        assert mean == pytest.approx(0.4, abs=1e-5), (block, targets)
    assert len(set(targets.values())) > 1  # a real allocation, not the uniform one


def _relative_error(reference, model, samples) -> float:
    sessions = [ort_backend.make_session(m, optimization="disable", threads=1) for m in (reference, model)]
    total = 0.0
    for feeds in samples:
        want, got = (np.asarray(ort_backend.run(s, feeds)["logits"], np.float64) for s in sessions)
        total += float(np.sum((got - want) ** 2) / np.sum(want * want))
    return total


def test_tiny_llama_greedy_meets_the_model_wide_target_and_beats_uniform(llama):
    proto, calib, held_out = llama
    greedy, record = _rewritten(proto, "canonicalize,teal(sparsity=0.5, greedy=true)", calib)
    uniform, _ = _rewritten(proto, "canonicalize,teal(sparsity=0.5)", calib)
    assert record.rewrites == {"teal-matmul": 14}
    testing.assert_valid(greedy)
    report = measure_sparsity(greedy, held_out)
    assert report.target_model_wide == pytest.approx(0.5, abs=1e-5)
    assert abs(report.model_wide - 0.5) <= 0.02, report.as_dict()
    for tensor in report.tensors:
        assert abs(tensor.achieved - tensor.target) <= 0.02, tensor
    assert len({t.target for t in report.tensors}) > 2
    reference = ir.serde.deserialize_model(proto)
    assert _relative_error(reference, greedy, calib) <= _relative_error(reference, uniform, calib)
    again, _ = _rewritten(proto, "canonicalize,teal(sparsity=0.5, greedy=true)", calib)  # deterministic
    assert [t.inputs[1].const_value.numpy().tolist() for t in _thresholds(again)] == \
        [t.inputs[1].const_value.numpy().tolist() for t in _thresholds(greedy)]
    for level in ort_backend.OPTIMIZATION_LEVELS:
        session = ort_backend.make_session(greedy, optimization=level, threads=1)
        (logits,) = session.run(["logits"], held_out[0])
        assert np.isfinite(logits).all()
