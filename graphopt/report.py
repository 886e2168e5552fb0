"""The report: what changed, how much accuracy moved, how fast it runs — as data and as a table.

``Report`` is plain data (``as_dict`` is what ``report.json`` holds); ``render`` prints the human
table with rich. Everything needed to replay the run is in it, starting with the pipeline string.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

import onnx_ir as ir

from graphopt.pipeline import PassRecord

__all__ = ["REPORT_SCHEMA_VERSION", "Report", "model_summary", "op_histogram", "render"]


def op_histogram(model: ir.Model) -> dict[str, int]:
    counts = collections.Counter(
        (f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type)
        for n in ir.traversal.RecursiveGraphIterator(model.graph)
    )
    return dict(sorted(counts.items()))


def model_summary(model: ir.Model) -> dict[str, Any]:
    params = 0
    weight_bytes = 0
    for value in model.graph.initializers.values():
        if value.const_value is not None:
            params += value.const_value.size
            weight_bytes += value.const_value.nbytes
    return {
        "nodes": sum(1 for _ in ir.traversal.RecursiveGraphIterator(model.graph)),
        "parameters": int(params),
        "weight_bytes": int(weight_bytes),
        "opsets": dict(sorted(model.opset_imports.items())),
        "functions": sorted(f"{f.domain}::{f.name}" for f in model.functions.values()),
    }


REPORT_SCHEMA_VERSION = 1  # bump on any change of report.json's layout; docs/report.schema.json describes it


def _host() -> dict:
    from graphopt.host import describe_host  # noqa: PLC0415

    return dict(describe_host())


def _versions() -> dict:
    from graphopt.host import library_versions  # noqa: PLC0415

    return dict(library_versions())


@dataclasses.dataclass
class Report:
    model: str
    pipeline: str
    schema_version: int = REPORT_SCHEMA_VERSION
    host: dict = dataclasses.field(default_factory=_host)  # CPU model, ISA features, cores: ratios depend on them
    versions: dict = dataclasses.field(default_factory=_versions)  # graphopt and the libraries behind the numbers
    passes: list[PassRecord] = dataclasses.field(default_factory=list)  # one per pass, in order
    before: dict = dataclasses.field(default_factory=dict)
    after: dict = dataclasses.field(default_factory=dict)
    ops_before: dict = dataclasses.field(default_factory=dict)
    ops_after: dict = dataclasses.field(default_factory=dict)
    data: dict = dataclasses.field(default_factory=dict)
    accuracy: dict = dataclasses.field(default_factory=dict)
    accuracy_per_pass: dict = dataclasses.field(default_factory=dict)
    tolerances: dict = dataclasses.field(default_factory=dict)
    violations: list[str] = dataclasses.field(default_factory=list)
    integer_only: dict = dataclasses.field(default_factory=dict)  # integer_region verdict, when checked
    layers: list[dict] = dataclasses.field(default_factory=list)  # per-layer error of quantized values (layer_error)
    latency: dict = dataclasses.field(default_factory=dict)
    parity: dict = dataclasses.field(default_factory=dict)  # compiled target vs onnx (rewritten) and vs original
    targets: dict = dataclasses.field(default_factory=dict)
    seconds: dict = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    hints: list[str] = dataclasses.field(default_factory=list)  # what to try when a check failed

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["ok"] = self.ok
        return _jsonable(out)

    def __str__(self) -> str:  # print(result.report): the summary, not the dataclass repr
        verdict = "ok" if self.ok else f"FAILED ({len(self.violations)}): {self.violations[0]}"
        accuracy = ", ".join(f"{k} cosine {m.get('cosine') if m.get('cosine') is None else round(m['cosine'], 6)}" for k, m in self.accuracy.items())
        latency = ", ".join(f"{k} {t['median_ms']:.2f} ms" for k, t in self.latency.items())
        lines = [f"graphopt report: {self.model} | {self.pipeline} | nodes {self.before.get('nodes')} -> {self.after.get('nodes')} | {verdict}"]
        lines += [f"  accuracy: {accuracy}"] if accuracy else []
        lines += [f"  latency: {latency}"] if latency else []
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> Report:
        """The report that ``as_dict`` wrote (``report.json`` read back), e.g. to render it again."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["passes"] = [PassRecord(**p) for p in data.get("passes", [])]
        return cls(**values)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


WORST_LAYERS = 10  # per-layer rows shown without --verbose: the verdict must stay on screen


