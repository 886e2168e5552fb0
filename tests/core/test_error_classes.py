"""Whose fault is it: ORT refusing a model graphopt wrote is graphopt's bug (exit 5, the model kept
for a report), never "your model is bad" (exit 3); a latency step that fails is a warning, not a lost run."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest

from graphopt import cli, registry
from graphopt.backends import ort as ort_backend
from graphopt.errors import ModelError
from graphopt.pass_base import GraphoptPass


def _relu_model() -> onnx.ModelProto:
    graph = oh.make_graph(
        [oh.make_node("Relu", ["x"], ["y"])], "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


class _TestBreaksTypesPass(GraphoptPass):
    """Test only: writes a Relu over a string tensor, which no ORT kernel runs."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        node = next(iter(model.graph))
        cast = ir.node("Cast", [node.inputs[0]], attributes={"to": ir.DataType.STRING})
        model.graph.insert_before(node, cast)
        cast.outputs[0].dtype = ir.DataType.STRING
        node.replace_input_with(0, cast.outputs[0])
        return ir.passes.PassResult(model, True)


@pytest.fixture
def breaking_pass():
    registry.register_pass("test-breaks-types")(_TestBreaksTypesPass)
    yield "test-breaks-types"
    registry._PASSES.pop("test-breaks-types")


def test_ort_refusing_graphopts_output_is_exit_5_with_the_model_kept(tmp_path, capsys, breaking_pass):
    onnx.save(_relu_model(), tmp_path / "in.onnx")
    code = cli.main(["compile", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out"), "--passes", breaking_pass, "--bench-runs", "0"])
    err = capsys.readouterr().err
    assert code == 5, err
    assert "graphopt produced" in err and "Traceback" not in err
    kept = err.split("kept at ")[1].split(" for a report")[0]
    assert os.path.exists(kept)


def test_failed_latency_is_a_warning_and_every_output_is_written(tmp_path, capsys, monkeypatch):
    onnx.save(_relu_model(), tmp_path / "in.onnx")

    def refuse(*args, **kwargs):
        raise ModelError("ONNX Runtime cannot load the model: Could not find an implementation for QuantizeLinear(23) node")

    monkeypatch.setattr(ort_backend, "time_session", refuse)  # as ORT at level "all" did on a ViT's ivit output
    code = cli.main(["compile", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out"), "--bench-runs", "3", "--json"])
    assert code == 0, capsys.readouterr().err
    report = capsys.readouterr().out
    assert "no latency for original" in report and "no latency for onnx" in report
    assert (tmp_path / "out" / "model.onnx").exists() and (tmp_path / "out" / "report.json").exists()
    np.testing.assert_equal(onnx.load(tmp_path / "out" / "model.onnx").graph.output[0].name, "y")
