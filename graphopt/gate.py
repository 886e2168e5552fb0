"""``graphopt check``: run a pipeline afresh and compare what it did with a committed baseline.

    result = graphopt.check("model.onnx", passes="canonicalize", calib="calib.npz", baseline="graphopt.lock.json")
    result.ok                       # False on a regression
    result.groups                   # ops, rewrites, accuracy/<output>, integer-only, latency/<target>
    result.check()                  # raises CheckFailedError naming the first regressed field

The baseline (the lock file, JSON, ``schema_version``) records what the pipeline did to the model:
op histograms before/after, rewrites and declines per pass and rule, accuracy metrics per output,
integer-only status, latency as a ratio to the original per target (never absolute times), the
library versions, a sha256 of the model, and the tolerances each field is checked with. The run
reuses compile's stages (``graphopt.stages``); ``update=True`` rewrites the file atomically,
keeping its tolerances. A baseline of another model or pipeline is a UsageError (exit 2).

The module is ``gate``, not ``check``: a submodule ``graphopt.check`` would replace the function
``graphopt.check`` on the package as soon as it was imported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any

from graphopt.errors import CheckFailedError, UsageError

__all__ = ["BASELINE_SCHEMA_VERSION", "DEFAULT_TOLERANCES", "Change", "CheckResult", "Group", "check", "model_hash"]

BASELINE_SCHEMA_VERSION = 1
# Editable in the baseline file; null turns a field's check off (it is still recorded and shown).
DEFAULT_TOLERANCES = {
    "ops": 0,  # how much any op's count (before and after the pipeline) may change
    "rewrites": 0,  # how much any rule's rewrite count may change; also whether a pass may appear or vanish
    "declines": 0,  # how much any rule's count of declined candidates may change
    "cosine_drop": 1e-4,  # how far cosine vs the original may fall (absolute)
    "sqnr_drop_db": 0.5,  # how far SQNR may fall, in dB ...
    "sqnr_cap_db": 80.0,  # ... with SQNR above this counted as this (float noise is not a regression)
    "top1_drop": 0.0,  # how far top-1 agreement may fall (logits outputs)
    "max_abs_growth": None,  # factor by which the max abs error may grow (null: not checked)
    "integer_only": True,  # true: a model that was integer-only must stay so
    "latency_worsening": 0.25,  # how much a target's time ratio to the original may grow (0.25: 25% slower)
    "sparsity_change": 0.02,  # how far a thresholded tensor's (and the model-wide) achieved sparsity may move (absolute)
}
INTEGER_ONLY_PREFIX = "integer-only: "  # the integer-only verifier's violation (graphopt.integer_region)
SKIPPED_STAGES = ("layer-error", "profile")  # compile's stages the gate records nothing of


@dataclasses.dataclass
class Change:
    """One field that differs from the baseline, and whether its tolerance allows it."""

    field: str
    baseline: Any
    now: Any
    allowed: str = ""
    ok: bool = True

    def message(self) -> str:
        limit = f" ({self.allowed})" if self.allowed else ""
        return f"{self.field}: {_show(self.baseline)} -> {_show(self.now)}{limit}"


@dataclasses.dataclass
class Group:
    """A checked field group: one JUnit test case."""

    name: str
    changes: list[Change] = dataclasses.field(default_factory=list)
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.changes)

    @property
    def failures(self) -> list[Change]:
        return [c for c in self.changes if not c.ok]


@dataclasses.dataclass
class CheckResult:
    baseline_path: str
    record: dict  # this run, in the baseline's layout
    baseline: dict | None  # the file as it was (None: there was none)
    groups: list[Group]
    report: Any  # the run's graphopt.report.Report
    updated: bool = False
    diff: list[Change] = dataclasses.field(default_factory=list)  # with update: old file -> new file
    notes: list[Change] = dataclasses.field(default_factory=list)  # changes that are information (versions)

    @property
    def ok(self) -> bool:
        return all(g.ok for g in self.groups)

    @property
    def failures(self) -> list[Change]:
        return [c for g in self.groups for c in g.failures]

    def check(self) -> CheckResult:
        """Raise CheckFailedError naming the regressed fields."""
        if not self.ok:
            raise CheckFailedError("; ".join(c.message() for c in self.failures))
        return self

    def as_dict(self) -> dict:
        return {
            "ok": self.ok, "baseline": self.baseline_path, "updated": self.updated,
            "model": self.record["model"], "pipeline": self.record["pipeline"],
            "groups": [{"name": g.name, "ok": g.ok, "skipped": g.skipped, "changes": [dataclasses.asdict(c) for c in g.changes]}
                       for g in self.groups],
            "notes": [dataclasses.asdict(c) for c in self.notes],
            "diff": [dataclasses.asdict(c) for c in self.diff],
        }

    def to_json(self) -> str:
        return json.dumps(_jsonable(self.as_dict()), indent=2, sort_keys=True) + "\n"

    def junit(self) -> str:
        return junit_xml(self)


def check(
    model: Any,
    passes: str | Sequence[str] = "canonicalize",
    *,
    baseline: str | os.PathLike,
    calib: Any = None,
    targets: Sequence[str] | str | None = None,
    input_shapes: Mapping[str, Sequence[int]] | Sequence[str] | None = None,
    bench_runs: int = 0,
    update: bool = False,
    seed: int = 0,
    threads: int = 2,
    phases: Any = None,
    name: str | None = None,
    budget: str | None = None,
) -> CheckResult:
    """Run ``passes`` on ``model`` (as ``graphopt.compile`` does) and compare with ``baseline``.

    Without ``update``, a missing baseline, or one recorded for another model (sha256) or pipeline,
    is a UsageError; a field beyond its tolerance makes ``result.ok`` False. With ``update`` the
    baseline is (re)written atomically with this run, keeping the old file's tolerances, and
    ``result.diff`` lists what changed. ``bench_runs > 0`` records and checks latency ratios.
    ``budget`` (``"cosine=0.995"``) rolls back the rewrites that miss it before the comparison, as
    ``graphopt.compile`` does; a budget that cannot be kept is a failed group of its own.
    """
    path = os.fspath(baseline)
    old = read_baseline(path, update=update)
    ctx = _context(model, passes, calib=calib, targets=targets, input_shapes=input_shapes, bench_runs=bench_runs,
                   seed=seed, threads=threads, name=name, budget=budget)
    if old is not None and not update:
        _same_pipeline(old, ctx.report.pipeline, path)
    _run(ctx, ("load",), phases)
    digest = model_hash(model, ctx.original)
    if old is not None and not update:
        _same_model(old, digest, path)
    _run(ctx, tuple(s.name for s in _stages() if s.name not in ("load", *SKIPPED_STAGES)), phases)
    # integer-only status is recorded for every pipeline and judged against the baseline, not as the run's own failure
    ctx.report.violations = [v for v in ctx.report.violations if not v.startswith(INTEGER_ONLY_PREFIX)]
    ctx.report.hints = ctx.report.hints if ctx.report.violations else []
    tolerances = tolerances_of(old, path) if old is not None else dict(DEFAULT_TOLERANCES)
    record = make_record(ctx, digest, tolerances)
    if update:
        write_baseline(path, record)
        return CheckResult(path, record, old, [], ctx.report, updated=True, diff=baseline_diff(old or {}, record))
    groups, notes = compare(old, record, tolerances)
    if budget is not None:
        groups.append(_budget_group(ctx.report.data.get("budget")))
    return CheckResult(path, record, old, groups, ctx.report, notes=notes)


def _budget_group(kept: dict | None) -> Group:
    """--budget as a checked group: held when the floor was met (after any rollback)."""
    if not kept:
        return Group("budget", skipped="not measured (no validation ran)")
    floor = f"{kept['metric']} >= {kept['floor']:.10g}"
    rolled = ", ".join(f"{r['pass']}/{r['rule']} at {r['node']}" for r in kept["rolled_back"]) or "nothing rolled back"
    return Group("budget", [Change(f"budget.{kept['metric']}", kept["initial"], kept["final"], f"{floor}; {rolled}", bool(kept["met"]))])


# --- the run ---------------------------------------------------------------------------------


def _stages():
    from graphopt.stages import COMPILE_STAGES  # noqa: PLC0415

    return COMPILE_STAGES


def _context(model, passes, *, calib, targets, input_shapes, bench_runs, seed, threads, name, budget=None):
    """Settings checked as compile checks them (``api.checked_settings``); integer-only status always recorded."""
    from graphopt import backends  # noqa: PLC0415
    from graphopt.api import checked_settings, describe_model  # noqa: PLC0415
    from graphopt.report import Report  # noqa: PLC0415
    from graphopt.stages import Context  # noqa: PLC0415

    if bench_runs < 0:
        raise UsageError(f"--bench-runs must be 0 or more, got {bench_runs}")
    settings = checked_settings(passes, calib=calib, targets=targets, input_shapes=input_shapes, integer_only=True, tolerances=None,
                         ort_optimization="all", tune_budget=0, tune_database=None, bench_runs=bench_runs, seed=seed, threads=threads,
                         budget=budget)
    report = Report(model=name or describe_model(model), pipeline=str(settings.pipeline))
    return Context(model, settings, report, {t: backends.get_backend(t) for t in settings.targets})


def _run(ctx, names: tuple[str, ...], phases) -> None:
    from graphopt.stages import run_stages  # noqa: PLC0415

    run_stages(ctx, [s for s in _stages() if s.name in names], phases)


def model_hash(source: Any, loaded: Any) -> str:
    """sha256 of the model file's bytes and its external data files (by location, in order); for an
    in-memory model, of its deterministic serialization."""
    digest = hashlib.sha256()
    if isinstance(source, (str, os.PathLike)) and os.path.isfile(source):
        _hash_file(digest, os.fspath(source))
        folder = os.path.dirname(os.path.abspath(source))
        for data_path in _external_files(loaded):
            digest.update(os.path.relpath(data_path, folder).encode() + b"\0")
            _hash_file(digest, data_path)
        return digest.hexdigest()
    import onnx  # noqa: PLC0415
    import onnx_ir as ir  # noqa: PLC0415

    proto = source if isinstance(source, onnx.ModelProto) else ir.serde.serialize_model(loaded)
    digest.update(proto.SerializeToString(deterministic=True))
    return digest.hexdigest()


def _external_files(loaded) -> list[str]:
    import onnx_ir as ir  # noqa: PLC0415

    paths = {os.path.abspath(v.const_value.path) for g in loaded.graphs() for v in g.initializers.values()
             if isinstance(v.const_value, ir.ExternalTensor)}
    return sorted(paths)


def _hash_file(digest, path: str) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)


# --- the record ------------------------------------------------------------------------------


def make_record(ctx, digest: str, tolerances: dict) -> dict:
    """This run in the baseline's layout (plain JSON data)."""
    report = ctx.report
    latency, fastest = {}, {}
    original = report.latency.get("original", {})
    for target, timing in report.latency.items():
        if target != "original" and original.get("median_ms"):
            latency[target] = round(timing["median_ms"] / original["median_ms"], 4)
            fastest[target] = round(_fastest_ratio(timing, original), 4)
    return {
        "schema_version": BASELINE_SCHEMA_VERSION,
        "model": {"name": os.path.basename(report.model), "sha256": digest},
        "pipeline": report.pipeline,
        "targets": list(ctx.settings.targets),
        "data": {k: report.data[k] for k in ("kind", "samples") if k in report.data},
        "versions": dict(report.versions),
        "ops_before": dict(report.ops_before),
        "ops_after": dict(report.ops_after),
        "passes": _passes(report.passes),
        "accuracy": {out: _metrics(m) for out, m in report.accuracy.items()},
        "integer_only": bool(report.integer_only.get("ok")) if report.integer_only else None,
        "latency": latency,
        "latency_fastest": fastest,
        "sparsity": _sparsity(report.data.get("sparsity")),
        "tolerances": tolerances,
    }


