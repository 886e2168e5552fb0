"""rms-norm: decomposed RMSNorm (with the LLaMA float32 Cast round trip) -> RMSNormalization (opset 23)."""

from __future__ import annotations

import pytest

W8 = "{1.0, 0.5, -1.5, 2.0, 0.25, -0.75, 1.25, 3.0}"
CONSTANTS = f"float eps = {{1e-6}}, float two = {{2.0}}, float one = {{1.0}}, int64[1] last = {{-1}}, float[8] w = {W8}, float16[8] w16"  # w16 = Cast(w): a value_info


def model(body: str, opset: int = 23, constants: str = "", x: str = "float[2, 3, 8]") -> str:
    return (
        f'<ir_version: 10, opset_import: ["" : {opset}]>\n'
        f"g ({x} x) => ({x} y) <{CONSTANTS}{', ' + constants if constants else ''}> {{\n{body}\n}}"
    )


# torch dynamo exporter, LLaMA RMSNorm on float32: weight * (h * rsqrt(mean(h^2) + eps))
DYNAMO = """p = Pow(x, two)
 ms = ReduceMean(p, last)
 a = Add(ms, eps)
 s = Sqrt(a)
 r = Reciprocal(s)
 n = Mul(x, r)
 y = Mul(w, n)"""

# the same on float16: Cast to float32 and back around the normalization
LLAMA_FP16 = """w16 = Cast <to = 10> (w)
 h = Cast <to = 1> (x)
 p = Pow(h, two)
 ms = ReduceMean(p, last)
 a = Add(ms, eps)
 s = Sqrt(a)
 r = Reciprocal(s)
 n32 = Mul(h, r)
 n = Cast <to = 10> (n32)
 y = Mul(w16, n)"""


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("dynamo", DYNAMO),
        # legacy exporter: rsqrt as Div(1, Sqrt)
        ("legacy-div-one", DYNAMO.replace("r = Reciprocal(s)", "r = Div(one, s)")),
        ("div", DYNAMO.replace("r = Reciprocal(s)\n n = Mul(x, r)", "n = Div(x, s)")),
        ("mul-square-swapped", DYNAMO.replace("Pow(x, two)", "Mul(x, x)").replace("Add(ms, eps)", "Add(eps, ms)").replace("Mul(x, r)", "Mul(r, x)").replace("Mul(w, n)", "Mul(n, w)")),
    ],
)
def test_float32_spellings_become_one_rms_normalization(check, name, body):
    result = check.fires(model(body), "rms-norm", ["RMSNormalization"])
    node = result.model.graph.node(0)
    assert [v.name for v in node.inputs] == ["x", "w"]
    assert node.attributes.get_int("axis") == -1
    assert node.attributes.get_float("epsilon") == pytest.approx(1e-6)
    assert result.last.rewrites == {"rms-norm": 1}


def test_llama_float16_cast_round_trip_becomes_stash_type_float32(check):
    result = check.fires(model(LLAMA_FP16, x="float16[2, 3, 8]"), "rms-norm", ["Cast", "RMSNormalization"], rtol=1e-3, atol=1e-3)
    node = result.model.graph.node(1)
    assert [v.name for v in node.inputs] == ["x", "w16"]
    assert node.attributes.get_int("stash_type") == 1


def test_without_weight_gets_a_ones_weight(check):
    body = DYNAMO.replace("n = Mul(x, r)\n y = Mul(w, n)", "y = Mul(x, r)")
    result = check.fires(model(body), "rms-norm", ["Constant", "RMSNormalization"])
    assert result.last.rewrites == {"rms-norm-no-weight": 1}


def test_without_weight_float16_keeps_the_output_cast_dtype(check):
    body = LLAMA_FP16.replace("n = Cast <to = 10> (n32)\n y = Mul(w16, n)", "y = Cast <to = 10> (n32)")
    body = body.replace("w16 = Cast <to = 10> (w)\n ", "")
    result = check.fires(model(body, x="float16[2, 3, 8]"), "rms-norm", ["Constant", "RMSNormalization"], rtol=1e-3, atol=1e-3)
    assert result.model.graph.outputs[0].dtype.name == "FLOAT16"


