"""Pipeline strings, the registry's errors, provenance, error wrapping, fixed point."""

from __future__ import annotations

import dataclasses
import json

import onnx_ir as ir
import pytest

from graphopt import capture, pipeline, registry
from graphopt.errors import PassFailedError, UsageError
from graphopt.pass_base import GraphoptPass


def test_parse_and_print_round_trip():
    text = "cleanup(fold-limit=10, iterations=1),opset-upgrade(opset=21),canonicalize"
    parsed = pipeline.parse_pipeline(text)
    assert [s.name for s in parsed.steps] == ["cleanup", "opset-upgrade", "canonicalize"]
    assert str(parsed) == "cleanup(fold-limit=10,iterations=1),opset-upgrade(opset=21),canonicalize"
    assert pipeline.parse_pipeline(str(parsed)) == parsed


def test_quoted_values_round_trip():
    parsed = pipeline.parse_pipeline('x(name="a,b (c)")')
    assert parsed.steps[0].options == (("name", "a,b (c)"),)
    assert pipeline.parse_pipeline(str(parsed)) == parsed


def test_options_are_typed():
    (spec, options), = pipeline.parse_pipeline("cleanup(fold-limit=10)").expand()
    assert spec.name == "cleanup" and options.fold_limit == 10 and isinstance(options.fold_limit, int)


def test_preset_expands():
    names = [spec.name for spec, _ in pipeline.parse_pipeline("canonicalize").expand()]
    assert names[0] == "cleanup" and "opset-upgrade" in names


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nosuchpass", "unknown pass 'nosuchpass' (valid passes and presets: "),
        ("cleanup(bogus=1)", "pass 'cleanup' has no option 'bogus' (valid options: fold_limit, iterations)"),
        ("cleanup(fold-limit=many)", "option 'fold_limit' of pass 'cleanup' must be int, got 'many'"),
        ("canonicalize(x=1)", "preset 'canonicalize' takes no options"),
        ("cleanup(fold-limit=1", "missing ')'"),
        ("cleanup(fold-limit)", "expected '=' after option 'fold-limit'"),
        ("", "empty pipeline"),
        ("cleanup opset-upgrade", "unexpected"),
    ],
)
def test_bad_pipelines_say_what_is_wrong(text, message):
    with pytest.raises(UsageError) as info:
        pipeline.parse_pipeline(text).expand()
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bool_literal_and_tuple_options():
    hint_bool = registry.parse_option_value("p", "k", bool, "false")
    assert hint_bool is False
    assert registry.parse_option_value("p", "k", tuple[int, ...], "1|2|3") == (1, 2, 3)
    with pytest.raises(UsageError, match="must be true or false"):
        registry.parse_option_value("p", "k", bool, "maybe")


def test_cleanup_runs_and_tags_provenance(mlp_proto):
    model = capture.load(mlp_proto)
    records = pipeline.run_pipeline(model, "cleanup,opset-upgrade")
    assert [r.name for r in records] == ["cleanup", "opset-upgrade"]
    assert records[0].modified and records[1].modified
    assert [n.op_type for n in model.graph] == ["MatMul", "Add"]
    assert model.opset_imports[""] == 23
    # opset-upgrade only rebuilds the model's own nodes: it stamps none of them
    assert all(pipeline.PROVENANCE_PASS not in n.metadata_props for n in model.graph)


def test_second_run_does_not_modify(mlp_proto):
    model = capture.load(mlp_proto)
    pipeline.run_pipeline(model, "cleanup")
    again = pipeline.run_pipeline(model, "cleanup")
    assert again[0].modified is False


@dataclasses.dataclass(frozen=True)
class _BoomOptions:
    pass