def _sparsity(measured: dict | None) -> dict | None:
    """Achieved sparsity per thresholded tensor and model-wide (cats, teal, ...); None without thresholds."""
    if not measured:
        return None
    return {"model_wide": measured["model_wide"], "tensors": {t["site"]: t["achieved"] for t in measured["tensors"]}}


def _fastest_ratio(timing: dict, original: dict) -> float:
    """The smallest of the per-round ratios (rounds alternate between the runners, so a round's pair
    saw the same machine): what the target's ratio is at least, whatever the load did."""
    pairs = list(zip(timing.get("rounds_ms") or [], original.get("rounds_ms") or []))
    if not pairs:
        return timing["median_ms"] / original["median_ms"]
    return min(t / o for t, o in pairs)


def _passes(records) -> dict:
    """Per pass (a second run of one pass is ``name#2``): rewrites and declines per rule."""
    out: dict[str, dict] = {}
    for record in records:
        key, n = record.name, 2
        while key in out:
            key, n = f"{record.name}#{n}", n + 1
        declines: dict[str, int] = {}
        for decline in record.declines:
            rule = decline.split(" at ", 1)[0]
            declines[rule] = declines.get(rule, 0) + 1
        out[key] = {"rewrites": dict(sorted(record.rewrites.items())), "declines": dict(sorted(declines.items()))}
    return out


