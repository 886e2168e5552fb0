"""Node-count scaling, without timing asserts: big graphs go through, and come out right.

The timings (time vs nodes, log-log slope) are `python -m bench.scaling`'s job; here a 20,000-node
chain of unnamed Relu nodes (quadratic in ``check_graph_structure`` before, and rules x nodes in
the rewrite driver) must go through `graphopt compile --passes canonicalize` and compute the same.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bench.scaling import build_bert_stack, build_chain, slope
from graphopt import cli, rewrite
from graphopt.registry import get_pass


def _run(path: str, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_20k_relu_chain_goes_through_canonicalize(tmp_path, capsys):
    path = build_chain(20_000, str(tmp_path / "chain.onnx"))
    out = tmp_path / "out"
    code = cli.main(["compile", path, "-o", str(out), "--passes", "canonicalize", "--no-validate", "--bench-runs", "0", "--quiet"])
    assert code == 0, capsys.readouterr().err
    rewritten = onnx.load(str(out / "model.onnx"))
    assert len(rewritten.graph.node) == 20_000
    assert [i.name for i in rewritten.graph.input] == ["v0"] and [o.name for o in rewritten.graph.output] == ["v20000"]
    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    np.testing.assert_array_equal(_run(str(out / "model.onnx"), x), np.maximum(x, 0))
    np.testing.assert_array_equal(_run(str(out / "model.onnx"), x), _run(path, x))


def test_rule_skipping_keeps_rules_whose_ops_are_present_or_optional(tmp_path):
    """A rule is skipped only when an op its every match needs is absent (OrValue branches are optional)."""
    import onnx_ir as ir

    bert = ir.serde.deserialize_model(onnx.load(build_bert_stack(200, str(tmp_path / "bert.onnx"))))
    chain = ir.serde.deserialize_model(onnx.load(build_chain(10, str(tmp_path / "chain.onnx"))))
    for name in ("gelu", "layer-norm", "attention", "rms-norm", "silu"):
        spec = get_pass(name)
        rules = spec.cls(spec.make_options({})).rules()
        assert rewrite.applicable_rules(chain, rules) == []
        kept = rewrite.applicable_rules(bert, rules)
        for rule in rules:
            if rule not in kept:
                assert not rewrite._required_op_types(rule) <= rewrite._op_types(bert)
    attention = get_pass("attention")
    rules = attention.cls(attention.make_options({})).rules()
    assert rewrite._required_op_types(rules[0]) == {"MatMul", "Softmax"}  # scale, cap and mask are OrValue branches


@pytest.mark.parametrize(("points", "expected"), [([(1, 1.0), (10, 10.0), (100, 100.0)], 1.0), ([(1, 1.0), (10, 100.0)], 2.0)])
def test_slope_fit(points, expected):
    assert slope(points) == pytest.approx(expected)
