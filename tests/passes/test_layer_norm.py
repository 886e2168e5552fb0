"""layer-norm: decomposed LayerNorm -> ONNX LayerNormalization (opset 17).

Both ReduceMean forms and both variance forms (E[(x - m)²], E[x²] - m²), and ONNX's own function
expansion of LayerNormalization (the ``*_expanded`` backend cases) with its Mean / InvStdDev.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_ir as ir
import pytest

from graphopt.pipeline import run_pipeline

W8 = "{1.0, 0.5, -1.5, 2.0, 0.25, -0.75, 1.25, 3.0}"
B8 = "{0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8}"
CONSTANTS = f"float eps = {{1e-5}}, float two = {{2.0}}, float[8] w = {W8}, float[8] b = {B8}, int64[1] last = {{-1}}"


def model(body: str, opset: int = 23, constants: str = "", x: str = "float[2, 3, 8]") -> str:
    return (
        f'<ir_version: 10, opset_import: ["" : {opset}, "com.microsoft" : 1]>\n'
        f"g ({x} x) => ({x} y) <{CONSTANTS}{', ' + constants if constants else ''}> {{\n{body}\n}}"
    )


# torch's legacy exporter at opset < 18: ReduceMean axes as attribute, Pow, Div, Mul scale, Add bias
LEGACY = """m = ReduceMean <axes = [-1]> (x)
 d = Sub(x, m)
 p = Pow(d, two)
 v = ReduceMean <axes = [-1]> (p)
 ve = Add(v, eps)
 s = Sqrt(ve)
 n = Div(d, s)
 ns = Mul(n, w)
 y = Add(ns, b)"""


def axes_input(body: str, axes: str = "last") -> str:
    """The same graph at opset >= 18: ReduceMean's axes are an input."""
    return body.replace("ReduceMean <axes = [-1]> (x)", f"ReduceMean(x, {axes})").replace(
        "ReduceMean <axes = [-1]> (p)", f"ReduceMean(p, {axes})"
    )


def test_legacy_axes_attribute_form_at_opset_17(check):
    result = check.fires(model(LEGACY, opset=17), "layer-norm", ["LayerNormalization"])
    node = result.model.graph.node(0)
    assert [v.name for v in node.inputs] == ["x", "w", "b"]
    assert node.attributes.get_int("axis") == -1
    assert node.attributes.get_float("epsilon") == pytest.approx(1e-5)
    assert result.last.rewrites == {"layer-norm": 1, "layer-norm-bias": 1}


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("axes-input", axes_input(LEGACY)),
        ("mul-square-reciprocal", axes_input(LEGACY).replace("p = Pow(d, two)", "p = Mul(d, d)").replace("n = Div(d, s)", "r = Reciprocal(s)\n n = Mul(d, r)")),
        ("operands-swapped", axes_input(LEGACY).replace("Add(v, eps)", "Add(eps, v)").replace("Mul(n, w)", "Mul(w, n)").replace("Add(ns, b)", "Add(b, ns)")),
        # hand-written torch LayerNorm: w * (x - u) / sqrt(var + eps) + b (scale before the division)
        ("scale-before-div", axes_input(LEGACY).replace("n = Div(d, s)\n ns = Mul(n, w)", "wd = Mul(w, d)\n ns = Div(wd, s)")),
        ("positive-axes", axes_input(LEGACY, "two_ax")),
    ],
)
def test_spellings_become_one_layer_normalization(check, name, body):
    result = check.fires(model(body, constants="int64[1] two_ax = {2}"), "layer-norm", ["LayerNormalization"])
    assert result.model.graph.node(0).attributes.get_int("axis") == -1


def test_without_bias_keeps_two_inputs(check):
    body = axes_input(LEGACY).replace("ns = Mul(n, w)\n y = Add(ns, b)", "y = Mul(n, w)")
    result = check.fires(model(body), "layer-norm", ["LayerNormalization"])
    assert len(result.model.graph.node(0).inputs) == 2


