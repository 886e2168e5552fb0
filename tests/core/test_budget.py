"""--budget: a floor on the output kept by finding (bisection) and rolling back the rewrites that break it."""

from __future__ import annotations

import json
import math
import pathlib

import jsonschema
import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnx_ir as ir
import pytest

import graphopt
from graphopt import cli, rewrite, testing
from graphopt.budget import Budget, minimal_sites, parse_budget
from graphopt.errors import UsageError
from graphopt.pass_base import GraphoptPass
from graphopt.pipeline import run_pipeline

SCHEMA = json.loads((pathlib.Path(__file__).parents[2] / "docs" / "report.schema.json").read_text())


def outlier_model(outlier: float = 1000.0, names: bool = True, twice: bool = False) -> onnx.ModelProto:
    """x -> MatMul 'first' -> Mul (channel 3 times ``outlier``) -> MatMul 'outlier' -> Relu -> MatMul 'last'.

    The middle MatMul's input has one huge channel that its weights cancel: one int8 scale for
    the whole tensor rounds every other channel to zero, so quantizing that MatMul ruins the
    output while the other two quantize fine. ``twice``: the last MatMul's input gets the same outlier.
    """
    rng = np.random.default_rng(testing.SEED)
    wa, wb = (rng.standard_normal((16, 16)).astype(np.float32) / 4 for _ in range(2))
    wc = rng.standard_normal((16, 8)).astype(np.float32) / 4
    scale = np.ones(16, np.float32)
    scale[3] = outlier
    wb[3] /= outlier
    h = onnx.helper
    nodes = [h.make_node("MatMul", ["x", "wa"], ["a"], name="first"), h.make_node("Mul", ["a", "scale"], ["a2"], name="spread"),
             h.make_node("MatMul", ["a2", "wb"], ["b"], name="outlier"), h.make_node("Relu", ["b"], ["r"], name="relu"),
             h.make_node("MatMul", ["r2" if twice else "r", "wc"], ["y"], name="last")]
    if twice:
        nodes.insert(4, h.make_node("Mul", ["r", "scale"], ["r2"], name="spread_again"))
        wc[3] /= outlier
    if not names:
        for node in nodes:
            node.name = ""
    inits = [onnx.numpy_helper.from_array(a, n) for a, n in [(wa, "wa"), (wb, "wb"), (wc, "wc"), (scale, "scale")]]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 16])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 8])], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 18)], ir_version=10)


def calib() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(testing.SEED + 1)
    return [{"x": rng.standard_normal((4, 16)).astype(np.float32)} for _ in range(4)]


def _float_matmuls(result) -> list[str]:
    return [n.name for n in result.model.graph if n.op_type == "MatMul"]


def test_the_outlier_layer_is_found_and_rolled_back_the_others_stay_int8():
    result = graphopt.compile(outlier_model(), passes="int8-linear", calib=calib(), budget="cosine=0.999")
    budget = result.report.data["budget"]
    assert budget["initial"] < 0.5 and budget["met"] and budget["final"] >= 0.999, budget
    assert budget["rolled_back"] == [{"pass": "int8-linear", "rule": "int8-matmul", "node": "outlier"}]
    assert budget["culprit_passes"] == ["int8-linear"]
    # 1 (the rewritten model) + 1 (all 3 sites rolled back) + 2 (bisection over 3 sites) + 1 (the site alone)
    # + 1 (the rewrite re-run with it rolled back); one pass, so no bisection over passes
    assert budget["validation_runs"] == len(budget["trace"]) == 6
    assert _float_matmuls(result) == ["outlier"] and result.report.ops_after["MatMulInteger"] == 2
    assert result.ok and result.report.accuracy["y"]["cosine"] == pytest.approx(budget["final"])
    jsonschema.validate(json.loads(result.report.to_json()), SCHEMA)


