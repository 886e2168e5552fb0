"""cats: a calibrated ActivationThreshold on every MLP's gate activation (SiLU / GELU).

Structure (golden op lists, the commuted product, GeGLU, Gemm), the declines, numerics (sparsity 0
is the original model; on tiny-llama 0.5 is met within ±2 points on other samples), validity and
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


def mlp(body: str, weights: dict[str, tuple[int, int]], opset: int = 20) -> str:
    """A one-MLP graph with its activation ``a``: SiLU as exporters spell it, x·Sigmoid(x), which the
    ``silu`` pass (first in every pipeline here, as in ``canonicalize``) makes SigmoidLinearUnit."""
    inits = "float[N, 16] a, " + ", ".join(f"float[{a}, {b}] {name} = {_floats((a, b), i)}" for i, (name, (a, b)) in enumerate(weights.items()))
    return (f'<ir_version: 10, opset_import: ["" : {opset}]>\n'
            f"mlp (float[N, 8] x) => (float[N, 8] y) <{inits}> {{\n{body}\n}}")


GATED = {"wg": (8, 16), "wu": (8, 16), "wd": (16, 8)}
SWIGLU = mlp("g = MatMul(x, wg)\n s = Sigmoid(g)\n a = Mul(g, s)\n u = MatMul(x, wu)\n h = Mul(a, u)\n y = MatMul(h, wd)", GATED)
SWIGLU_COMMUTED = mlp("g = MatMul(x, wg)\n s = Sigmoid(g)\n a = Mul(g, s)\n u = MatMul(x, wu)\n h = Mul(u, a)\n y = MatMul(h, wd)", GATED)
GEGLU = mlp('g = MatMul(x, wg)\n a = Gelu <approximate = "tanh"> (g)\n u = MatMul(x, wu)\n h = Mul(a, u)\n y = MatMul(h, wd)', GATED)
PLAIN = {"w1": (8, 16), "w2": (16, 8)}
GELU_MLP = mlp("h = MatMul(x, w1)\n a = Gelu(h)\n y = MatMul(a, w2)", PLAIN)
GELU_GEMM = mlp("h = MatMul(x, w1)\n a = Gelu(h)\n y = Gemm <transB = 0> (a, w2, b)", PLAIN | {"b": (1, 8)})
GELU_RESHAPE_GEMM = mlp('h = MatMul(x, w1)\n a = Gelu <approximate = "tanh"> (h)\n two = Constant <value = int64[2] {-1, 16}> ()\n'
                        " f = Reshape(a, two)\n y = Gemm(f, w2)", PLAIN)  # GPT-2's Conv1D: flattened to 2-D
NO_ACTIVATION = mlp("h = MatMul(x, w1)\n y = MatMul(h, w2)", PLAIN)
SWIGLU_OUT = ('<ir_version: 10, opset_import: ["" : 20, "pkg.graphopt" : 1]>\n'
              "glu (float[N, 8] g, float[N, 8] u) => (float[N, 8] y) <float[N, 8] a> {\n a = pkg.graphopt.SigmoidLinearUnit(g)\n y = Mul(a, u)\n}")
GELU_RUNTIME_WEIGHT = ('<ir_version: 10, opset_import: ["" : 20]>\n'
                       "m (float[N, 8] x, float[8, 8] w) => (float[N, 8] y) {\n a = Gelu(x)\n y = MatMul(a, w)\n}")


def _thresholds(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if n.op_type == "ActivationThreshold" and n.domain == ops.DOMAIN]


@pytest.mark.parametrize(("source", "rule", "after"), [
    (SWIGLU, "cats-silu-gated-mlp",
     ["MatMul", "MatMul", "SigmoidLinearUnit", "Constant", "ActivationThreshold", "Mul", "MatMul"]),
    (SWIGLU_COMMUTED, "cats-silu-gated-mlp",
     ["MatMul", "MatMul", "SigmoidLinearUnit", "Constant", "ActivationThreshold", "Mul", "MatMul"]),
    (GEGLU, "cats-gelu-gated-mlp", ["MatMul", "MatMul", "Gelu", "Constant", "ActivationThreshold", "Mul", "MatMul"]),
    (GELU_MLP, "cats-gelu-mlp-matmul", ["MatMul", "Gelu", "Constant", "ActivationThreshold", "MatMul"]),
    (GELU_GEMM, "cats-gelu-mlp-gemm", ["MatMul", "Gelu", "Constant", "ActivationThreshold", "Gemm"]),
    (GELU_RESHAPE_GEMM, "cats-gelu-mlp-gemm", ["MatMul", "Constant", "Gelu", "Constant", "ActivationThreshold", "Reshape", "Gemm"]),
])
def test_gate_is_thresholded(check, source, rule, after):
    result = check.run(source, "silu,cats")
    assert result.last.modified and result.last.rewrites == {rule: 1}
    assert result.ops == after
    testing.assert_valid(result.model)
    (node,) = _thresholds(result.model)
    assert node.metadata_props[TARGET_KEY] == "0.5" and node.metadata_props[SITE_KEY] == "a"
    activation = node.inputs[0].producer()
    assert activation.op_type in ("SigmoidLinearUnit", "Gelu")
    assert node.inputs[1].const_value.numpy() > 0


def test_rebuilt_gelu_keeps_its_approximation(check):
    result = check.run(GEGLU, "silu,cats")
    (gelu,) = [n for n in result.model.graph if n.op_type == "Gelu"]
    assert gelu.attributes.get_string("approximate") == "tanh"


@pytest.mark.parametrize("source", [SWIGLU, SWIGLU_COMMUTED, GEGLU, GELU_MLP, GELU_GEMM, GELU_RESHAPE_GEMM])
def test_sparsity_zero_is_the_original_model(check, source):
    result = check.fires(source, "silu,cats(sparsity=0)", None, rtol=0, atol=0)
    assert all(float(n.inputs[1].const_value.numpy()) == 0.0 for n in _thresholds(result.model))


def test_threshold_is_the_calibrated_quantile(check):
    original = check.proto(SWIGLU)
    samples = [check.feeds(original, {"N": 64})]
    model = ir.serde.deserialize_model(original)
    run_pipeline(model, "silu,cats(sparsity=0.3)", samples=samples)
    (node,) = _thresholds(model)
    wg = ir.serde.deserialize_model(original).graph.initializers["wg"].const_value.numpy()
    g = samples[0]["x"] @ wg
    expected = np.quantile(np.abs(g / (1 + np.exp(-g))), 0.3)
    assert float(node.inputs[1].const_value.numpy()) == pytest.approx(expected, rel=1e-5)


def test_no_activation_does_not_fire(check):
    result = check.run(NO_ACTIVATION, "silu,cats")
    assert not result.last.modified and result.ops == ["MatMul", "MatMul"] and not result.last.declines


def test_gated_product_without_a_linear_layer_is_declined(check):
    check.declines(SWIGLU_OUT, "cats", "feeds no linear layer with a constant weight: not a gated MLP")


def test_mlp_with_a_runtime_weight_is_declined(check):
    check.declines(GELU_RUNTIME_WEIGHT, "cats", "is not a 2-D constant")


def test_activation_without_statistics_is_declined(check):
    original = check.proto(SWIGLU)
    model = ir.serde.deserialize_model(original)
    nan = {"x": np.full((2, 8), np.nan, np.float32)}  # the engine leaves non-finite values out: nothing left
    record = run_pipeline(model, "silu,cats", samples=[nan])[-1]
    assert not record.modified and any("no calibration statistics for a" in d for d in record.declines)


# --- tiny-llama: the SwiGLU decoder the technique was made for --------------------------------------


@pytest.fixture(scope="module")
def llama():
    tiny_llama = pytest.importorskip("graphopt.models.tiny_llama")
    pytest.importorskip("torch")
    proto = tiny_llama.build()
    calib = [tiny_llama.example_inputs(seed=s, seq_len=16) for s in range(SAMPLES)]
    held_out = [tiny_llama.example_inputs(seed=100 + s, seq_len=16) for s in range(SAMPLES)]
    return proto, calib, held_out


def _rewritten(proto, pipeline, samples) -> ir.Model:
    model = ir.serde.deserialize_model(proto)
    records = run_pipeline(model, pipeline, samples=samples)
    assert records[-1].modified, records[-1].declines
    return model


def test_tiny_llama_sparsity_zero_keeps_the_logits(llama):
    proto, calib, held_out = llama
    model = _rewritten(proto, "canonicalize,cats(sparsity=0)", calib)
    assert len(_thresholds(model)) == 2  # one per layer
    testing.assert_valid(model)
    testing.assert_numerically_equal(proto, model, held_out[0], rtol=1e-5, atol=1e-5)


def test_tiny_llama_half_sparsity_is_met_on_held_out_samples(llama):
    proto, calib, held_out = llama
    model = _rewritten(proto, "canonicalize,cats(sparsity=0.5)", calib)
    testing.assert_valid(model)
    report = measure_sparsity(model, held_out)
    assert len(report.tensors) == 2
    for tensor in report.tensors:
        assert tensor.target == 0.5 and abs(tensor.achieved - 0.5) <= 0.02, tensor
        assert tensor.weight == 2 * 64 * 128  # W_up rows and W_down columns
    for level in ort_backend.OPTIMIZATION_LEVELS:
        session = ort_backend.make_session(model, optimization=level, threads=1)
        (logits,) = session.run(["logits"], held_out[0])
        assert np.isfinite(logits).all()
