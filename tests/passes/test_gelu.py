"""gelu: every exporter spelling of GELU -> ONNX Gelu (opset 20)."""

from __future__ import annotations

import math

import pytest

HEADER = '<ir_version: 10, opset_import: ["" : {opset}, "com.microsoft" : 1]>'
CONSTANTS = (
    "<float half = {0.5}, float one = {1.0}, float sqrt2 = {1.4142135}, float inv_sqrt2 = {0.70710677},"
    " float k = {0.7978846}, float c = {0.044715}, float three = {3.0}>"
)


def model(body: str, opset: int = 20, constants: str = CONSTANTS, x: str = "float[2, 3, 8]") -> str:
    return f"{HEADER.format(opset=opset)}\ng ({x} x) => ({x} y) {constants} {{\n{body}\n}}"


ERF_LEGACY = "d = Div(x, sqrt2)\n e = Erf(d)\n a = Add(e, one)\n m = Mul(x, a)\n y = Mul(m, half)"
TANH_LEGACY = """xx = Mul(x, x)
 x3 = Mul(x, xx)
 p = Mul(c, x3)
 s = Add(x, p)
 u = Mul(k, s)
 t = Tanh(u)
 a = Add(one, t)
 m = Mul(x, a)
 y = Mul(half, m)"""

SPELLINGS = {
    # legacy exporter: ((x * (1 + erf(x / sqrt2))) * 0.5
    "erf-legacy": (ERF_LEGACY, "none"),
    # dynamo exporter: x * (0.5 * (erf(x / sqrt2) + 1))
    "erf-dynamo": ("d = Div(x, sqrt2)\n e = Erf(d)\n a = Add(e, one)\n h = Mul(half, a)\n y = Mul(x, h)", "none"),
    # (0.5 * x) * (1 + erf(0.7071 * x)), constants first
    "erf-mul-half-first": ("d = Mul(inv_sqrt2, x)\n e = Erf(d)\n a = Add(one, e)\n xh = Mul(half, x)\n y = Mul(a, xh)", "none"),
    # 0.5 * ((1 + erf(x / sqrt2)) * x): every operand order flipped
    "erf-all-swapped": ("d = Div(x, sqrt2)\n e = Erf(d)\n a = Add(one, e)\n m = Mul(a, x)\n y = Mul(half, m)", "none"),
    # (x * 0.5) * (erf(x * 0.7071) + 1)
    "erf-mul-x-first": ("d = Mul(x, inv_sqrt2)\n e = Erf(d)\n a = Add(e, one)\n xh = Mul(x, half)\n y = Mul(xh, a)", "none"),
    # legacy tanh: x*x*x, constants first, 0.5 last
    "tanh-legacy": (TANH_LEGACY, "tanh"),
    # dynamo tanh: Pow(x, 3), x * (0.5 * (tanh(...) + 1))
    "tanh-dynamo": (
        "p3 = Pow(x, three)\n p = Mul(c, p3)\n s = Add(x, p)\n u = Mul(k, s)\n t = Tanh(u)\n a = Add(t, one)\n h = Mul(half, a)\n y = Mul(x, h)",
        "tanh",
    ),
    # Hugging Face NewGELU: (x * 0.5) * (1 + tanh(k * (x + c * x^3))), (x*x)*x
    "tanh-newgelu": (
        "xh = Mul(x, half)\n xx = Mul(x, x)\n x3 = Mul(xx, x)\n p = Mul(x3, c)\n s = Add(p, x)\n u = Mul(s, k)\n t = Tanh(u)\n a = Add(one, t)\n y = Mul(xh, a)",
        "tanh",
    ),
}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_arithmetic_spellings_become_one_gelu(check, spelling):
    body, approximate = SPELLINGS[spelling]
    result = check.fires(model(body), "gelu", ["Gelu"])
    node = result.model.graph.node(0)
    assert node.attributes.get_string("approximate", "none") == approximate
    assert result.last.rewrites == {f"gelu-{'erf' if approximate == 'none' else 'tanh'}": 1}


@pytest.mark.parametrize(
    ("body", "approximate", "expected"),
    [
        ('y = com.microsoft.Gelu(x)', "none", ["Gelu"]),
        ('y = com.microsoft.FastGelu(x)', "tanh", ["Gelu"]),
        ('y = com.microsoft.FastGelu(x, b)', "tanh", ["Add", "Gelu"]),
        ('y = com.microsoft.BiasGelu(x, b)', "none", ["Add", "Gelu"]),
    ],
)
def test_contrib_ops_become_onnx_gelu(check, body, approximate, expected):
    bias = "<float[8] b = {0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8}>"
    result = check.fires(model(body, constants=bias), "gelu", expected)
    assert result.model.graph.node(len(expected) - 1).attributes.get_string("approximate", "none") == approximate
    assert result.last.rewrites == {"gelu-contrib": 1}


