"""silu: x * Sigmoid(x) -> the graphopt op SigmoidLinearUnit (ONNX Swish needs opset 24)."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import onnx
import onnx.helper
import pytest

from graphopt import ops, testing
from graphopt.ops.silu import SILU


def model(body: str, opset: int = 23, x: str = "float[2, 3, 8]", inputs: str = "") -> str:
    return f'<ir_version: 10, opset_import: ["" : {opset}]>\ng ({x} x{inputs}) => ({x} y) <float beta = {{1.702}}> {{\n{body}\n}}'


@pytest.mark.parametrize(
    "body",
    ["s = Sigmoid(x)\n y = Mul(x, s)", "s = Sigmoid(x)\n y = Mul(s, x)"],
    ids=["x-first", "sigmoid-first"],
)
def test_x_times_sigmoid_x_becomes_one_node(check, body):
    result = check.fires(model(body), "silu", ["SigmoidLinearUnit"], rtol=0, atol=0)
    node = result.model.graph.node(0)
    assert (node.domain, node.op_type) == (ops.DOMAIN, "SigmoidLinearUnit")
    assert result.model.opset_imports[ops.DOMAIN] == ops.OPSET_VERSION
    assert result.last.rewrites == {"silu": 1}


def test_swiglu_gate_fuses_and_the_up_product_stays(check):
    body = "s = Sigmoid(x)\n g = Mul(x, s)\n y = Mul(g, up)"
    check.fires(model(body, inputs=", float[2, 3, 8] up"), "silu", ["SigmoidLinearUnit", "Mul"], rtol=0, atol=0)


@pytest.mark.parametrize(("dtype", "opset"), [("double", 23), ("float16", 23), ("float", 14)])
def test_other_dtypes_and_an_old_opset(check, dtype, opset):
    text = model("s = Sigmoid(x)\n y = Mul(x, s)", opset=opset, x=f"{dtype}[N, 8]")
    result = check.fires(text, "silu", ["SigmoidLinearUnit"], rtol=1e-3, feeds=check.feeds(check.proto(text), {"N": 4}))
    proto = result.model.functions[(ops.DOMAIN, "SigmoidLinearUnit", "")]
    assert proto.opset_imports[""] == opset  # the body imports the model's opset


@pytest.mark.parametrize(
    ("body", "inputs", "reason"),
    [
        ("s = Sigmoid(z)\n y = Mul(x, s)", ", float[2, 3, 8] z", "x * Sigmoid(y) with y != x is a gate, not SiLU"),
        ("b = Mul(beta, x)\n s = Sigmoid(b)\n y = Mul(s, x)", "", "x * Sigmoid(b * x) is Swish with a beta, not SiLU"),
    ],
)
def test_declined_with_the_reason(check, body, inputs, reason):
    check.declines(model(body, inputs=inputs), "silu", reason)


def test_sigmoid_with_another_reader_is_left_alone(check):
    result = check.run(model("s = Sigmoid(x)\n m = Mul(x, s)\n y = Add(m, s)"), "silu")
    assert not result.last.modified and result.ops == ["Sigmoid", "Mul", "Add"]


def test_a_second_run_is_a_no_op(check):
    first = check.run(model("s = Sigmoid(x)\n y = Mul(x, s)"), "silu,silu")
    assert [r.modified for r in first.records] == [True, False]
    assert first.ops == ["SigmoidLinearUnit"] and first.last.declines == []


def test_reference_and_onnx_body_agree():
    node = onnx.helper.make_node("SigmoidLinearUnit", ["x"], ["y"], domain=ops.DOMAIN)
    for (x,), _ in SILU.examples():
        elem = onnx.helper.np_dtype_to_tensor_dtype(x.dtype)
        graph = onnx.helper.make_graph(
            [node], "g", [onnx.helper.make_tensor_value_info("x", elem, x.shape)], [onnx.helper.make_tensor_value_info("y", elem, x.shape)]
        )
        proto = onnx.helper.make_model(
            graph,
            opset_imports=[*SILU.function_proto.opset_import, onnx.helper.make_opsetid(ops.DOMAIN, ops.OPSET_VERSION)],
            functions=[SILU.function_proto],
        )
        onnx.checker.check_model(proto, full_check=True)
        tol = 1e-3 if x.dtype == np.float16 else 1e-6
        np.testing.assert_allclose(testing.run_ort(proto, {"x": x})[0], SILU.reference(x), rtol=tol, atol=tol)


def test_op_name_is_not_onnx_contrib_or_tvm():
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_c

    assert SILU.name not in {s.name for s in onnx.defs.get_all_schemas_with_history()}
    assert SILU.name not in {s.name for s in ort_c.get_all_operator_schema()}
    spec = importlib.util.find_spec("tvm")
    if spec is not None and spec.origin:
        frontend = pathlib.Path(spec.origin).parent / "relax" / "frontend" / "onnx" / "onnx_frontend.py"
        assert f'"{SILU.name}"' not in frontend.read_text()


def _silus():
    import torch

    class Silus(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.act = torch.nn.SiLU()

        def forward(self, a, b):
            return self.act(a), torch.nn.functional.silu(b)

    return Silus()


@pytest.mark.parametrize(("exporter", "opset"), [("dynamo", 18), ("legacy", 14), ("legacy", 17)])
def test_real_exports_fuse_after_cleanup_and_opset_upgrade(check, export_torch, exporter, opset):
    torch = pytest.importorskip("torch")
    proto = export_torch(_silus(), (torch.randn(2, 3, 8), torch.randn(2, 3, 8)), exporter, opset)
    result = check.fires(proto, "cleanup,opset-upgrade,silu", ["SigmoidLinearUnit", "SigmoidLinearUnit"])
    assert result.last.rewrites == {"silu": 2}