def test_without_scale_gets_a_ones_scale(check):
    body = axes_input(LEGACY).replace("ns = Mul(n, w)\n y = Add(ns, b)", "y = Add(n, b)")
    result = check.fires(model(body), "layer-norm", ["Constant", "LayerNormalization"])
    assert result.last.rewrites == {"layer-norm-no-scale": 1, "layer-norm-bias": 1}


def test_without_epsilon_fuses_with_epsilon_zero(check):
    body = axes_input(LEGACY).replace("ve = Add(v, eps)\n s = Sqrt(ve)", "s = Sqrt(v)")
    result = check.fires(model(body), "layer-norm", ["LayerNormalization"])
    assert result.model.graph.node(0).attributes.get_float("epsilon") == 0.0


def test_two_trailing_axes_give_axis_minus_two(check):
    w24 = ", ".join(str(i / 10) for i in range(24))
    body = axes_input(LEGACY, "tail2").replace("Mul(n, w)", "Mul(n, w2)").replace("Add(ns, b)", "Add(ns, w2)")
    result = check.fires(model(body, constants=f"int64[2] tail2 = {{-2, -1}}, float[3, 8] w2 = {{{w24}}}"), "layer-norm", ["LayerNormalization"])
    assert result.model.graph.node(0).attributes.get_int("axis") == -2


def test_scale_with_leading_ones_is_reshaped(check):
    body = axes_input(LEGACY).replace("Mul(n, w)", "Mul(n, w3)")
    result = check.fires(model(body, constants=f"float[1, 1, 8] w3 = {W8}"), "layer-norm", ["Constant", "Reshape", "LayerNormalization"])
    assert result.last.rewrites == {"layer-norm": 1, "layer-norm-bias": 1}


def test_symbolic_batch_and_double(check):
    text = model(axes_input(LEGACY).replace("float", "double"), x="double[N, 8]").replace("float", "double")
    check.fires(text, "layer-norm", ["LayerNormalization"], feeds=check.feeds(check.proto(text), {"N": 5}))


def test_existing_layer_normalization_absorbs_a_following_bias(check):
    body = "n = LayerNormalization <epsilon = 1e-6> (x, w)\n y = Add(b, n)"
    result = check.fires(model(body), "layer-norm", ["LayerNormalization"])
    assert [v.name for v in result.model.graph.node(0).inputs] == ["x", "w", "b"]


def test_contrib_skip_layer_normalization(check):
    text = model("y = com.microsoft.SkipLayerNormalization <epsilon = 1e-5> (x, x, w, b)")
    check.fires(text, "layer-norm", ["Add", "LayerNormalization"])


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (axes_input(LEGACY, "mid"), "reduced axes [-2] are not the last 1 axis(es)"),
        (axes_input(LEGACY).replace("ReduceMean(p, last)", "ReduceMean(p, tail2)"), "the mean and the variance reduce different axes (-1 vs -2)"),
        (axes_input(LEGACY).replace("Add(v, eps)", "Add(v, v_eps)"), "epsilon is not a constant scalar"),
        (axes_input(LEGACY).replace("Pow(d, two)", "Pow(d, three)"), "the exponent in Pow(x - mean, 2) is 3"),
    ],
)
def test_declined_with_the_reason(check, body, reason):
    extra = "int64[1] mid = {1}, int64[2] tail2 = {-2, -1}, float three = {3.0}, float[3, 8] w38 = " + "{" + ", ".join(["1.0"] * 24) + "}"
    text = model(body, constants=extra)
    if "v_eps" in body:
        text = text.replace("(float[2, 3, 8] x)", "(float[2, 3, 8] x, float v_eps)")
    check.declines(text, "layer-norm", reason)


def test_old_opset_is_declined_and_says_run_opset_upgrade(check):
    check.declines(model(LEGACY, opset=16), "layer-norm", "LayerNormalization needs opset >= 17, model has 16; run opset-upgrade")