def test_two_broken_layers_are_both_found():
    result = graphopt.compile(outlier_model(twice=True), passes="int8-linear", calib=calib(), budget="cosine=0.999")
    budget = result.report.data["budget"]
    assert budget["met"] and sorted(s["node"] for s in budget["rolled_back"]) == ["last", "outlier"]
    assert sorted(_float_matmuls(result)) == ["last", "outlier"] and result.report.ops_after["MatMulInteger"] == 1
    assert budget["validation_runs"] == len(budget["trace"])


def test_the_pass_is_found_by_bisection_in_a_longer_pipeline():
    result = graphopt.compile(outlier_model(), passes="canonicalize,int8-linear,cleanup", calib=calib(), budget="sqnr=30")
    budget = result.report.data["budget"]
    assert budget["met"] and budget["final"] >= 30
    assert [s["node"] for s in budget["rolled_back"]] == ["outlier"]
    passes = [record.name for record in result.report.passes]
    culprit = passes.index("int8-linear")
    probes = [step for step in budget["trace"] if step["probe"] == "pass"]
    assert 1 <= len(probes) <= math.ceil(math.log2(len(passes)))  # bisection, not a run after every pass
    assert all(step["met"] == (step["pass_index"] < culprit) for step in probes)
    assert budget["validation_runs"] == len(budget["trace"])
    jsonschema.validate(json.loads(result.report.to_json()), SCHEMA)


def test_a_budget_already_met_costs_one_run_and_rolls_back_nothing():
    result = graphopt.compile(outlier_model(outlier=1.0), passes="int8-linear", calib=calib(), budget="cosine=0.99")
    budget = result.report.data["budget"]
    assert budget["met"] and budget["rolled_back"] == [] and budget["validation_runs"] == 1 and budget["culprit_passes"] == []
    assert _float_matmuls(result) == [] and result.ok


def test_no_budget_no_stage():
    result = graphopt.compile(outlier_model(outlier=1.0), passes="int8-linear", calib=calib())
    assert "budget" not in result.report.data and "budget" not in result.report.seconds


def test_unnamed_nodes_get_names_and_are_rolled_back():
    result = graphopt.compile(outlier_model(names=False), passes="int8-linear", calib=calib(), budget="cosine=0.999")
    budget = result.report.data["budget"]
    assert budget["met"] and len(budget["rolled_back"]) == 1 and budget["rolled_back"][0]["node"]
    assert len(_float_matmuls(result)) == 1 and result.report.ops_after["MatMulInteger"] == 2


def softmax_model() -> onnx.ModelProto:
    h = onnx.helper
    graph = h.make_graph([h.make_node("Softmax", ["x"], ["y"], name="softmax", axis=-1)], "g",
                         [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 16])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 16])])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 18)], ir_version=10)


