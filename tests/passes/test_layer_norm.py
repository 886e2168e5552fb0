"""layer-norm: decomposed LayerNorm (either ReduceMean form) -> ONNX LayerNormalization (opset 17)."""

from __future__ import annotations

import pytest

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