def _metrics(m: dict) -> dict:
    kept = {k: m.get(k) for k in ("cosine", "sqnr_db", "top1", "max_abs", "mean_abs")}
    return {k: (None if v is None else _finite(float(f"{v:.9g}") if isinstance(v, float) else v)) for k, v in kept.items()}


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _number(value) -> float | None:
    return None if value is None else float(value)


# --- the baseline file -----------------------------------------------------------------------


def read_baseline(path: str, *, update: bool) -> dict | None:
    """The baseline's content; None when there is none yet (or, with update, an unreadable one)."""
    if os.path.isdir(path):
        raise UsageError(f"--baseline {path} is a folder; give a file such as {os.path.join(path, 'graphopt.lock.json')}")
    if not os.path.exists(path):
        if update:
            _check_writable(path)
            return None
        raise UsageError(f"no baseline at {path}: create it with --update (graphopt check MODEL --passes P --baseline {path} --update)")
    if update:
        _check_writable(path)
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        if update:
            return None
        raise UsageError(f"baseline {path} cannot be read ({e}): fix it or write it again with --update") from e
    if not isinstance(content, dict) or content.get("schema_version") != BASELINE_SCHEMA_VERSION:
        version = content.get("schema_version") if isinstance(content, dict) else None
        if update:
            return None
        raise UsageError(f"baseline {path} has schema_version {version!r}, this graphopt reads {BASELINE_SCHEMA_VERSION}: "
                         "write it again with --update")
    return content


