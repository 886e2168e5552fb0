"""rsparse: per-channel thresholds t / ‖W's input-channel row‖ on every linear input plus a rank-r SVD
path for the dropped rest (R-Sparse).

Structure (golden op lists; MatMul and Gemm with transB), the budget, numerics against R-Sparse's
formula in numpy, sparsity 0 with alpha 1 is the original model, the declines (int8 weight computed
in the graph, transA, the head), tiny-llama's achieved sparsity on held-out samples, validity and ONNX
Runtime at every optimization level.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest

from graphopt import ops, testing
from graphopt.backends import ort as ort_backend
from graphopt.ops.threshold import SITE_KEY, TARGET_KEY
from graphopt.passes.rsparse import budget
from graphopt.pipeline import run_pipeline
from graphopt.sparsity import measure_sparsity


def _floats(shape, seed):
    values = np.random.default_rng(seed).standard_normal(shape) * 0.5
    return "{" + ", ".join(f"{v:.5f}" for v in values.ravel()) + "}"


def graph(body: str, weights: dict[str, tuple[int, int]], out: str = "float[N, 16] y") -> str:
    inits = ", ".join(f"float[{a}, {b}] {name} = {_floats((a, b), i)}" for i, (name, (a, b)) in enumerate(weights.items()))
    return f'<ir_version: 10, opset_import: ["" : 20]>\ng (float[N, 16] x) => ({out}) <{inits}> {{\n{body}\n}}'


LINEAR = graph("m = MatMul(x, w)\n y = Relu(m)", {"w": (16, 16)})
GEMM_T = graph("m = Gemm <transB = 1, alpha = 0.5> (x, w, b)\n y = Relu(m)", {"w": (16, 16), "b": (1, 16)})
GEMM_TRANS_A = graph("m = Gemm <transA = 1> (x, w)\n y = Relu(m)", {"w": (16, 16)}).replace("float[N, 16] x", "float[16, 16] x")
HEAD = graph("h = MatMul(x, w1)\n r = Relu(h)\n y = MatMul(r, w2)", {"w1": (16, 16), "w2": (16, 16)})
INT8 = ('<ir_version: 10, opset_import: ["" : 20]>\ng (float[N, 4] x) => (float[N, 4] y) <int8[4, 4] q = {1, 2, 3, 4, 5, 6, 7, 8, '
        '9, 10, 11, 12, 13, 14, 15, 16}, float s = {0.1}> {\n w = DequantizeLinear(q, s)\n m = MatMul(x, w)\n y = Relu(m)\n}')


def _thresholds(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if n.op_type == "ActivationThreshold" and n.domain == ops.DOMAIN]


def _samples(count=4, rows=32, width=16):
    rng = np.random.default_rng(testing.SEED)
    return [{"x": rng.standard_normal((rows, width)).astype(np.float32)} for _ in range(count)]


def _proto(source: str) -> onnx.ModelProto:
    return onnx.parser.parse_model(source)


def _rewritten(source, pipeline, samples):
    model = ir.serde.deserialize_model(_proto(source))
    return model, run_pipeline(model, pipeline, samples=samples)[-1]


def test_budget_splits_the_layer_between_channels_and_rank():
    assert budget(64, 64, 0.5, 0.8) == (pytest.approx(0.6), 3)  # 25.6 channels; (2048 - 1638.4) / 128 = 3.2
    assert budget(16, 16, 0.4, 0.5) == (pytest.approx(0.7), 2)  # 4.8 channels; (153.6 - 76.8) / 32 = 2.4
    assert budget(16, 16, 0.5, 1.0) == (pytest.approx(0.5), 0)  # alpha 1: thresholding alone
    assert budget(16, 16, 0.0, 1.0) == (pytest.approx(0.0), 0)


def _expected(x, weight, drop, rank):
    """R-Sparse's forward in numpy: W(x⊙m) + U_r S_r V_rᵀ(x⊙(1-m)), m = |x·c| > t (x @ W convention)."""
    norms = np.linalg.norm(weight, axis=1)
    t = np.quantile(np.abs(x * norms), drop)
    mask = np.abs(x * norms) > t
    u, s, vt = np.linalg.svd(weight, full_matrices=False)
    return (x * mask) @ weight + (x * ~mask) @ (u[:, :rank] * s[:rank]) @ vt[:rank]