def render(report: Report, console=None, *, verbose: bool = False) -> None:
    """Print the report as tables (rich); the per-layer table shows the worst rows unless ``verbose``."""
    from rich.console import Console  # noqa: PLC0415 — rich only when printing

    console = console or Console()
    console.print(f"[bold]graphopt[/bold] {_user(report.model)}  pipeline: [cyan]{_user(report.pipeline)}[/cyan]")
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {_user(warning)}")
    _print_passes(console, report.passes)
    if report.data.get("interface"):
        _print_interface(console, report.data["interface"])
    _print_ops(console, report)
    if report.accuracy:
        _print_accuracy(console, report)
    if report.layers:
        _print_layers(console, report.layers, WORST_LAYERS if not verbose else len(report.layers))
    if report.data.get("sparsity"):
        _print_sparsity(console, report.data["sparsity"], WORST_LAYERS if not verbose else None)
    if report.data.get("attention"):
        _print_attention(console, report.data["attention"])
    if report.data.get("shift"):
        from graphopt.shift_report import print_shift  # noqa: PLC0415

        print_shift(console, report.data["shift"], WORST_LAYERS if not verbose else None, _table, _user)
    if report.parity:
        _print_parity(console, report.parity)
        _print_target_pairs(console, report.parity)
    if report.latency:
        _print_latency(console, report)
    for target, profile in report.data.get("profile", {}).items():
        _print_profile(console, target, profile, shown=10)
    if report.integer_only:
        _print_integer_only(console, report.integer_only)
    _print_verdict(console, report)


def _table(title: str, columns: Sequence[str]):
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    return table


def _print_passes(console, passes: Sequence[PassRecord]) -> None:
    table = _table("passes", ("pass", "rewrites", "nodes", "time", "declined / notes"))
    for p in passes:
        rewrites = ", ".join(f"{_user(k)} x{v}" for k, v in p.rewrites.items()) or "-"
        notes = [_user(n) for n in (*p.declines[:3], *p.notes)]
        if len(p.declines) > 3:
            notes.append(f"... {len(p.declines) - 3} more declines in report.json")
        table.add_row(_user(p.name), rewrites, f"{p.nodes_before} -> {p.nodes_after}", f"{p.seconds:.2f}s", "\n".join(notes))
    console.print(table)


def _print_interface(console, change: dict) -> None:
    """What a pass declaring changes_interface did to the model's inputs and outputs (graphopt.interface)."""
    table = _table(f"interface changed by {_user(', '.join(change['changed_by']))}", ("", "removed", "added"))
    for side in ("inputs", "outputs"):
        table.add_row(side, "\n".join(map(_user, change[f"{side}_removed"])) or "-", "\n".join(map(_user, change[f"{side}_added"])) or "-")
    console.print(table)
    console.print(f"compared: {_user(change.get('compared', '-'))}")


def _print_ops(console, report: Report) -> None:
    table = _table("ops before -> after (changed only)", ("op", "before", "after"))
    for op in sorted(set(report.ops_before) | set(report.ops_after)):
        before, after = report.ops_before.get(op, 0), report.ops_after.get(op, 0)
        if after != before:
            table.add_row(_user(op), str(before), str(after))
    console.print(table)
    size = f"{report.before.get('weight_bytes', 0) / 1e6:.2f} MB -> {report.after.get('weight_bytes', 0) / 1e6:.2f} MB"
    console.print(f"nodes {report.before.get('nodes')} -> {report.after.get('nodes')}; weights {size}")


def _print_accuracy(console, report: Report) -> None:
    masked = f", padding left out by {_user(report.data['mask'])}" if report.data.get("mask") else ""
    table = _table(f"accuracy vs original ({report.data.get('kind')} data, {report.data.get('samples')} samples{masked})",
                   ("output", "max abs", "mean abs", "cosine", "SQNR dB", "top-1", "checked"))
    for name, m in report.accuracy.items():
        top1 = "-" if m.get("top1") is None else f"{m['top1']:.4f}"
        table.add_row(_user(name), _num(m["max_abs"]), _num(m["mean_abs"]), _fixed(m["cosine"], 6), _num(m["sqnr_db"]), top1,
                      "yes" if m.get("checked", True) else "ignored")
    console.print(table)


def _print_sparsity(console, sparsity: dict, shown: int | None) -> None:
    def percent(value):
        return "n/a" if value is None else f"{100 * value:.1f}%"

    tensors = sparsity["tensors"]
    title = (f"activation sparsity on the validation samples: model-wide {percent(sparsity['model_wide'])} "
             f"(target {percent(sparsity.get('target_model_wide'))}, weighted by the parameters each zero skips)")
    if shown is not None and len(tensors) > shown:
        title += f"; the first {shown} of {len(tensors)} (--verbose for all)"
    table = _table(title, ("thresholded tensor", "target", "achieved", "params skipped where zero"))
    for t in tensors[:shown]:
        table.add_row(_user(t["site"]), percent(t["target"]), percent(t["achieved"]), str(t["weight"]))
    console.print(table)


def _print_attention(console, blocks: list[dict]) -> None:
    mean = sum(b["cosine"] for b in blocks) / len(blocks)
    table = _table(f"replaced attention blocks vs softmax on the validation samples: mean cosine {mean:.4f}",
                   ("attention output", "now", "pass", "feature map", "cosine", "relative error"))
    for b in blocks:
        table.add_row(_user(b["site"]), b["op_type"], b["made_by"], b["feature_map"] or "-", f"{b['cosine']:.4f}",
                      f"{b['relative_error']:.3g}")
    console.print(table)