def _check_writable(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--baseline {path}: folder {folder} does not exist or is not writable")


def write_baseline(path: str, record: dict) -> None:
    """Atomically: a temporary file in the same folder, then os.replace (never a half-written file)."""
    from graphopt.storage import atomic_write_text  # noqa: PLC0415

    atomic_write_text(path, json.dumps(_jsonable(record), indent=2, sort_keys=True) + "\n")


def tolerances_of(baseline: dict, path: str) -> dict:
    """The file's tolerances over the defaults; an unknown key or a bad value is a UsageError."""
    given = baseline.get("tolerances") or {}
    unknown = sorted(set(given) - set(DEFAULT_TOLERANCES))
    if unknown:
        raise UsageError(f"baseline {path}: unknown tolerance {', '.join(unknown)} (valid: {', '.join(DEFAULT_TOLERANCES)})")
    for key, value in given.items():
        kind = bool if key == "integer_only" else (int, float)
        if value is not None and (not isinstance(value, kind) or (kind != bool and isinstance(value, bool)) or
                                  (kind != bool and value < 0)):
            raise UsageError(f"baseline {path}: tolerance {key} must be {'true/false' if kind is bool else 'a number >= 0'} or null, "
                             f"got {value!r}")
    return {**DEFAULT_TOLERANCES, **given}


def _same_pipeline(baseline: dict, pipeline: str, path: str) -> None:
    if baseline.get("pipeline") != pipeline:
        raise UsageError(f"baseline {path} is for pipeline '{baseline.get('pipeline')}', this run is '{pipeline}': "
                         "check with that pipeline, or record this one with --update")


def _same_model(baseline: dict, digest: str, path: str) -> None:
    recorded = (baseline.get("model") or {}).get("sha256")
    if recorded != digest:
        raise UsageError(f"baseline {path} is for model sha256 {str(recorded)[:16]}…, this model is {digest[:16]}…: "
                         "a different model (or a re-export); record it with --update")


# --- the comparison --------------------------------------------------------------------------


def compare(baseline: dict, record: dict, tol: dict) -> tuple[list[Group], list[Change]]:
    """The checked groups (ops, rewrites, accuracy/<output>, integer-only, latency/<target>, sparsity) and
    the changes that are information only (library versions, data, targets)."""
    groups = [
        Group("ops", _counts("ops_before", baseline.get("ops_before", {}), record["ops_before"], tol["ops"])
              + _counts("ops_after", baseline.get("ops_after", {}), record["ops_after"], tol["ops"])),
        Group("rewrites", _compare_passes(baseline.get("passes", {}), record["passes"], tol)),
    ]
    old_accuracy = baseline.get("accuracy", {})
    for output in sorted(set(old_accuracy) | set(record["accuracy"])):
        groups.append(Group(f"accuracy/{output}", _compare_accuracy(output, old_accuracy.get(output), record["accuracy"].get(output), tol)))
    groups.append(Group("integer-only", _compare_integer_only(baseline.get("integer_only"), record["integer_only"], tol)))
    groups += _compare_latency(baseline.get("latency", {}), record["latency"], tol, record.get("latency_fastest", {}))
    if baseline.get("sparsity") or record.get("sparsity"):
        groups.append(Group("sparsity", _compare_sparsity(baseline.get("sparsity") or {}, record.get("sparsity") or {}, tol)))
    notes = [c for key in ("versions", "data") for c in _counts(key, baseline.get(key, {}), record[key], None, missing=None)]
    if baseline.get("targets") != record["targets"]:
        notes.append(Change("targets", baseline.get("targets"), record["targets"]))
    return groups, notes


def _counts(prefix: str, old: dict, new: dict, limit, *, missing: Any = 0) -> list[Change]:
    """A change per key whose value differs; a count may move by ``limit`` (None: not checked)."""
    changes = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, missing), new.get(key, missing)
        if before == after:
            continue
        ok = limit is None or not isinstance(before, int) or not isinstance(after, int) or abs(after - before) <= limit
        changes.append(Change(f"{prefix}.{key}", before, after, "" if limit is None else _may_change(limit), ok))
    return changes


