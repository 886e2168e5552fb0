"""float32-islands: on float16 models, the ops integer islands replace compute in float32 between Casts.

Structure (golden op lists), numerics against the float16 original through ONNX Runtime
(optimizations off, seeded inputs; float16 rounding), onnx.checker full check, the declines with
their reasons; then a float16 MatMul -> LayerNorm -> GELU -> MatMul chain made integer-only by the
passes that follow it in ``ivit``.
"""

from __future__ import annotations

import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import pytest

from graphopt.integer_region import verify

W = "{0.5, -1.0, 0.25, 2.0, -0.75, 1.5}"  # [3, 2]
HEADER = '<ir_version: 10, opset_import: ["" : 23]>\n'


def half(text: str, keep: tuple[str, ...] = ()) -> onnx.ModelProto:
    """The model in ONNX text (float32; the parser takes no float16 literals) with every float32
    initializer, input and output but ``keep`` made float16, as a float16 converter leaves it."""
    proto = onnx.parser.parse_model(text)
    graph = proto.graph
    for i, tensor in enumerate(graph.initializer):
        graph.initializer[i].CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor).astype("float16"), tensor.name))
    for value in list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and value.name not in keep:
            value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    return proto


def model(body: str, x: str = "float[2, 3]", y: str = "float[2, 2]", inputs: str = "") -> onnx.ModelProto:
    return half(f"{HEADER}g ({x} x{inputs}) => ({y} y) <float[3, 2] w = {W}, float[2] g = {{1.0, -2.0}}> {{\n{body}\n}}")


def _constant_dtype(result, op_type):
    node = next(n for n in result.model.graph if n.op_type == op_type)
    return [v.dtype for v in node.inputs], node


def test_a_float16_matmul_computes_in_float32_between_casts(check):
    result = check.fires(model("y = MatMul(x, w)"), "float32-islands", ["Cast", "Constant", "MatMul", "Cast"],
                         rtol=1e-3, atol=1e-3)
    dtypes, _ = _constant_dtype(result, "MatMul")
    assert dtypes == [ir.DataType.FLOAT] * 2
    assert result.last.rewrites == {"float32-matmul": 1}


def test_layer_norm_and_gelu_widen_with_their_attributes(check):
    body = "n = LayerNormalization <axis = -1, epsilon = 1e-3> (x, g)\n y = Gelu <approximate = \"tanh\"> (n)"
    text = model(body, x="float[2, 2]")
    result = check.fires(text, "float32-islands", None, rtol=2e-3, atol=2e-3)
    norm = next(n for n in result.model.graph if n.op_type == "LayerNormalization")
    assert norm.attributes.get_float("epsilon") == pytest.approx(1e-3)
    assert next(n for n in result.model.graph if n.op_type == "Gelu").attributes.get_string("approximate") == "tanh"
    assert result.last.rewrites == {"float32-layernormalization": 1, "float32-gelu": 1}


def test_a_product_of_two_computed_values_widens(check):
    text = model("y = Mul(x, z)", x="float[2, 2]", inputs=", float[2, 2] z")
    check.fires(text, "float32-islands", ["Cast", "Cast", "Mul", "Cast"], rtol=1e-3, atol=1e-3)


def test_declines_a_mul_by_a_constant(check):
    text = model("y = Mul(x, g)", x="float[2, 2]")
    check.declines(text, "float32-islands", "a Mul by a constant: integer-chain folds the factor")


def test_a_layer_norm_whose_mean_is_read_is_left_alone(check):
    # the pattern names output 0 only; onnxscript does not match a node whose other outputs are read
    text = half(f"{HEADER}g (float[2, 2] x) => (float[2, 2] y, float[2, 1] m) <float[2] g = {{1.0, -2.0}}> {{\n"
                "y, m = LayerNormalization (x, g)\n}", keep=("m",))
    result = check.run(text, "float32-islands")
    assert not result.last.modified and result.ops == ["LayerNormalization"]


def test_the_nodes_it_widened_are_not_declines(check):
    result = check.fires(model("y = MatMul(x, w)"), "float32-islands", None, rtol=1e-3, atol=1e-3)
    assert result.last.declines == []


def test_a_float32_model_is_left_alone_without_declines(check):
    text = f"{HEADER}g (float[2, 3] x) => (float[2, 2] y) <float[3, 2] w = {W}> {{\ny = MatMul(x, w)\n}}"
    result = check.run(text, "float32-islands")
    assert not result.last.modified and result.last.declines == []


def test_ivit_makes_a_float16_chain_integer_only(check):
    body = ("h = MatMul(x, w)\n n = LayerNormalization <axis = -1> (h, g)\n a = Gelu(n)\n"
            " y = MatMul(a, v)")
    text = half(f"{HEADER}g (float[4, 3] x) => (float[4, 2] y) <float[3, 2] w = {W}, float[2] g = {{1.0, -2.0}}, "
                f"float[2, 2] v = {{1.0, 0.5, -0.25, 2.0}}> {{\n{body}\n}}")
    result = check.run(text, "float32-islands,int8-linear,shiftgelu,ilayernorm,integer-chain,cleanup")
    assert result.records[0].modified
    assert result.records[-2].rewrites, result.records[-2].declines  # integer-chain joined the islands
    verdict = verify(result.model)
    assert verdict.ok, [str(op) for op in verdict.float_ops]