def test_scale_not_covering_the_normalized_axes_stays_a_mul(check):
    body = axes_input(LEGACY).replace("Mul(n, w)", "Mul(n, w38)")
    w38 = "float[3, 8] w38 = {" + ", ".join(["1.5"] * 24) + "}"
    result = check.fires(model(body, constants=w38), "layer-norm", ["Constant", "LayerNormalization", "Mul", "Add"])
    assert result.last.rewrites == {"layer-norm-no-scale": 1}
    # with a symbolic normalized dim no ones scale can be built either: both rules say why
    text = model(body, constants=w38.replace("float[3, 8] w38", "float[3, 1] w38").replace(", 1.5" * 21, ""), x="float[2, 3, D]")
    check.declines(text, "layer-norm", "scale shape [3, 1] does not cover exactly the last 1 axis(es)")
    check.declines(text, "layer-norm", "cannot build a ones scale")


def test_no_scale_with_symbolic_normalized_dim_is_declined(check):
    body = axes_input(LEGACY).replace("ns = Mul(n, w)\n y = Add(ns, b)", "y = Identity(n)")
    check.declines(model(body, x="float[2, D]"), "layer-norm", "cannot build a ones scale")


def _layer_norms():
    """nn.LayerNorm and a hand-written one (scale applied before the division), on two inputs."""
    import torch

    class HandLayerNorm(torch.nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.w, self.b = torch.nn.Parameter(torch.randn(dim)), torch.nn.Parameter(torch.randn(dim))

        def forward(self, x):
            u = x.mean(-1, keepdim=True)
            var = (x - u).pow(2).mean(-1, keepdim=True)
            return self.w * (x - u) / torch.sqrt(var + 1e-5) + self.b

    class Norms(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ln, self.hand = torch.nn.LayerNorm(8), HandLayerNorm(8)
            torch.nn.init.normal_(self.ln.weight)
            torch.nn.init.normal_(self.ln.bias)

        def forward(self, a, b):
            return self.ln(a), self.hand(b)

    return Norms()


@pytest.mark.parametrize(("exporter", "opset", "fused"), [("dynamo", 18, 1), ("legacy", 14, 2), ("legacy", 17, 1)])
def test_real_exports_fuse_after_cleanup_and_opset_upgrade(check, export_torch, exporter, opset, fused):
    torch = pytest.importorskip("torch")
    proto = export_torch(_layer_norms(), (torch.randn(2, 3, 8), torch.randn(2, 3, 8)), exporter, opset)
    result = check.fires(proto, "cleanup,opset-upgrade,layer-norm", None, atol=1e-5)
    # nn.LayerNorm is exported as LayerNormalization from opset 17; leftovers are axes Constants
    assert [op for op in result.ops if op != "Constant"] == ["LayerNormalization", "LayerNormalization"]
    assert sum(result.last.rewrites.values()) == 2 * fused  # each fusion + its bias


def test_canonical_layer_normalization_is_left_alone(check):
    result = check.run(model("y = LayerNormalization <epsilon = 1e-6> (x, w, b)"), "layer-norm")
    assert not result.last.modified and result.ops == ["LayerNormalization"] and result.last.declines == []


# E[x²] - E[x]²: the variance from the raw second moment (as in ONNX's own LayerNormalization body)
MOMENTS = """m = ReduceMean(x, last)
 sq = Mul(x, x)
 msq = ReduceMean(sq, last)
 m2 = Mul(m, m)
 v = Sub(msq, m2)
 ve = Add(v, eps)
 s = Sqrt(ve)
 d = Sub(x, m)
 n = Div(d, s)
 ns = Mul(n, w)
 y = Add(ns, b)"""


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("mul-squares", MOMENTS),
        ("pow-squares", MOMENTS.replace("Mul(x, x)", "Pow(x, two)").replace("Mul(m, m)", "Pow(m, two)")),
        ("reciprocal-eps-first", MOMENTS.replace("Add(v, eps)", "Add(eps, v)").replace("n = Div(d, s)", "r = Reciprocal(s)\n n = Mul(d, r)")),
    ],
)
def test_mean_of_squares_variance_becomes_one_layer_normalization(check, name, body):
    result = check.fires(model(body), "layer-norm", ["LayerNormalization"], atol=1e-5)
    node = result.model.graph.node(0)
    assert [v.name for v in node.inputs] == ["x", "w", "b"]
    assert node.attributes.get_int("axis") == -1
    assert result.last.rewrites == {"layer-norm": 1, "layer-norm-bias": 1}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (MOMENTS.replace("ReduceMean(sq, last)", "ReduceMean(sq, tail2)"), "the mean and the mean of x² reduce different axes (-1 vs -2)"),
        (MOMENTS.replace("Mul(m, m)", "Pow(m, three)"), "the exponent in Pow(mean, 2) is 3"),
        (MOMENTS.replace("Mul(x, x)", "Pow(x, three)"), "the exponent in Pow(x, 2) is 3"),
    ],
)
def test_mean_of_squares_pieces_that_do_not_fit_are_declined(check, body, reason):
    check.declines(model(body, constants="int64[2] tail2 = {-2, -1}, float three = {3.0}"), "layer-norm", reason)