def _may_change(limit) -> str:
    return "must not change" if not limit else f"may change by {limit}"


def _compare_passes(old: dict, new: dict, tol: dict) -> list[Change]:
    changes = []
    for key in sorted(set(old) | set(new), key=lambda k: (list(new).index(k) if k in new else len(new), k)):
        if (key in old) != (key in new):
            ran = "ran" if key in old else "not run"
            changes.append(Change(f"passes.{key}", ran, "not run" if key in old else "ran",
                                  "" if tol["rewrites"] is None else "the pipeline's passes must not change", tol["rewrites"] is None))
        before, after = old.get(key, {}), new.get(key, {})
        changes += _counts(f"passes.{key}.rewrites", before.get("rewrites", {}), after.get("rewrites", {}), tol["rewrites"])
        changes += _counts(f"passes.{key}.declines", before.get("declines", {}), after.get("declines", {}), tol["declines"])
    return changes


def _compare_accuracy(output: str, old: dict | None, new: dict | None, tol: dict) -> list[Change]:
    if old is None or new is None:
        return [Change(f"accuracy.{output}", "measured" if old else "absent", "measured" if new else "absent",
                       "the outputs must not change", new is not None)]
    cap = _number(tol["sqnr_cap_db"])
    rules = (("cosine", tol["cosine_drop"], "may drop by", None), ("sqnr_db", tol["sqnr_drop_db"], "may drop by", cap),
             ("top1", tol["top1_drop"], "may drop by", None), ("max_abs", tol["max_abs_growth"], "may grow by a factor", None),
             ("mean_abs", None, "", None))
    changes = []
    for metric, limit, words, ceiling in rules:
        before, after = _number(old.get(metric)), _number(new.get(metric))
        if _show(before) == _show(after):
            continue
        ok = limit is None or before is None or (after is not None and _holds(metric, before, after, limit, ceiling))
        changes.append(Change(f"accuracy.{output}.{metric}", before, after, "" if limit is None else f"{words} {limit:g}", ok))
    return changes


def _holds(metric: str, before: float, after: float, limit: float, ceiling: float | None) -> bool:
    if ceiling is not None:
        before, after = min(before, ceiling), min(after, ceiling)
    if metric == "max_abs":
        return after <= before * (1 + limit) if before > 0 else after <= limit
    return after >= before - limit - 1e-12


def _compare_integer_only(old, new, tol: dict) -> list[Change]:
    if old == new:
        return []
    ok = not (tol["integer_only"] and old is True)
    return [Change("integer_only", old, new, "must stay true" if tol["integer_only"] else "", ok)]


def _compare_sparsity(old: dict, new: dict, tol: dict) -> list[Change]:
    limit = tol["sparsity_change"]
    allowed = "" if limit is None else f"may move by {limit:g}"
    pairs = [("sparsity.model_wide", old.get("model_wide"), new.get("model_wide"))]
    old_tensors, new_tensors = old.get("tensors", {}), new.get("tensors", {})
    pairs += [(f"sparsity.{site}", old_tensors.get(site), new_tensors.get(site)) for site in sorted(set(old_tensors) | set(new_tensors))]
    changes = []
    for field, before, after in pairs:
        if before == after:
            continue
        ok = limit is None or (before is not None and after is not None and abs(after - before) <= limit)
        changes.append(Change(field, before, after, allowed, ok))
    return changes