def test_two_gelus_in_a_row_with_a_symbolic_batch(check):
    body = """d = Div(x, sqrt2)
 e = Erf(d)
 a = Add(e, one)
 m = Mul(x, a)
 g = Mul(m, half)
 p3 = Pow(g, three)
 p = Mul(c, p3)
 s = Add(g, p)
 u = Mul(k, s)
 t = Tanh(u)
 a2 = Add(t, one)
 h = Mul(half, a2)
 y = Mul(g, h)"""
    text = model(body, x="float[N, 8]")
    result = check.fires(text, "gelu", ["Gelu", "Gelu"], feeds=check.feeds(check.proto(text), {"N": 5}))
    assert result.last.rewrites == {"gelu-erf": 1, "gelu-tanh": 1}


@pytest.mark.parametrize(
    ("body", "constants", "reason"),
    [
        (ERF_LEGACY, CONSTANTS.replace("1.4142135", "1.5"), "the divisor of x in Erf is 1.5, expected 1.4142136"),
        (ERF_LEGACY, CONSTANTS.replace("half = {0.5}", "half = {0.25}"), "the 0.5 factor is 0.25"),
        (TANH_LEGACY, CONSTANTS.replace("0.044715", "0.05"), "the x^3 coefficient is 0.05"),
        (ERF_LEGACY, CONSTANTS.replace("float half = {0.5}", "float[8] half = {0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5}"), "the 0.5 factor is not a constant scalar"),
        (ERF_LEGACY, CONSTANTS.replace("float half = {0.5}", "float[1, 1, 1, 1] half = {0.5}"), "broadcasts the input to a higher rank"),
    ],
)
def test_off_constants_are_declined_with_the_reason(check, body, constants, reason):
    check.declines(model(body, constants=constants), "gelu", reason)


def test_old_opset_is_declined_and_says_run_opset_upgrade(check):
    check.declines(model(ERF_LEGACY, opset=18), "gelu", "Gelu needs opset >= 20, model has 18; run opset-upgrade")


def test_constant_tolerance_is_an_option(check):
    rounded = model(ERF_LEGACY, constants=CONSTANTS.replace("1.4142135", "1.414"))
    check.declines(rounded, "gelu", "the divisor of x in Erf is 1.414")
    check.fires(rounded, "gelu(rtol=0.001)", ["Gelu"], atol=1e-3)  # exact GELU vs the rounded constant


def test_erf_without_the_one_plus_is_left_alone(check):
    # x * Erf(x / sqrt2) without the "1 +": not GELU, the pattern does not match at all
    result = check.run(model("d = Div(x, sqrt2)\n e = Erf(d)\n m = Mul(x, e)\n y = Mul(m, half)"), "gelu")
    assert not result.last.modified and result.ops == ["Div", "Erf", "Mul", "Mul"]


def _gelus():
    """nn.GELU(), nn.GELU("tanh") and Hugging Face's NewGELU (tanh with torch.pow) on three inputs.

    (On one shared input, cleanup's CSE would merge the two Pow(x, 3) and neither tanh GELU could
    be fused: a rule only removes intermediates that nothing else reads.)
    """
    import torch

    class Gelus(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.erf, self.tanh = torch.nn.GELU(), torch.nn.GELU(approximate="tanh")

        def forward(self, a, b, x):
            new = 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
            return self.erf(a), self.tanh(b), new

    return Gelus()


@pytest.mark.parametrize(("exporter", "opset"), [("dynamo", 18), ("legacy", 14), ("legacy", 17)])
def test_real_exports_fuse_after_cleanup_and_opset_upgrade(check, export_torch, exporter, opset):
    torch = pytest.importorskip("torch")
    proto = export_torch(_gelus(), tuple(torch.randn(2, 3, 8) for _ in range(3)), exporter, opset)
    result = check.fires(proto, "cleanup,opset-upgrade,gelu", ["Gelu", "Gelu", "Gelu"])
    assert result.last.rewrites == {"gelu-erf": 1, "gelu-tanh": 2}
    modes = [out.producer().attributes.get_string("approximate", "none") for out in result.model.graph.outputs]
    assert modes == ["none", "tanh", "tanh"]


def test_canonical_gelu_is_left_alone(check):
    result = check.run(model('y = Gelu <approximate = "tanh"> (x)'), "gelu")
    assert not result.last.modified and result.ops == ["Gelu"] and result.last.declines == []


def _as_float16(text: str):
    import numpy as np
    import onnx
    import onnx.numpy_helper
    import onnx.parser

    proto = onnx.parser.parse_model(text)
    for i, tensor in enumerate(proto.graph.initializer):
        proto.graph.initializer[i].CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor).astype(np.float16), tensor.name))
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    return proto


def test_float16_constants_are_compared_at_float16_precision(check):
    """√2 stored as float16 is 1.4140625 (relative error 1.1e-4, above the 1e-4 default): the
    tolerance follows the constant's dtype, so a float16 export's Erf-GELU still fuses."""
    check.fires(_as_float16(model(ERF_LEGACY)), "gelu", ["Gelu"], rtol=2e-3, atol=2e-3)
    off = _as_float16(model(ERF_LEGACY, constants=CONSTANTS.replace("1.4142135", "1.42")))
    check.declines(off, "gelu", "the divisor of x in Erf is 1.4199219")  # beyond float16's rounding: still declined