def _print_parity(console, parity: dict) -> None:
    table = _table("backend parity (compiled target vs ONNX Runtime on the rewritten model, and vs the original)",
                   ("target", "output", "bit-exact vs onnx", "max abs vs onnx", "cosine vs original"))
    for target, p in parity.items():
        if not p.get("ran"):
            table.add_row(_user(target), "-", "not run", "-", _user(p.get("note", "")))
            continue
        for name, m in p["vs_onnx"].items():
            original = p["vs_original"].get(name, {})
            table.add_row(_user(target), _user(name), "yes" if p["bit_exact_vs_onnx"] else "no", _num(m["max_abs"]),
                          _fixed(original.get("cosine"), 6))
    console.print(table)


def _print_latency(console, report: Report) -> None:
    shapes = ", ".join(f"{_user(k)}[{','.join(map(str, v))}]" for k, v in report.data.get("shapes", {}).items())
    host = report.host
    table = _table(f"latency (median of runs; inputs {shapes}; {_user(host.get('cpu'))}, {' '.join(host.get('isa', [])[-3:])}, "
                   f"{host.get('cores')} cores)", ("run", "median ms", "p10-p90 ms", "threads", "vs original"))
    base = report.latency.get("original", {}).get("median_ms")
    for name, t in report.latency.items():
        ratio = f"{base / t['median_ms']:.2f}x" if base and t["median_ms"] else "-"
        table.add_row(_user(name), f"{t['median_ms']:.3f}", f"{t['p10_ms']:.3f}-{t['p90_ms']:.3f}", str(t["threads"]), ratio)
    console.print(table)


def _print_integer_only(console, verdict: dict) -> None:
    for op in verdict["float_ops"][:10]:
        values = ", ".join(f"{v['name']} {v['dtype']}" for v in op["values"])
        where = f", in {op['function']}" if op["function"] else ""
        console.print(f"[red]float op[/red] {_user(op['node'])} ({_user(op['op_type'])}{_user(where)}): {_user(values)}")
    if len(verdict["float_ops"]) > 10:
        console.print(f"... {len(verdict['float_ops']) - 10} more float ops in report.json")
    if verdict["ok"]:
        console.print(f"[green]{_user(verdict['verdict'])}[/green]")


def _print_verdict(console, report: Report) -> None:
    if report.violations:
        for violation in report.violations:
            console.print(f"[red]FAILED[/red] {_user(violation)}")
        for hint in report.hints:
            console.print(f"[yellow]hint:[/yellow] {_user(hint)}")
    elif report.accuracy:
        console.print("[green]numerics within tolerances[/green]")


def _print_profile(console, target: str, profile: dict, shown: int) -> None:
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=f"kernel profile of {_user(target)} ({profile['total_ms']:.3f} ms per run instrumented; "
                        f"{100 * profile['fallback_share']:.1f}% in fallback kernels)", title_justify="left")
    for column in ("kernel", "calls", "ms", "share", "schedule rule"):
        table.add_column(column)
    for row in profile["kernels"][:shown]:
        table.add_row(_user(row["kernel"]), str(row["calls"]), f"{row['ms']:.3f}", f"{100 * row['share']:.1f}%", _user(row["rule"]))
    console.print(table)


def _print_layers(console, layers: list[dict], shown: int) -> None:
    from rich.table import Table  # noqa: PLC0415

    worst = sorted(layers, key=lambda e: e["cosine"] if e["cosine"] is not None else -1.0)[:shown]
    title = "per-layer error (quantized value vs the original's float value)"
    if shown < len(layers):
        title += f": the worst {shown} of {len(layers)} (--verbose for all; report.json has every row)"
    table = Table(title=title, title_justify="left")
    for column in ("value", "where", "pass", "cosine", "SQNR dB", "max abs"):
        table.add_column(column)
    for e in worst:
        table.add_row(_user(e["value"]), _user(e["where"]), _user(e["made_by"]), _fixed(e["cosine"], 5), _num(e["sqnr_db"]), _num(e["max_abs"]))
    console.print(table)


def _user(text: Any) -> str:
    """User text (tensor names, paths, messages quoting them) printed as is: no rich markup, one row."""
    from rich.markup import escape  # noqa: PLC0415

    return escape(str(text)).replace("\r", "\\r").replace("\n", "\\n")


def _num(value: Any) -> str:
    if value is None:  # a metric that was not finite (report.json keeps it as null)
        return "n/a"
    return value if isinstance(value, str) else f"{value:.3g}"


def _fixed(value: Any, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _print_target_pairs(console, parity: dict) -> None:
    """The compiled targets compared with each other (printed when two or more ran)."""
    from rich.table import Table  # noqa: PLC0415

    pairs = [(a, b, p) for a, entry in parity.items() for b, p in entry.get("vs_targets", {}).items() if a < b]
    if not pairs:
        return
    table = Table(title="compiled targets vs each other", title_justify="left")
    for column in ("target", "target", "bit-exact", "max abs"):
        table.add_column(column)
    for a, b, p in pairs:
        table.add_row(_user(a), _user(b), "yes" if p["bit_exact"] else "no", _num(p["max_abs"]))
    console.print(table)
