"""The one driver that runs rewrite rules (pattern, replacement, check) over a model.

Rules are ``onnxscript.rewriter`` rules. The driver applies them one rule at a time, in the order
given, so every rule gets its own count; then it re-matches the rewritten model with onnxscript's
``MatchingTracer`` to collect the candidates whose check declined, with the check's reason.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Sequence

import onnx_ir as ir
from onnxscript.rewriter import _basics, pattern

__all__ = ["Decline", "RuleOutcome", "apply_rules", "explain_rules"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Decline:
    """A candidate that matched a rule's pattern but was declined by its check."""

    rule: str
    node: str
    reason: str
    matched: int = 0  # pattern nodes matched before the failure (near misses)

    def __str__(self) -> str:
        return f"{self.rule} at {self.node}: {self.reason}"


@dataclasses.dataclass
class RuleOutcome:
    rewrites: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    declines: list[Decline] = dataclasses.field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.rewrites.values())


def apply_rules(model: ir.Model, rules: Sequence[pattern.RewriteRule], *, explain: bool = True) -> RuleOutcome:
    """Rewrite ``model`` in place with ``rules``; count rewrites per rule and collect declines."""
    outcome = RuleOutcome()
    for rule in rules:
        count = pattern.RewriteRuleSet([rule]).apply_to_model(model)
        if count:
            outcome.rewrites[rule.name] += count
            logger.debug("rule %s rewrote %d site(s)", rule.name, count)
    if explain:
        outcome.declines = explain_rules(model, rules)
    return outcome


def explain_rules(
    model: ir.Model, rules: Sequence[pattern.RewriteRule], *, near_misses: bool = False
) -> list[Decline]:
    """Match ``rules`` without rewriting; return candidates whose check failed.

    With ``near_misses`` also return the best partial pattern matches (the pattern itself failed),
    which is what `graphopt explain` shows when a rule fires nowhere.
    """
    tracer = _basics.MatchingTracer()
    ruleset = pattern.RewriteRuleSet(list(rules))
    ruleset.remove_unused_nodes = False  # explaining must not change the model
    ruleset.apply_to_model(model, tracer=tracer)
    declines = []
    seen = set()
    for rule, matches in tracer.best_matches_map.items():
        for info in matches:
            failed_check = info.status == _basics.MatchStatus.CONDITION_FAILED
            if not failed_check and not (near_misses and info.status == _basics.MatchStatus.NO_MATCH):
                continue
            reason = info.match_result.reason or "pattern did not match"
            if not failed_check:
                reason = f"near miss ({len(info.match_result.nodes)} nodes matched): {reason}"
            node = info.root_node.name or info.root_node.op_type
            key = (rule.name, node, reason)
            if key not in seen:
                seen.add(key)
                declines.append(Decline(rule.name or type(rule).__name__, node, reason, len(info.match_result.nodes)))
    return declines