class _TestOffsetOutputPass(GraphoptPass):
    """Adds 1 to the output: an approximation with a hand-written call, so no rewrite of it can be rolled back alone."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        output = model.graph.outputs[0]
        one = ir.Value(name="offset_one", shape=ir.Shape([]), type=ir.TensorType(ir.DataType.FLOAT))
        one.const_value = ir.tensor(np.float32(1.0), name="offset_one")
        model.graph.register_initializer(one)
        node = ir.node("Add", [output, one])
        model.graph.append(node)
        node.outputs[0].name, node.outputs[0].dtype, node.outputs[0].shape = "offset_y", output.dtype, output.shape
        model.graph.outputs[0] = node.outputs[0]
        return ir.passes.PassResult(model, modified=True)


@pytest.fixture
def offset_pass():
    from graphopt import registry  # noqa: PLC0415

    registry.register_pass("test-offset-output")(_TestOffsetOutputPass)
    yield "test-offset-output"
    registry._PASSES.pop("test-offset-output")


def test_a_budget_that_cannot_be_kept_exits_1_with_the_reason(tmp_path, capsys, offset_pass):
    model = tmp_path / "softmax.onnx"
    onnx.save(softmax_model(), model)
    data = tmp_path / "calib.npz"
    np.savez(data, x=np.stack([s["x"] for s in calib()]))
    code = cli.main(["compile", str(model), "--passes", offset_pass, "--calib", str(data), "--budget", "cosine=0.9999999",
                     "-o", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 1
    assert "budget cosine>=0.9999999 missed" in captured.out and "has no rewrite that can be rolled back alone" in captured.out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    jsonschema.validate(report, SCHEMA)
    budget = report["data"]["budget"]
    assert budget["met"] is False and budget["rolled_back"] == [] and budget["culprit_passes"] == [offset_pass]
    assert any(v.startswith("budget cosine=0.9999999: cosine") and f"pass '{offset_pass}' (#1)" in v for v in report["violations"])


def test_shiftmax_rewrites_roll_back_too(tmp_path):
    """shiftmax and attention apply their rules themselves, through GraphoptPass.apply_rules: the site filter reaches them."""
    result = graphopt.compile(ir.serde.deserialize_model(softmax_model()), "shiftmax", calib=calib(), budget="cosine=0.9999999")
    budget = result.report.data["budget"]
    assert budget["met"] and [r["pass"] for r in budget["rolled_back"]] == ["shiftmax"]


def test_cli_prints_what_was_rolled_back(tmp_path, capsys):
    model = tmp_path / "outlier.onnx"
    onnx.save(outlier_model(), model)
    data = tmp_path / "calib.npz"
    np.savez(data, x=np.stack([s["x"] for s in calib()]))
    assert cli.main(["compile", str(model), "--passes", "int8-linear", "--calib", str(data), "--budget", "cosine=0.999",
                     "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "budget cosine>=0.999 kept" in out and "6 validation run(s)" in out
    assert "rolled back int8-linear / int8-matmul at node outlier" in out


@pytest.mark.parametrize("text", ["cosine", "psnr=3", "cosine=high", "cosine=2", "sqnr=inf"])
def test_a_bad_budget_is_a_usage_error(text):
    with pytest.raises(UsageError, match="--budget"):
        parse_budget(text)


def test_budget_needs_validation(tmp_path):
    with pytest.raises(UsageError, match="--no-validate"):
        graphopt.compile(outlier_model(), passes="int8-linear", validate=False, budget="cosine=0.9")
    assert cli.main(["compile", "x.onnx", "--budget", "nonsense", "-o", str(tmp_path / "o")]) == 2


def test_parse_budget():
    assert parse_budget("cosine=0.995") == Budget("cosine", 0.995)
    assert parse_budget(" SQNR=30") == Budget("sqnr", 30.0) and str(Budget("sqnr", 30.0)) == "sqnr=30"


@pytest.mark.parametrize("bad", [{5}, {2, 11}, {0, 7, 13}, set(range(16))])
def test_minimal_sites_finds_every_site_needed(bad):
    """With ``bad`` the sites whose rewrite breaks the budget, rolling back exactly them is found."""
    probes = []

    def meets(skip):
        probes.append(len(skip))
        return bad <= set(skip)

    assert set(minimal_sites(list(range(16)), meets)) == bad
    if len(bad) == 1:
        assert len(probes) <= 5  # log2(16) + the site alone


def test_the_driver_leaves_skipped_sites_alone_and_records_the_rest():
    model = ir.serde.deserialize_model(outlier_model())
    with rewrite.site_filter([rewrite.Site("int8-linear", "int8-matmul", "outlier")]) as rewritten:
        run_pipeline(model, "int8-linear", samples=calib())
    assert [n.name for n in model.graph if n.op_type == "MatMul"] == ["outlier"]
    assert sorted(s.node for s in rewritten) == ["first", "last"] and {s.pass_name for s in rewritten} == {"int8-linear"}
    assert rewrite.skipped_sites("int8-linear") == frozenset()  # outside the block: nothing skipped
