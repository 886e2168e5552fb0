"""The rule driver: one traversal per rule set, each rule counted under its own name, priorities kept.

Golden structure on small graphs made with onnx_ir; the traversal count is read off onnxscript's
``RewriteRuleSet.apply_to_model`` (the one place a traversal starts).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnxscript.rewriter import pattern

from graphopt import rewrite, testing
from graphopt.registry import get_pass


def _model(build) -> ir.Model:
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([2, 3]))
    tape = ir.tape.Tape()
    y = build(tape, x)
    y.name = "y"
    graph = ir.Graph([x], [y], nodes=tape.nodes, initializers=tape.initializers, opset_imports={"": 20})
    return ir.Model(graph, ir_version=10)


def _relu_then_neg(tape, x):
    return tape.op("Neg", [tape.op("Relu", [tape.op("Neg", [tape.op("Relu", [x])])])])


RELU_TO_ABS = pattern.RewriteRule(lambda op, x: op.Relu(x), lambda op, x: op.Abs(x), name="relu-to-abs")
NEG_TO_SIGN = pattern.RewriteRule(lambda op, x: op.Neg(x), lambda op, x: op.Sign(x), name="neg-to-sign")
ABS_TO_EXP = pattern.RewriteRule(lambda op, x: op.Abs(x), lambda op, x: op.Exp(x), name="abs-to-exp")


@pytest.fixture
def traversals(monkeypatch):
    started = []
    original = pattern.RewriteRuleSet.apply_to_model

    def counted(self, model, **kwargs):
        started.append(([r.name for r in self.rules], kwargs.get("tracer") is not None))
        return original(self, model, **kwargs)

    monkeypatch.setattr(pattern.RewriteRuleSet, "apply_to_model", counted)
    return started


def test_a_rule_set_is_one_traversal_and_counts_each_rule_by_name(traversals):
    model = _model(_relu_then_neg)
    outcome = rewrite.apply_rules(model, [rewrite.RuleSet([RELU_TO_ABS, NEG_TO_SIGN])], explain=False)
    assert dict(outcome.rewrites) == {"relu-to-abs": 2, "neg-to-sign": 2}
    assert testing.op_types(model) == ["Abs", "Sign", "Abs", "Sign"]
    assert traversals == [(["relu-to-abs", "neg-to-sign"], False)]


def test_rules_of_different_roots_run_in_list_order():
    """abs-to-exp is listed after relu-to-abs and reads what it made: separate traversals, in order."""
    model = _model(_relu_then_neg)
    outcome = rewrite.apply_rules(model, [RELU_TO_ABS, ABS_TO_EXP], explain=False)
    assert dict(outcome.rewrites) == {"relu-to-abs": 2, "abs-to-exp": 2}
    assert testing.op_types(model) == ["Exp", "Neg", "Exp", "Neg"]


def test_a_rule_whose_op_appears_only_after_an_earlier_rule_still_runs(traversals):
    model = _model(_relu_then_neg)
    rewrite.apply_rules(model, [RELU_TO_ABS, ABS_TO_EXP], explain=False)
    assert [names for names, _ in traversals] == [["relu-to-abs"], ["abs-to-exp"]]


def test_rules_for_absent_ops_cost_no_traversal(traversals):
    model = _model(lambda tape, x: tape.op("Neg", [x]))
    outcome = rewrite.apply_rules(model, [RELU_TO_ABS, ABS_TO_EXP], explain=False)
    assert outcome.total == 0 and traversals == []


def test_consecutive_rules_with_one_root_share_a_traversal_and_keep_their_priority():
    first = pattern.RewriteRule(lambda op, x: op.Relu(op.Neg(x)), lambda op, x: op.Exp(x), name="relu-of-neg")
    model = _model(_relu_then_neg)
    sets = rewrite.rule_sets([first, RELU_TO_ABS, NEG_TO_SIGN])
    assert [[r.name for r in s] for s in sets] == [["relu-of-neg", "relu-to-abs"], ["neg-to-sign"]]
    outcome = rewrite.apply_rules(model, [first, RELU_TO_ABS, NEG_TO_SIGN], explain=False)
    # The outer Relu(Neg(.)) goes to the longer rule listed first; the inner Relu has no Neg under it.
    assert dict(outcome.rewrites) == {"relu-of-neg": 1, "relu-to-abs": 1, "neg-to-sign": 1}
    assert testing.op_types(model) == ["Abs", "Exp", "Sign"]


def test_canonicalize_walks_bert_once_per_rule_set(traversals, tmp_path):
    """Before one traversal per rule set, canonicalize started 76 traversals on a BERT; now 17."""
    from bench.scaling import build_bert_stack  # noqa: PLC0415
    from graphopt import capture, pipeline  # noqa: PLC0415

    model = capture.load(build_bert_stack(300, str(tmp_path / "bert.onnx")))
    pipeline.run_pipeline(model, "canonicalize")
    applied = [names for names, traced in traversals if not traced]
    cleanup_sets = [names for names in applied if "add-zero" in names]
    assert cleanup_sets and all(len(names) > 10 for names in cleanup_sets)  # all cleanup rules in one set
    assert len(applied) <= 20


def test_explain_sees_every_rule_of_a_set():
    never = pattern.RewriteRule(
        lambda op, x: op.Relu(x), lambda op, x: op.Abs(x), lambda context, x: pattern.MatchResult().fail("never here"),
        name="declining",
    )
    model = _model(_relu_then_neg)
    outcome = rewrite.apply_rules(model, [rewrite.RuleSet([never, NEG_TO_SIGN])])
    assert {d.rule for d in outcome.declines} == {"declining"}
    assert all(d.reason == "never here" for d in outcome.declines)


def test_cleanup_counts_per_rule_from_one_set():
    model = _model(lambda tape, x: tape.op("Mul", [tape.op("Add", [x, tape.initializer(ir.tensor(np.float32(0.0), name="zero"))]),
                                                   tape.initializer(ir.tensor(np.float32(1.0), name="one"))]))
    the_pass = get_pass("cleanup").cls()
    the_pass(model)
    assert the_pass.rewrites["add-zero"] == 1 and the_pass.rewrites["mul-one"] == 1