@pytest.mark.parametrize(("source", "rule"), [(LINEAR, "rsparse-matmul"), (GEMM_T, "rsparse-gemm")])
def test_sparse_channels_plus_low_rank_path(source, rule):
    samples = _samples(count=1, rows=256)
    model, record = _rewritten(source, "rsparse(sparsity=0.4, alpha=0.5)", samples)
    assert record.rewrites == {rule: 1} and not record.declines
    linear = rule.split("-")[1].capitalize().replace("Matmul", "MatMul")
    assert testing.op_types(model) == ["Constant", "ActivationThreshold", linear, "Constant", "Constant", "Sub", "MatMul",
                                       "MatMul", "Add", "Relu"]
    testing.assert_valid(model)
    (node,) = _thresholds(model)
    drop, rank = budget(16, 16, 0.4, 0.5)
    assert rank == 2 and float(node.metadata_props[TARGET_KEY]) == pytest.approx(drop) and node.metadata_props[SITE_KEY].startswith("x -> ")
    initializers = ir.serde.deserialize_model(_proto(source)).graph.initializers
    weight = initializers["w"].const_value.numpy().astype(np.float64)
    bias = 0.0
    if rule == "rsparse-gemm":
        weight, bias = 0.5 * weight.T, initializers["b"].const_value.numpy()
    x = samples[0]["x"]
    want = np.maximum(_expected(x.astype(np.float64), weight, drop, rank) + bias, 0)
    got = ort_backend.run(ort_backend.make_session(model, optimization="disable", threads=1), samples[0])["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_sparsity_zero_alpha_one_is_the_original_model(check):
    model, record = _rewritten(HEAD, "rsparse(sparsity=0, alpha=1, head=true)", _samples())
    assert record.rewrites == {"rsparse-matmul": 2}
    assert testing.op_types(model).count("Sub") == 0  # rank 0: no low-rank path
    testing.assert_valid(model)
    testing.assert_numerically_equal(check.proto(HEAD), model, check.feeds(check.proto(HEAD), {"N": 8}), rtol=1e-6, atol=1e-6)


def test_head_is_declined():
    _, record = _rewritten(HEAD, "rsparse", _samples())
    assert record.rewrites == {"rsparse-matmul": 1} and any("is the model's head" in d for d in record.declines)


def test_weight_computed_in_the_graph_is_declined():
    model, record = _rewritten(INT8, "rsparse", _samples(width=4))
    assert not record.modified
    assert any("rsparse needs its values for the SVD" in d for d in record.declines), record.declines


def test_gemm_with_trans_a_is_declined():
    _, record = _rewritten(GEMM_TRANS_A, "rsparse", _samples(count=2, rows=16))
    assert not record.modified and any("has transA = 1" in d for d in record.declines), record.declines


def test_tiny_llama_channel_sparsity_is_met_on_held_out_samples():
    tiny_llama = pytest.importorskip("graphopt.models.tiny_llama")
    pytest.importorskip("torch")
    proto = tiny_llama.build()
    calib = [tiny_llama.example_inputs(seed=s, seq_len=16) for s in range(16)]
    held_out = [tiny_llama.example_inputs(seed=100 + s, seq_len=16) for s in range(16)]
    model = ir.serde.deserialize_model(proto)
    record = run_pipeline(model, "canonicalize,rsparse(sparsity=0.5, alpha=0.8)", samples=calib)[-1]
    assert record.rewrites == {"rsparse-matmul": 14} and all("head" in d for d in record.declines), record.declines
    testing.assert_valid(model)
    report = measure_sparsity(model, held_out)
    assert len(report.tensors) == 14
    for tensor in report.tensors:  # the dropped channels: 1 - (1 - 0.5) * 0.8
        assert tensor.target == pytest.approx(0.6) and abs(tensor.achieved - 0.6) <= 0.02, tensor
    for level in ort_backend.OPTIMIZATION_LEVELS:
        session = ort_backend.make_session(model, optimization=level, threads=1)
        (logits,) = session.run(["logits"], held_out[0])
        assert np.isfinite(logits).all()
