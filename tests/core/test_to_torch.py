"""``graphopt.to_torch``: ONNX graphs as torch.fx GraphModules that compute what ONNX Runtime does.

Reference models (original, after ``canonicalize``, after ``ivit``) against ONNX Runtime with graph
optimizations off, on seeded inputs: float graphs within float rounding, ``ivit`` graphs bit-exact
(their outputs are the integer region's, dequantized). Plus the module's conventions: keyword
inputs with Python-safe names, a tuple of outputs, trainable parameters, one clear error for an op
without a converter.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest

import graphopt
from bench import to_torch as measure
from graphopt import testing
from graphopt.errors import UnsupportedError
from graphopt.pipeline import run_pipeline

torch = pytest.importorskip("torch")


def _models():
    from graphopt.models import digits_vit, minilm, tiny_bert, tiny_llama  # noqa: PLC0415

    return {
        "digits-vit": (digits_vit.build, digits_vit.example_inputs),
        "tiny-bert": (tiny_bert.build, tiny_bert.example_inputs),
        "tiny-llama-prefill": (tiny_llama.build, tiny_llama.example_inputs),
        "minilm": (minilm.build, lambda seed: minilm.example_inputs(seed=seed, seq_len=16)),
    }


def _rewritten(name: str, stage: str):
    build, inputs = _models()[name]
    model = graphopt.load(build())
    if stage != "original":
        run_pipeline(model, stage, samples=[inputs(seed=s) for s in range(4)])
    return model, inputs(seed=101)


CASES = [
    pytest.param(name, stage, marks=[pytest.mark.slow] if name == "minilm" or stage == "ivit" and name != "digits-vit" else [])
    for name in ("digits-vit", "tiny-bert", "tiny-llama-prefill", "minilm")
    for stage in ("original", "canonicalize", "ivit")
]


@pytest.mark.parametrize(("name", "stage"), CASES)
def test_to_torch_computes_what_onnx_runtime_does(name, stage):
    torch.set_num_threads(1)
    model, feeds = _rewritten(name, stage)
    if stage == "ivit":  # every integer tensor of the region compared bit for bit, not only the outputs
        assert measure.expose_integer_tensors(model) > 20
    expected = testing.run_ort(model, feeds)
    with torch.no_grad():
        got = graphopt.to_torch(model)(**feeds)
    assert isinstance(got, tuple) and len(got) == len(expected)
    for e, g in zip(expected, got):
        g = g.numpy()
        assert g.dtype == e.dtype and g.shape == e.shape
        if stage == "ivit":
            np.testing.assert_array_equal(g, e)  # measured: all equal (184, 149, 234, 433 integer tensors)
        else:
            scale = max(float(np.abs(e).max()), 1.0)
            assert float(np.abs(g.astype(np.float64) - e).max()) <= 1e-5 * scale  # measured <= 2.5e-6


@pytest.mark.parametrize("pipeline", ["canonicalize,cats", "canonicalize,teal", "canonicalize,rsparse", "canonicalize,relufy"])
def test_activation_sparsity_passes_round_trip(pipeline):
    """Their ActivationThreshold nodes (and relufy's Relu) in a decoder; measured max abs <= 1.8e-7."""
    torch.set_num_threads(1)
    model, feeds = _rewritten("tiny-llama-prefill", pipeline)
    (expected,) = testing.run_ort(model, feeds)
    with torch.no_grad():
        (got,) = graphopt.to_torch(model)(**feeds)
    assert float(np.abs(got.numpy().astype(np.float64) - expected).max()) <= 1e-5 * max(float(np.abs(expected).max()), 1.0)


@pytest.mark.parametrize("stage", ["original", "canonicalize"])
def test_float_weights_are_parameters_that_receive_gradients(stage):
    model, feeds = _rewritten("digits-vit", stage)  # canonicalize: through DotProductAttention and Gelu
    module = graphopt.to_torch(model)
    parameters = dict(module.named_parameters())
    float_initializers = [v.name for v in model.graph.initializers.values() if v.dtype.is_floating_point()]
    assert len(parameters) == len(float_initializers) > 0
    assert set(module.parameter_names) == set(float_initializers)
    (logits,) = module(**feeds)
    logits.square().mean().backward()
    missing = [name for name, p in parameters.items() if p.grad is None]
    assert not missing and all(p.requires_grad for p in parameters.values())


def test_integer_initializers_are_buffers():
    model, _ = _rewritten("digits-vit", "ivit")
    module = graphopt.to_torch(model)
    integer = [name for name, b in module.named_buffers() if not b.is_floating_point()]
    assert integer and not any(not p.is_floating_point() for p in module.parameters())


def test_inputs_are_keywords_with_safe_names_and_outputs_a_tuple(mlp_proto):
    model = graphopt.load(mlp_proto)
    model.graph.inputs[0].name = "input.1"
    module = graphopt.to_torch(model)
    assert module.input_names == {"input.1": "input_1"} and module.output_names == ["y"]
    assert copy.deepcopy(module).input_names == module.input_names  # the maps survive a copy
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    (y,) = module(input_1=x)  # numpy or torch inputs; one output is still a tuple
    np.testing.assert_allclose(y.detach().numpy(), testing.run_ort(model, {"input.1": x})[0], rtol=1e-6)


def test_the_module_is_a_real_fx_graph(mlp_path):
    module = graphopt.to_torch(mlp_path)
    assert isinstance(module, torch.fx.GraphModule)
    calls = [n for n in module.graph.nodes if n.op == "call_function"]
    assert any(n.target is torch.matmul for n in calls) and "def forward(self, x)" in module.code
    x = torch.randn(3, 4)
    interpreted = torch.fx.Interpreter(module).run(x)  # node by node, no generated code
    torch.testing.assert_close(interpreted[0], module(x=x)[0])


def _one_node(text: str) -> onnx.ModelProto:
    return onnx.parser.parse_model(text)


def test_an_op_without_a_converter_is_named():
    proto = _one_node("""<ir_version: 8, opset_import: ["" : 17]>
g (float[3, 3] x) => (float y) { y = Det (x) }""")
    proto.graph.node[0].name = "the_det"
    with pytest.raises(UnsupportedError, match=r"Det \(node 'the_det'\) has no torch converter"):
        graphopt.to_torch(proto)


def test_an_output_the_converter_does_not_compute_is_refused_when_used():
    proto = _one_node("""<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 1, 4, 4] x) => (float[1, 1, 2, 2] y, int64[1, 1, 2, 2] i) { y, i = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (x) }""")
    with pytest.raises(UnsupportedError, match=r"MaxPool .*output 1 \('i'\)"):
        graphopt.to_torch(proto)


def test_an_attribute_the_converter_does_not_take_is_refused(mlp_proto):
    model = graphopt.load(mlp_proto)  # an onnx_ir.Model is taken as it is: no checker in the way
    matmul = next(node for node in model.graph if node.op_type == "MatMul")
    matmul.attributes["transposed"] = ir.AttrInt64("transposed", 1)
    with pytest.raises(UnsupportedError, match=r"MatMul .*\['transposed'\]"):
        graphopt.to_torch(model)


def test_an_ir_model_is_not_modified():
    model, _ = _rewritten("digits-vit", "original")
    before = ir.to_proto(model).SerializeToString()
    graphopt.to_torch(model)
    assert ir.to_proto(model).SerializeToString() == before


def test_compile_returns_the_rewritten_model_as_a_graph_module():
    """compile(module, example_inputs=..., passes=..., returns="torch"): the export pipeline's way back to training."""
    import graphopt  # noqa: PLC0415
    from graphopt.errors import UsageError  # noqa: PLC0415

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    x = torch.randn(3, 8)
    module = graphopt.compile(mlp, example_inputs=(x,), passes="canonicalize", returns="torch")
    assert isinstance(module, torch.fx.GraphModule) and module.meta["graphopt.report"].ok
    assert "Gelu" in module.meta["graphopt.report"].ops_after
    (y,) = module(**{next(iter(module.input_names.values())): x})  # ONNX input name -> its keyword
    torch.testing.assert_close(y, mlp(x).detach(), atol=1e-5, rtol=0)
    with pytest.raises(UsageError, match="returns='fx'"):
        graphopt.compile(mlp, example_inputs=(x,), passes="canonicalize", returns="fx")