def test_symbolic_batch_and_sequence(check):
    text = model(DYNAMO, x="float[B, S, 8]")
    check.fires(text, "rms-norm", ["RMSNormalization"], feeds=check.feeds(check.proto(text), {"B": 2, "S": 5}))


def test_ort_simplified_layer_normalization_becomes_onnx(check):
    body = "y = SimplifiedLayerNormalization <axis = -1, epsilon = 1e-6> (x, w)"
    result = check.fires(model(body), "rms-norm", ["RMSNormalization"])
    assert result.model.graph.node(0).attributes.get_float("epsilon") == pytest.approx(1e-6)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (DYNAMO.replace("ReduceMean(p, last)", "ReduceMean(p, mid)"), "reduced axes [-2] are not the last 1 axis(es)"),
        (DYNAMO.replace("Add(ms, eps)", "Add(ms, w)"), "epsilon is not a constant scalar"),
        (DYNAMO.replace("Pow(x, two)", "Pow(x, three)"), "the exponent in Pow(x, 2) is 3"),
        (DYNAMO.replace("r = Reciprocal(s)", "r = Div(two, s)"), "the numerator of 1 / rms is 2"),
    ],
)
def test_declined_with_the_reason(check, body, reason):
    check.declines(model(body, constants="int64[1] mid = {1}, float three = {3.0}"), "rms-norm", reason)


def test_integer_input_is_declined(check):
    body = LLAMA_FP16.replace("n = Cast <to = 10> (n32)\n y = Mul(w16, n)", "y = Mul(n32, w)").replace("w16 = Cast <to = 10> (w)\n ", "")
    text = model(body, x="int64[2, 3, 8]").replace("=> (int64[2, 3, 8] y)", "=> (float[2, 3, 8] y)")
    check.declines(text, "rms-norm", "RMSNormalization does not accept INT64 inputs")


@pytest.mark.parametrize("opset", [22, 17])
def test_old_opset_is_declined_and_says_run_opset_upgrade(check, opset):
    body = DYNAMO.replace("ReduceMean(p, last)", "ReduceMean <axes = [-1]> (p)") if opset < 18 else DYNAMO
    check.declines(model(body, opset=opset), "rms-norm", f"RMSNormalization needs opset >= 23, model has {opset}; run opset-upgrade")


def _llama_rms_norm():
    import torch

    class LlamaRMSNorm(torch.nn.Module):
        """transformers' LlamaRMSNorm: normalize in float32, cast back, then scale."""

        def __init__(self, dim, eps=1e-6):
            super().__init__()
            self.weight, self.eps = torch.nn.Parameter(torch.randn(dim)), eps

        def forward(self, hidden):
            dtype = hidden.dtype
            hidden = hidden.to(torch.float32)
            variance = hidden.pow(2).mean(-1, keepdim=True)
            hidden = hidden * torch.rsqrt(variance + self.eps)
            return self.weight * hidden.to(dtype)

    return LlamaRMSNorm(8)


@pytest.mark.parametrize(("exporter", "opset"), [("dynamo", 18), ("legacy", 14), ("legacy", 17)])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_real_exports_fuse_after_cleanup_and_opset_upgrade(check, export_torch, exporter, opset, dtype):
    torch = pytest.importorskip("torch")
    module, x = _llama_rms_norm(), torch.randn(2, 3, 8)
    if dtype == "float16":
        module, x = module.half(), x.half()
    proto = export_torch(module, (x,), exporter, opset)
    result = check.fires(proto, "cleanup,opset-upgrade,rms-norm", None, rtol=1e-3, atol=1e-3)
    assert [op for op in result.ops if op != "Constant"] == ["RMSNormalization"]
    assert result.last.rewrites == {"rms-norm": 1}


def test_canonical_rms_normalization_is_left_alone(check):
    result = check.run(model("y = RMSNormalization <epsilon = 1e-6> (x, w)"), "rms-norm")
    assert not result.last.modified and result.ops == ["RMSNormalization"] and result.last.declines == []
