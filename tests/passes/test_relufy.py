"""relufy: every MLP's activation (SiLU / GELU) becomes ReLU, or FATReLU with threshold > 0.

Structure (golden op lists for the MLP forms cats matches), the declines (cats' checks), numerics
against the same graph written with Relu (the function changes on purpose), the stamped site that
measure_sparsity counts, validity and ONNX Runtime at every optimization level.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from graphopt import testing
from graphopt.backends import ort as ort_backend
from graphopt.ops.threshold import SITE_KEY, TARGET_KEY
from graphopt.pipeline import run_pipeline
from graphopt.sparsity import measure_sparsity


def _floats(shape, seed):
    values = np.random.default_rng(seed).standard_normal(shape) * 0.5
    return "{" + ", ".join(f"{v:.5f}" for v in values.ravel()) + "}"


def mlp(body: str, weights: dict[str, tuple[int, int]]) -> str:
    """A one-MLP graph; SiLU spelled x·Sigmoid(x), which ``silu`` (first in each pipeline here) fuses."""
    inits = ", ".join(f"float[{a}, {b}] {name} = {_floats((a, b), i)}" for i, (name, (a, b)) in enumerate(weights.items()))
    return (f'<ir_version: 10, opset_import: ["" : 20]>\n'
            f"mlp (float[N, 8] x) => (float[N, 8] y) <float[N, 16] a, {inits}> {{\n{body}\n}}")


GATED = {"wg": (8, 16), "wu": (8, 16), "wd": (16, 8)}
PLAIN = {"w1": (8, 16), "w2": (16, 8)}
SWIGLU = mlp("g = MatMul(x, wg)\n s = Sigmoid(g)\n a = Mul(g, s)\n u = MatMul(x, wu)\n h = Mul(a, u)\n y = MatMul(h, wd)", GATED)
SWIGLU_RELU = mlp("g = MatMul(x, wg)\n a = Relu(g)\n u = MatMul(x, wu)\n h = Mul(a, u)\n y = MatMul(h, wd)", GATED)
GELU_MLP = mlp("h = MatMul(x, w1)\n a = Gelu(h)\n y = MatMul(a, w2)", PLAIN)
GELU_MLP_RELU = mlp("h = MatMul(x, w1)\n a = Relu(h)\n y = MatMul(a, w2)", PLAIN)
RESHAPE_GEMM = ("h = MatMul(x, w1)\n a = {act}\n two = Constant <value = int64[2] {{-1, 16}}> ()\n"
                " f = Reshape(a, two)\n y = Gemm(f, w2)")
GELU_RESHAPE_GEMM = mlp(RESHAPE_GEMM.format(act='Gelu <approximate = "tanh"> (h)'), PLAIN)
RELU_RESHAPE_GEMM = mlp(RESHAPE_GEMM.format(act="Relu(h)"), PLAIN)
NO_ACTIVATION = mlp("h = MatMul(x, w1)\n y = MatMul(h, w2)", PLAIN)
SWIGLU_OUT = ('<ir_version: 10, opset_import: ["" : 20, "pkg.graphopt" : 1]>\n'
              "glu (float[N, 8] g, float[N, 8] u) => (float[N, 8] y) <float[N, 8] a> {\n a = pkg.graphopt.SigmoidLinearUnit(g)\n y = Mul(a, u)\n}")
GELU_RUNTIME_WEIGHT = ('<ir_version: 10, opset_import: ["" : 20]>\n'
                       "m (float[N, 8] x, float[8, 8] w) => (float[N, 8] y) {\n a = Gelu(x)\n y = MatMul(a, w)\n}")


def _stamped(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if SITE_KEY in n.metadata_props]


@pytest.mark.parametrize(("source", "relu", "rule", "after"), [
    (SWIGLU, SWIGLU_RELU, "relufy-silu-gated-mlp", ["MatMul", "MatMul", "Relu", "Mul", "MatMul"]),
    (GELU_MLP, GELU_MLP_RELU, "relufy-gelu-mlp-matmul", ["MatMul", "Relu", "MatMul"]),
    (GELU_RESHAPE_GEMM, RELU_RESHAPE_GEMM, "relufy-gelu-mlp-gemm", ["MatMul", "Constant", "Relu", "Reshape", "Gemm"]),
])
def test_activation_becomes_relu(check, source, relu, rule, after):
    result = check.run(source, "silu,relufy")
    assert result.last.modified and result.last.rewrites == {rule: 1}
    assert result.ops == after
    testing.assert_valid(result.model)
    (node,) = _stamped(result.model)
    assert node.op_type == "Relu" and node.metadata_props[SITE_KEY] == "a" and TARGET_KEY not in node.metadata_props
    feeds = check.feeds(result.original, {"N": 16})
    testing.assert_numerically_equal(check.proto(relu), result.model, feeds, rtol=1e-5, atol=1e-6)


def test_threshold_gives_fatrelu(check):
    result = check.run(SWIGLU, "silu,relufy(threshold=0.25)")
    assert result.ops == ["MatMul", "MatMul", "Relu", "Constant", "ActivationThreshold", "Mul", "MatMul"]
    testing.assert_valid(result.model)
    (node,) = _stamped(result.model)
    assert node.op_type == "ActivationThreshold" and TARGET_KEY not in node.metadata_props
    assert float(node.inputs[1].const_value.numpy()) == 0.25
    feeds = check.feeds(result.original, {"N": 16})
    x = feeds["x"]
    weights = {k: v.const_value.numpy() for k, v in ir.serde.deserialize_model(result.original).graph.initializers.items()}
    g = x @ weights["wg"]
    expected = (np.where(g > 0.25, g, 0) * (x @ weights["wu"])) @ weights["wd"]
    session = ort_backend.make_session(result.model, optimization="disable", threads=1)
    np.testing.assert_allclose(ort_backend.run(session, feeds)["y"], expected, rtol=1e-5, atol=1e-5)


def test_measure_sparsity_counts_the_relu_zeros(check):
    result = check.run(SWIGLU, "silu,relufy")
    feeds = check.feeds(result.original, {"N": 64})
    report = measure_sparsity(result.model, [feeds])
    (tensor,) = report.tensors
    g = feeds["x"] @ ir.serde.deserialize_model(result.original).graph.initializers["wg"].const_value.numpy()
    assert tensor.site == "a" and tensor.target is None and report.target_model_wide is None
    assert tensor.achieved == pytest.approx(float(np.mean(g <= 0)))
    assert tensor.weight == 2 * 8 * 16  # W_up rows and W_down columns


def test_no_activation_does_not_fire(check):
    result = check.run(NO_ACTIVATION, "silu,relufy")
    assert not result.last.modified and result.ops == ["MatMul", "MatMul"] and not result.last.declines


def test_gated_product_without_a_linear_layer_is_declined(check):
    check.declines(SWIGLU_OUT, "relufy", "feeds no linear layer with a constant weight: not a gated MLP")


def test_mlp_with_a_runtime_weight_is_declined(check):
    check.declines(GELU_RUNTIME_WEIGHT, "relufy", "is not a 2-D constant")


def test_tiny_llama_relufied(check):
    tiny_llama = pytest.importorskip("graphopt.models.tiny_llama")
    pytest.importorskip("torch")
    model = ir.serde.deserialize_model(tiny_llama.build())
    record = run_pipeline(model, "canonicalize,relufy(threshold=0.01)")[-1]
    assert record.rewrites == {"relufy-silu-gated-mlp": 2}
    testing.assert_valid(model)
    held_out = [tiny_llama.example_inputs(seed=100 + s, seq_len=16) for s in range(4)]
    report = measure_sparsity(model, held_out)
    assert len(report.tensors) == 2 and all(0.5 < t.achieved < 1 for t in report.tensors), report
    for level in ort_backend.OPTIMIZATION_LEVELS:
        session = ort_backend.make_session(model, optimization=level, threads=1)
        (logits,) = session.run(["logits"], held_out[0])
        assert np.isfinite(logits).all()