def _compare_latency(old: dict, new: dict, tol: dict, fastest: dict) -> list[Group]:
    """A target regressed when even its fastest per-round ratio is beyond the allowed growth: a loaded
    runner's noise lowers that ratio instead of failing the check."""
    groups = []
    for target in sorted(set(old) | set(new)):
        if target not in new:
            groups.append(Group(f"latency/{target}", skipped="not timed in this run (the baseline has it): add --bench-runs N"))
            continue
        before, after, limit = old.get(target), new[target], tol["latency_worsening"]
        if before is None or before == after:
            groups.append(Group(f"latency/{target}", [] if before is not None else [Change(f"latency.{target}", None, after)]))
            continue
        ok = limit is None or min(after, fastest.get(target, after)) <= before * (1 + limit)
        allowed = "" if limit is None else f"time vs original may grow by {limit:.0%} (in every timing round)"
        groups.append(Group(f"latency/{target}", [Change(f"latency.{target}", before, after, allowed, ok)]))
    return groups


def baseline_diff(old: dict, new: dict) -> list[Change]:
    """Every leaf that differs between two baselines (for --update), by dotted path."""
    flat_old, flat_new = _flatten(old), _flatten(new)
    return [Change(key, flat_old.get(key), flat_new.get(key)) for key in sorted(set(flat_old) | set(flat_new))
            if flat_old.get(key) != flat_new.get(key)]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value} if prefix else {}


# --- output: table, JSON, JUnit ----------------------------------------------------------------


def junit_xml(result: CheckResult) -> str:
    """JUnit XML: one test case per checked field group, a failure per regressed group."""
    suite = ET.Element("testsuite", name="graphopt check", tests=str(len(result.groups)),
                       failures=str(sum(not g.ok for g in result.groups)), skipped=str(sum(g.skipped is not None for g in result.groups)),
                       errors="0")
    classname = f"graphopt.check.{result.record['model']['name']}"
    for group in result.groups:
        case = ET.SubElement(suite, "testcase", classname=classname, name=group.name)
        if group.skipped is not None:
            ET.SubElement(case, "skipped", message=group.skipped)
        elif not group.ok:
            messages = [c.message() for c in group.failures]
            failure = ET.SubElement(case, "failure", message=messages[0], type="regression")
            failure.text = "\n".join(messages)
        if group.changes:
            ET.SubElement(case, "system-out").text = "\n".join(c.message() for c in group.changes)
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def render(result: CheckResult, console) -> None:
    """The human table: what changed against the baseline (or, with --update, in it) and the verdict."""
    from rich.markup import escape  # noqa: PLC0415

    path = escape(result.baseline_path)
    if result.updated:
        _render_update(result, console, path)
        return
    rows = [(g.name, c, "ok" if c.ok else "[red]REGRESSION[/red]") for g in result.groups for c in g.changes]
    rows += [("run", c, "info") for c in result.notes]
    if rows:
        table = _table(f"changes against {path}", ("group", "field", "baseline", "now", "allowed", "verdict"))
        for group, c, verdict in rows:
            table.add_row(escape(group), escape(c.field), escape(_show(c.baseline)), escape(_show(c.now)), escape(c.allowed), verdict)
        console.print(table)
    else:
        console.print(f"no change against {path}")
    for group in result.groups:
        if group.skipped:
            console.print(f"[yellow]skipped[/yellow] {escape(group.name)}: {escape(group.skipped)}")
    failed = f"[red]check failed[/red]: {len(result.failures)} field(s) beyond tolerance"
    console.print(f"{'[green]check holds[/green]' if result.ok else failed} ({len(result.groups)} groups against {path})")


def _render_update(result: CheckResult, console, path: str) -> None:
    from rich.markup import escape  # noqa: PLC0415

    if result.baseline is None:
        console.print(f"{path} created ({len(result.record['passes'])} passes, {len(result.record['accuracy'])} outputs recorded)")
        return
    if not result.diff:
        console.print(f"{path} written: no change against the old file")
        return
    console.print(f"{path} written; what changed against the old file:")
    table = _table(None, ("field", "old", "new"))
    for c in result.diff:
        table.add_row(escape(c.field), escape(_show(c.baseline)), escape(_show(c.now)))
    console.print(table)


def _table(title: str | None, columns: Sequence[str]):
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    return table


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return _finite(value)