class _TestBoomPass(GraphoptPass):
    """A pass that always fails (tests the error wrapping)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        raise ValueError("kaboom")


@pytest.fixture
def boom_pass():
    registry.register_pass("test-boom", options=_BoomOptions, category="test")(_TestBoomPass)
    yield
    registry._PASSES.pop("test-boom")


def test_failing_pass_is_named_with_the_passes_before(mlp_proto, boom_pass):
    model = capture.load(mlp_proto)
    with pytest.raises(PassFailedError) as info:
        pipeline.run_pipeline(model, "cleanup,opset-upgrade,test-boom")
    assert str(info.value) == "pass 'test-boom' failed after ['cleanup', 'opset-upgrade']: ValueError: kaboom"


def test_catalog_lists_every_registered_pass():
    catalog = registry.catalog()
    names = {p["name"] for p in catalog["passes"]}
    assert {"cleanup", "opset-upgrade"} <= names
    assert {"canonicalize"} <= {p["name"] for p in catalog["presets"]}
    cleanup = next(p for p in catalog["passes"] if p["name"] == "cleanup")
    assert {"name": "fold_limit", "type": "int", "default": 65536} in cleanup["options"]


class _TestCountdownPass(GraphoptPass):
    """Removes one Identity per run: needs a fixed point to remove them all."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for node in model.graph:
            if node.op_type == "Identity":
                node.outputs[0].replace_all_uses_with(node.inputs[0])
                model.graph.remove(node, safe=True)
                self.rewrites["identity"] += 1
                return ir.passes.PassResult(model, modified=True)
        return ir.passes.PassResult(model, modified=False)


def test_fixed_point_passes_run_until_nothing_changes():
    registry.register_pass("test-countdown", options=_BoomOptions, fixed_point=True, category="test")(_TestCountdownPass)
    try:
        model = ir.from_onnx_text(
            """<ir_version: 8, opset_import: ["" : 17]>
            g (float[2] x) => (float[2] y) { a = Identity(x) b = Identity(a) c = Identity(b) y = Relu(c) }"""
        )
        (record,) = pipeline.run_pipeline(model, "test-countdown")
        assert [n.op_type for n in model.graph] == ["Relu"] and record.rewrites == {"identity": 3}
    finally:
        registry._PASSES.pop("test-countdown")


class _TestMeasurePass(GraphoptPass):
    """Records the calibrated max of the Relu input (tests the calibration hook)."""

    needs_calibration = True
    seen_max: float = 0.0

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        relu = next(n for n in model.graph if n.op_type == "Relu")
        _TestMeasurePass.seen_max = self.stats(model, [relu.inputs[0].name])[relu.inputs[0].name].max
        return ir.passes.PassResult(model, modified=False)


def test_calibrating_passes_get_the_run_samples_or_say_they_are_synthetic():
    import numpy as np

    registry.register_pass("test-measure", options=_BoomOptions, category="test")(_TestMeasurePass)
    text = """<ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) { two = Constant <value = float {2.0}> () h = Mul(x, two) y = Relu(h) }"""
    try:
        samples = [{"x": np.array([1.0, 3.0], np.float32)}, {"x": np.array([-1.0, 5.0], np.float32)}]
        (record,) = pipeline.run_pipeline(ir.from_onnx_text(text), "test-measure", samples=samples)
        assert _TestMeasurePass.seen_max == 10.0 and record.notes == []
        (record,) = pipeline.run_pipeline(ir.from_onnx_text(text), "test-measure")
        assert "synthetic" in record.notes[0]
    finally:
        registry._PASSES.pop("test-measure")


def test_graphopt_passes_lists_them_by_category_backend_ones_included(capsys):
    from graphopt import cli  # noqa: PLC0415

    assert cli.main(["passes"]) == 0
    out = capsys.readouterr().out
    backend = out[out.index("backend (run by the TVM backend"):out.index("presets:")]
    for name in ("static-shapes", "materialize-constant-of-shape", "resolve-expand-keep-dims", "tvm-import-forms"):
        assert f"  {name} " in backend
    assert out.index("cleanup (exact") < out.index("canonicalize (exporter") < out.index("rewrite (approximating")