def expansion(x_shape: list, axis: int, *, outputs=("Y", "Mean", "InvStdDev"), bias: bool = True,
              dtype: int = onnx.TensorProto.FLOAT, stash_type: int = 1, epsilon: float = 1e-5, opset: int = 18):
    """ONNX's function expansion of one LayerNormalization node, built as the *_expanded backend cases are."""
    from onnx.backend.test.case.node import function_testcase_helper  # noqa: PLC0415

    rank = len(x_shape)
    stats = list(x_shape[: axis % rank]) + [1] * (rank - axis % rank)
    names = ["X", "W", "B"][: 3 if bias else 2]
    node = onnx.helper.make_node("LayerNormalization", names, list(outputs), axis=axis, epsilon=epsilon, stash_type=stash_type)
    types = [onnx.helper.make_tensor_type_proto(dtype, shape) for shape in (x_shape, x_shape[axis:], x_shape[axis:])]
    expansions, _ = function_testcase_helper(node, types[: len(names)], "t")
    nodes = next(nodes for nodes, opsets in expansions if opsets[0].version == opset)
    inputs = [onnx.helper.make_value_info(name, type_) for name, type_ in zip(names, types)]
    results = [onnx.helper.make_tensor_value_info(o, dtype if o == "Y" else stash_type, x_shape if o == "Y" else stats)
               for o in outputs]
    graph = onnx.helper.make_graph(nodes, "expanded", inputs, results)
    return onnx.helper.make_model(graph, ir_version=10, opset_imports=[onnx.helper.make_opsetid("", opset)])


def cleaned(proto):
    """The proto after cleanup,opset-upgrade: what layer-norm sees in canonicalize."""
    model = ir.serde.deserialize_model(proto)
    run_pipeline(model, "cleanup,opset-upgrade")
    return ir.to_proto(model)


ALL_OUTPUTS = {"layer-norm-expansion": 1, "layer-norm-inv-std-output": 1, "layer-norm-mean-output": 1}


@pytest.mark.parametrize(
    ("x_shape", "axis", "opset"),
    [([2, 3, 4, 5], 0, 17), ([2, 3, 4, 5], -3, 18), ([2, 3, 5], 2, 18), ([2, 3, 5], -1, 17), ([3, 4], 1, 18), ([3, 4], 0, 17)],
)
def test_onnx_expansion_becomes_layer_normalization_with_its_statistics(check, x_shape, axis, opset):
    result = check.fires(expansion(x_shape, axis, opset=opset), "cleanup,opset-upgrade,layer-norm", ["LayerNormalization"])
    node = result.model.graph.node(0)
    assert [v.name for v in node.inputs] == ["X", "W", "B"]
    assert [v.name for v in node.outputs] == ["Y", "Mean", "InvStdDev"]
    assert node.attributes.get_int("axis") == axis % len(x_shape) - len(x_shape)
    assert node.attributes.get_float("epsilon") == pytest.approx(1e-5)
    assert result.last.rewrites == ALL_OUTPUTS and result.last.declines == []


