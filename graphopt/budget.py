"""A numeric budget for a compile, kept by rolling back the rewrites that break it.

``--budget cosine=0.995`` (or ``sqnr=30``, ``top1=0.99``) is a floor on the worst checked output.
When the rewritten model misses it:

1. the pass: the pipeline runs once more, keeping the model after every pass, and a bisection
   over those models finds the first pass after which the floor is missed;
2. its sites: every rewrite of that pass is rooted at a node, named by its name (nodes of the
   original without a unique name get one first; ``rewrite.site_filter`` records the sites); repeated bisections over the list find a small set whose rollback meets the
   floor, each probe re-running the pipeline up to that pass with those sites left alone;
3. the rollback: the rewrite stage runs again with the sites left alone; when the floor is still
   missed, the next pass is searched the same way.

Each probe is one ONNX Runtime run over the evaluation samples; the report counts them
(``report.data["budget"]["validation_runs"]``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from graphopt import rewrite
from graphopt.errors import UsageError
from graphopt.metrics import apply_mask, compare_outputs
from graphopt.pipeline import run_pipeline

__all__ = ["Budget", "enforce", "minimal_sites", "parse_budget"]

logger = logging.getLogger(__name__)

METRICS = {"cosine": "cosine", "sqnr": "sqnr_db", "top1": "top1"}  # the flag's name -> OutputMetrics field
MAX_ROUNDS = 4  # passes searched one after another before giving up


@dataclasses.dataclass(frozen=True)
class Budget:
    metric: str  # a key of METRICS
    floor: float

    def __str__(self) -> str:
        return f"{self.metric}={self.floor:.10g}"

    def met(self, value: float) -> bool:
        return value >= self.floor  # NaN misses


def parse_budget(text: str | Budget) -> Budget:
    """``cosine=0.995`` / ``sqnr=30`` / ``top1=0.99``; anything else is a UsageError."""
    if isinstance(text, Budget):
        return text
    metric, sep, value = str(text).partition("=")
    metric = metric.strip().lower()
    if not sep or metric not in METRICS:
        raise UsageError(f"--budget takes METRIC=FLOOR with METRIC one of {', '.join(METRICS)}, got {text!r} (e.g. cosine=0.995)")
    try:
        floor = float(value)
    except ValueError:
        raise UsageError(f"--budget {text!r}: the floor must be a number") from None
    if not math.isfinite(floor) or (metric != "sqnr" and not -1.0 <= floor <= 1.0):
        raise UsageError(f"--budget {text!r}: a {metric} floor lies in [-1, 1]" if metric != "sqnr" else f"--budget {text!r}: give a finite dB value")
    return Budget(metric, floor)


class _Measure:
    """The budget's metric of a model: the worst checked output over the evaluation samples, one
    ONNX Runtime run each, counted."""

    def __init__(self, ctx, budget: Budget) -> None:
        from graphopt import stages  # noqa: PLC0415 — stages runs this module's enforce

        self._ctx, self._budget, self._stages = ctx, budget, stages
        self.runs = 0

    def __call__(self, model: ir.Model) -> float:
        ctx, s = self._ctx, self._ctx.settings
        self.runs += 1
        outputs = self._stages.run_rewritten(model.clone(), ctx.eval_samples, s.threads)
        reference, mask = ctx.reference, self._stages.mask_input(ctx)
        if mask is not None:
            reference, outputs = apply_mask(reference, ctx.eval_samples, mask), apply_mask(outputs, ctx.eval_samples, mask)
        metrics = compare_outputs(reference, outputs)
        field = METRICS[self._budget.metric]
        values = [getattr(m, field) for name, m in metrics.items()
                  if (s.outputs is None or name in s.outputs) and name not in s.ignore_outputs]
        values = [v for v in values if v is not None]
        if not values:
            raise UsageError(f"--budget {self._budget}: no checked output has a {self._budget.metric} (top-1 needs a logits output)")
        return min(values)


class _Stop(Exception):  # noqa: N818 — control flow: a prefix of the pipeline has run
    pass


def _run(ctx, skip: Sequence[rewrite.Site], *, upto: int | None = None, keep: Callable | None = None):
    """The pipeline on a fresh copy of the original with ``skip`` left alone, up to pass ``upto``
    (all of it when None); ``keep(name, model, sites so far)`` sees the model after every pass."""
    model, index = ctx.original.clone(), -1

    def after(name: str, m: ir.Model) -> None:
        nonlocal index
        index += 1
        if keep is not None:
            keep(name, m, list(rewritten))
        if index == upto:
            raise _Stop

    with rewrite.site_filter(skip) as rewritten:
        try:
            run_pipeline(model, ctx.settings.pipeline, after_each=after, samples=ctx.samples)
        except _Stop:
            pass
    return model, rewritten


def minimal_sites(sites: Sequence, meets: Callable[[list], bool]) -> list:
    """A small subset of ``sites`` whose rollback ``meets`` the budget (rolling back none does not,
    all does): repeated bisections over the list, each finding the shortest prefix that suffices
    with what was found so far; its last site is needed and joins the set. About
    ``k·log2(len(sites))`` probes for ``k`` sites found; rolling back more is assumed never to hurt."""
    found: list = []
    rest = list(sites)
    while True:
        low, high = 0, len(rest)  # found+rest[:low] misses, found+rest[:high] meets
        while high - low > 1:
            middle = (low + high) // 2
            if meets(found + rest[:middle]):
                high = middle
            else:
                low = middle
        found.append(rest[high - 1])
        rest = rest[:high - 1]
        if not rest or meets(found):
            return found


def _first_failing(models: Sequence[ir.Model], names: Sequence[str], measure: Callable[[ir.Model], float], budget: Budget,
                   trace: list) -> int:
    """The first of ``models`` (after each pass; the last is known to miss) that misses ``budget``."""
    low, high = -1, len(models) - 1  # before pass 0 (the original) meets; after the last misses
    while high - low > 1:
        middle = (low + high) // 2
        value = measure(models[middle])
        trace.append({"probe": "pass", "pass": names[middle], "pass_index": middle, "value": value, "met": budget.met(value)})
        if budget.met(value):
            low = middle
        else:
            high = middle
    return high


def _culprit_pass(ctx, rolled: list[rewrite.Site], measure: _Measure, budget: Budget, trace: list) -> tuple[str, int, list[rewrite.Site]]:
    """The first pass after which ``budget`` is missed (its name and place in the pipeline) and the
    sites it rewrote: one more pipeline run keeps the model after every pass, and a bisection
    measures a few of them."""
    models, names, sites_after = [], [], []

    def keep(name: str, model: ir.Model, sites: list) -> None:
        models.append(model.clone())
        names.append(name)
        sites_after.append(sites)

    _run(ctx, rolled, keep=keep)
    index = _first_failing(models, names, measure, budget, trace)
    before = len(sites_after[index - 1]) if index > 0 else 0
    return names[index], index, [s for s in sites_after[index][before:] if s.pass_name == names[index]]


def enforce(ctx, budget: Budget, rerun: Callable) -> None:
    """Keep ``budget`` on ``ctx.work``: measure it, and when it is missed find and roll back the
    sites to blame, re-running the rewrite stage (``rerun(ctx)``) with them left alone. Fills
    ``report.data["budget"]``; a budget that cannot be kept is a violation (exit 1)."""
    measure = _Measure(ctx, budget)
    initial = value = measure(ctx.work)
    trace: list[dict] = [{"probe": "rewritten", "value": value, "met": budget.met(value)}]
    rolled: list[rewrite.Site] = []
    culprits: list[str] = []
    problem = None
    if not budget.met(value):
        common_passes.NameFixPass()(ctx.original)  # a rewrite is rolled back by its root node's name: every node gets a unique one
    for _ in range(MAX_ROUNDS):
        if budget.met(value):
            break
        name, index, sites = _culprit_pass(ctx, rolled, measure, budget, trace)
        sites = [s for s in sites if s.node and s not in rolled]
        culprits.append(name)
        if not sites:
            problem = (f"pass '{name}' (#{index + 1}) breaks it and has no rewrite that can be rolled back alone "
                       "(it does not run its rules through the rule driver, graphopt.pass_base.RulePass)")
            break

        def meets(skip: list, index: int = index, name: str = name) -> bool:
            model, _ = _run(ctx, rolled + skip, upto=index)
            probe = measure(model)
            trace.append({"probe": "sites", "pass": name, "skipped": len(skip), "value": probe, "met": budget.met(probe)})
            return budget.met(probe)

        if not meets(sites):
            problem = f"pass '{name}' (#{index + 1}) misses it even with all {len(sites)} of its rewrites rolled back"
            break
        rolled += minimal_sites(sites, meets)
        with rewrite.site_filter(rolled):
            rerun(ctx)
        value = measure(ctx.work)
        trace.append({"probe": "rolled back", "value": value, "met": budget.met(value)})
    met = budget.met(value)
    ctx.report.data["budget"] = {
        "metric": budget.metric, "floor": budget.floor, "initial": _number(initial), "final": _number(value), "met": met,
        "validation_runs": measure.runs, "culprit_passes": culprits,
        "rolled_back": [{"pass": s.pass_name, "rule": s.rule, "node": s.node} for s in rolled],
        "trace": [{k: _number(v) if isinstance(v, float) else v for k, v in step.items()} for step in trace],
    }
    if not met:
        why = problem or f"still missed after {MAX_ROUNDS} passes were searched"
        ctx.report.data["budget"]["problem"] = why
        ctx.report.violations.append(f"budget {budget}: {budget.metric} {value:.10g} < {budget.floor:.10g}: {why}")
    logger.info("budget %s: %s -> %s, %d site(s) rolled back, %d validation run(s)", budget, initial, value, len(rolled), measure.runs)


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None
