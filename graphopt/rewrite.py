"""The one driver that runs rewrite rules (pattern, replacement, check) over a model.

Rules are ``onnxscript.rewriter`` rules. The driver groups a pass's rules into rule sets
(``rule_sets``) and applies each set in one onnxscript traversal, counting each rule's rewrites
under the rule's own name; then it re-matches the rewritten model with onnxscript's
``MatchingTracer`` to collect the candidates whose check declined, with the check's reason.

A run can leave chosen sites alone: ``apply_rules(..., skip=names)`` does not rewrite at a node
whose name is in ``names`` (the node a rule's pattern is rooted at), and every rewrite is recorded
in ``RuleOutcome.sites``. Rule passes honour ``site_filter`` (the numeric budget's bisection,
``graphopt.budget``, sets it around a pipeline run) and report their sites to it.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import dataclasses
import logging
from collections.abc import Collection, Iterator, Mapping, Sequence

import onnx_ir as ir
from onnxscript.rewriter import _basics, _pattern_ir, pattern

__all__ = ["Decline", "RuleOutcome", "RuleSet", "Site", "applicable_rules", "apply_rules", "explain_rules", "rule_sets",
           "note_sites", "site_filter", "skipped_sites"]

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


@dataclasses.dataclass(frozen=True, order=True)
class Site:
    """Where a rule rewrote: the pass, the rule and the name of the node its pattern is rooted at."""

    pass_name: str
    rule: str
    node: str

    def __str__(self) -> str:
        return f"{self.pass_name}/{self.rule} at {self.node or '(unnamed node)'}"


@dataclasses.dataclass
class RuleOutcome:
    rewrites: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    declines: list[Decline] = dataclasses.field(default_factory=list)
    sites: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (rule, root node name) of each rewrite

    @property
    def total(self) -> int:
        return sum(self.rewrites.values())


def _op_types(model: ir.Model) -> set[str]:
    """Every op type in the model: main graph, subgraphs and model-local functions."""
    found = {node.op_type for node in ir.traversal.RecursiveGraphIterator(model.graph)}
    for function in model.functions.values():
        found.update(node.op_type for node in ir.traversal.RecursiveGraphIterator(function))
    return found


def _required_op_types(rule: pattern.RewriteRule) -> frozenset[str] | None:
    """Op types every match of ``rule`` must contain, or None when that cannot be told.

    Walks back from the pattern's outputs through node outputs only: an ``OrValue``'s
    alternatives, variables and constants end the walk (the pattern's own node list holds every
    alternative, which a match need not contain). Each node reached with a constant op type
    occurs in any graph the rule matches.
    """
    try:
        outputs = rule._target_pattern.outputs  # noqa: SLF001 — onnxscript has no public accessor
    except AttributeError:
        return None
    required: set[str] = set()
    seen: set[int] = set()
    stack = list(outputs)
    while stack:
        value = stack.pop()
        if not isinstance(value, _pattern_ir.NodeOutputPattern):
            continue
        node = value.producer()
        if id(node) in seen:
            continue
        seen.add(id(node))
        identifier = node.op_identifier()
        if identifier is not None:
            required.add(identifier[1])
        stack.extend(v for v in node.inputs if v is not None)
    return frozenset(required)


def applicable_rules(model: ir.Model, rules: Sequence[pattern.RewriteRule]) -> list[pattern.RewriteRule]:
    """``rules`` without those that need an op type the model does not contain.

    onnxscript tries every rule at every node (and constant-propagates the whole graph per rule
    set), so a pass costs rules x nodes; rules that cannot match anywhere are skipped up front.
    The model's op types are read once: skipped rules could only become matchable through an
    earlier rule's rewrite, so the set is refreshed after each rule that rewrote something.
    """
    present = _op_types(model)
    kept = []
    for rule in rules:
        required = _required_op_types(rule)
        if required is None or required <= present:
            kept.append(rule)
    return kept


class _Driven:
    """A rule as the driver runs it: filtered by root op type, counted under its own name.

    onnxscript's driver calls every rule's ``try_rewrite`` on every node, and each call builds a
    match state before the op type fails (about 9 us); for single-output patterns with a constant
    root op the matcher starts by comparing that node's op type, so comparing it here first gives
    the same outcome for the cost of a string compare. onnxscript applies a returned replacement
    unless a tracer is attached, so counting non-None results gives each rule's own count from
    one traversal of the whole set. Every other attribute is the rule's own, and the tracer
    still logs under the rule itself.
    """

    def __init__(self, rule: pattern.RewriteRule, counts: collections.Counter | None = None,
                 sites: list[tuple[str, str]] | None = None, skip: Collection[str] = ()) -> None:
        self._rule = rule
        self._root = _root_op_type(rule)
        self._counts = counts
        self._sites = sites
        self._skip = skip
        self.rule_name = rule.name or type(rule).__name__

    def __getattr__(self, name: str):
        return getattr(self._rule, name)

    def try_rewrite(self, model, graph_or_function, node, *, verbose=None, tracer=None):
        if self._root is not None and node.op_type != self._root:
            return None
        if self._skip and node.name in self._skip:
            return None
        delta = self._rule.try_rewrite(model, graph_or_function, node, verbose=verbose, tracer=tracer)
        if delta is not None and tracer is None and self._counts is not None:
            self._counts[self.rule_name] += 1
            if self._sites is not None:
                self._sites.append((self.rule_name, node.name or ""))
        return delta


def _root_op_type(rule: pattern.RewriteRule) -> str | None:
    try:
        target = rule._target_pattern  # noqa: SLF001
        if not target.has_single_output_node:
            return None
        identifier = target.output_node.op_identifier()
    except AttributeError:
        return None
    return None if identifier is None else identifier[1]


RuleSet = tuple  # rules a pass lists as a tuple are alternatives: one rule set, one traversal


def rule_sets(rules: Sequence) -> list[list[pattern.RewriteRule]]:
    """The traversals a pass's ``rules`` take, in order.

    A tuple in the list is one rule set. A run of consecutive rules with the same root op type is
    one rule set too: at each node onnxscript tries a set's rules in order, which is the priority
    the list gives, so these are alternatives of one rewrite. Any other rule gets a traversal of
    its own, after the rules before it, since it may read what they made.
    """
    sets: list[list] = []
    open_root = None  # root op type of the last set while consecutive rules may join it
    for item in rules:
        if isinstance(item, RuleSet):
            sets.append(list(item))
            open_root = None
            continue
        root = _root_op_type(item)
        if root is not None and root == open_root:
            sets[-1].append(item)
        else:
            sets.append([item])
            open_root = root
    return sets


def flat_rules(rules: Sequence) -> list[pattern.RewriteRule]:
    return [rule for group in rule_sets(rules) for rule in group]


def apply_rules(model: ir.Model, rules: Sequence, *, explain: bool = True, skip: Collection[str] = ()) -> RuleOutcome:
    """Rewrite ``model`` in place with ``rules``; count rewrites per rule and collect declines.

    Each rule set (see ``rule_sets``) is applied in one traversal and every rule is counted under
    its own name. Rules needing an op type the model lacks are skipped (they cannot match); the
    model's op types are re-read after every traversal that rewrote something, since a rewrite
    can add op types. No rule rewrites at a node named in ``skip`` (its pattern's root node);
    ``outcome.sites`` lists where each rewrite was rooted.
    """
    outcome = RuleOutcome()
    present = _op_types(model)
    for group in rule_sets(rules):
        runnable = [rule for rule in group if (_required_op_types(rule) or frozenset()) <= present]
        if not runnable:
            continue
        driven = [_Driven(rule, outcome.rewrites, outcome.sites, skip) for rule in runnable]
        count = pattern.RewriteRuleSet(driven).apply_to_model(model)
        if count:
            logger.debug("rule set %s rewrote %d site(s)", [rule.name for rule in runnable], count)
            present = _op_types(model)
    outcome.rewrites = +outcome.rewrites  # no zero counts
    if explain:
        outcome.declines = explain_rules(model, rules)
    return outcome


@dataclasses.dataclass
class _SiteFilter:
    skip: Mapping[str, frozenset[str]]  # pass name -> root node names its rules leave alone
    rewritten: list[Site]


_FILTER: contextvars.ContextVar[_SiteFilter | None] = contextvars.ContextVar("graphopt_site_filter", default=None)


@contextlib.contextmanager
def site_filter(skip: Collection[Site] = ()) -> Iterator[list[Site]]:
    """Within the block, rule passes leave the ``skip`` sites alone (matched by pass name and root
    node name; an unnamed node cannot be named) and every site they rewrite is added to the list
    this yields."""
    by_pass: dict[str, set[str]] = collections.defaultdict(set)
    for site in skip:
        if site.node:
            by_pass[site.pass_name].add(site.node)
    active = _SiteFilter({name: frozenset(nodes) for name, nodes in by_pass.items()}, [])
    token = _FILTER.set(active)
    try:
        yield active.rewritten
    finally:
        _FILTER.reset(token)


def skipped_sites(pass_name: str) -> frozenset[str]:
    """The root node names pass ``pass_name`` must not rewrite at (``site_filter``); usually none."""
    active = _FILTER.get()
    return active.skip.get(pass_name, frozenset()) if active else frozenset()


def note_sites(pass_name: str, outcome: RuleOutcome) -> None:
    """Add the sites ``outcome`` rewrote to the active ``site_filter``'s list (none active: nothing)."""
    active = _FILTER.get()
    if active is not None:
        active.rewritten.extend(Site(pass_name, rule, node) for rule, node in outcome.sites)


def explain_rules(
    model: ir.Model, rules: Sequence, *, near_misses: bool = False
) -> list[Decline]:
    """Match ``rules`` without rewriting; return candidates whose check failed.

    With ``near_misses`` also return the best partial pattern matches (the pattern itself failed),
    which is what `graphopt explain` shows when a rule fires nowhere.
    """
    rules = applicable_rules(model, flat_rules(rules))  # a rule needing an absent op has no candidate, no near miss
    if not rules:
        return []
    tracer = _basics.MatchingTracer()
    ruleset = pattern.RewriteRuleSet([_Driven(rule) for rule in rules])
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