def test_onnx_expansion_with_symbolic_batch(check):
    # Y's Reshape target is Shape(X); cleanup writes it, and ReducedShape, with -1 for N
    result = check.fires(expansion(["N", 3, 5], -1), "cleanup,opset-upgrade,layer-norm", ["LayerNormalization"])
    assert result.last.rewrites == ALL_OUTPUTS
    # without declared statistic shapes ReducedShape stays computed: the statistics are reshaped to it
    proto = expansion(["N", 3, 5], -1)
    for output in proto.graph.output[1:]:
        output.type.tensor_type.ClearField("shape")
    result = check.fires(proto, "cleanup,opset-upgrade,layer-norm", None)
    assert [op for op in result.ops if op not in ("Shape", "Slice", "ConstantOfShape", "Concat")] == [
        "LayerNormalization", "Reshape", "Reshape"]
    assert result.last.rewrites == ALL_OUTPUTS


def test_onnx_expansion_of_y_alone_without_bias(check):
    result = check.fires(expansion(["N", 3, 5], 1, outputs=("Y",), bias=False), "cleanup,opset-upgrade,layer-norm",
                         ["LayerNormalization"])
    node = result.model.graph.node(0)
    assert ([v.name for v in node.inputs], len(node.outputs)) == (["X", "W"], 1)
    assert node.attributes.get_int("axis") == -2
    assert result.last.rewrites == {"layer-norm-expansion": 1}


def test_onnx_expansion_of_double_keeps_the_float_stash(check):
    # stash_type=1 on a double input: the body Casts to float and back, the Mean is float
    proto = expansion([2, 3, 5], 1, dtype=onnx.TensorProto.DOUBLE)
    result = check.fires(proto, "cleanup,opset-upgrade,layer-norm", ["LayerNormalization"])
    assert result.model.graph.node(0).attributes.get_int("stash_type") == 1


def test_onnx_expansion_with_the_deviation_used_elsewhere_is_declined(check):
    proto = cleaned(expansion([2, 3, 5], 1))
    deviation = next(v for n in proto.graph.node for v in n.output if v.endswith("Deviation"))
    proto.graph.output.append(onnx.helper.make_value_info(deviation, onnx.TypeProto()))
    check.declines(proto, "layer-norm", f"{deviation} is also used outside the LayerNorm")


def test_onnx_expansion_reshaped_to_another_shape_is_declined(check):
    proto = cleaned(expansion([2, 3, 5], 1))
    reshape = next(n for n in proto.graph.node if n.op_type == "Reshape" and n.output[0] == "Y")
    target = onnx.numpy_helper.from_array(np.array([2, 15], dtype=np.int64), "other")
    proto.graph.initializer.append(target)
    reshape.input[1] = "other"
    proto.graph.output[0].type.tensor_type.shape.Clear()
    check.declines(proto, "layer-norm", "the result is reshaped to other, not to the shape of X")


def test_onnx_expansion_statistic_used_before_the_fused_node_stays(check):
    # a node reading Mean (2-D: Mean2D itself) ahead of Y cannot read the LayerNormalization put at Y
    proto = cleaned(expansion([3, 4], 1))
    index = next(i for i, n in enumerate(proto.graph.node) if n.output[0] == "Mean")
    proto.graph.node.insert(index + 1, onnx.helper.make_node("Neg", ["Mean"], ["early"]))
    proto.graph.output.append(onnx.helper.make_tensor_value_info("early", onnx.TensorProto.FLOAT, [3, 1]))
    result = check.fires(proto, "layer-norm", None)
    assert [op for op in result.ops if op != "Constant"] == ["Flatten", "ReduceMean", "Neg", "LayerNormalization"]
    assert result.last.rewrites == {"layer-norm-expansion": 1, "layer-norm-inv-std-output": 1}
    reduce = proto.graph.node[index].name
    assert result.last.declines == [f"layer-norm-mean-output at {reduce}: Mean is used before the fused LayerNormalization"]


@pytest.mark.slow
def test_conformance_layer_normalization_cases_all_canonicalize():
    from graphopt import conformance  # noqa: PLC0415

    summary = conformance.summarize(conformance.run_suite("canonicalize", "test_layer_normalization", workers=1))
    assert summary["fail"] == 0 and summary["expanded_not_canonicalized"] == [], summary
