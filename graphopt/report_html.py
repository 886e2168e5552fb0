"""``report.html``: the report as one self-contained page (inline CSS and SVG plots, no script, no network).

Sections, each shown only when the run has its data: verdict, check against the baseline (for
``graphopt check``), pipeline, op diff, accuracy, per-layer error (plot + worst rows), backend
parity, latency (plot), kernel profile, sparsity (plot), budget bisection trace, integer-only
verdict, host and versions. Every section is a ``<section id=...>`` so tests and users can link to it.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from graphopt import report_plots, storage
from graphopt.report import Report

__all__ = ["render_html", "write_html"]

LAYER_ROWS = 20  # worst per-layer rows in the table; report.json has every row
PROFILE_ROWS = 15
DECLINES_SHOWN = 5
LAYER_FLOOR_DB = 20.0  # a quantized value below this SQNR is drawn red: about 1% relative error

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;padding:16px 24px;color:#1c2833}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px;border-bottom:1px solid #d5d8dc;padding-bottom:4px}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}th,td{border:1px solid #d5d8dc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f6f7}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.ok{color:#1e8449;font-weight:600}.bad{color:#c0392b;font-weight:600}.warn{color:#b9770e}.muted{color:#7f8c8d}
.verdict{padding:8px 12px;border-radius:4px;margin:10px 0}.verdict.ok{background:#e9f7ef}.verdict.bad{background:#fdedec}
svg{max-width:100%;height:auto}ul{margin:4px 0;padding-left:22px}
"""


class _Raw(str):
    """Markup made here (already escaped): inserted as is."""


def _e(value: Any) -> str:
    return value if isinstance(value, _Raw) else html.escape(str(value))


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}g}" if math.isfinite(value) else str(value)


def _fixed(value: Any, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric: Iterable[int] = ()) -> str:
    right = set(numeric)
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td{' class=num' if i in right else ''}>{_e(cell)}</td>" for i, cell in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(anchor: str, title: str, *parts: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{"".join(parts)}</section>'


def _mark(ok: bool, yes: str = "yes", no: str = "no") -> _Raw:
    return _Raw(f'<span class="ok">{_e(yes)}</span>' if ok else f'<span class="bad">{_e(no)}</span>')


def _summary(report: Report, check: Any) -> str:
    ok = report.ok and (check is None or check.ok)
    if check is not None and not check.ok:
        verdict = f"check failed: {len(check.failures)} field(s) beyond tolerance against {check.baseline_path}"
    elif not report.ok:
        verdict = f"FAILED: {report.violations[0]}"
    else:
        verdict = "check holds" if check is not None else "numerics within tolerances" if report.accuracy else "done"
    items = [f"<li class=bad>{_e(v)}</li>" for v in report.violations]
    items += [f"<li class=warn>hint: {_e(h)}</li>" for h in report.hints]
    items += [f"<li class=warn>warning: {_e(w)}</li>" for w in report.warnings]
    nodes = f"nodes {report.before.get('nodes')} → {report.after.get('nodes')}"
    weights = f"weights {report.before.get('weight_bytes', 0) / 1e6:.2f} MB → {report.after.get('weight_bytes', 0) / 1e6:.2f} MB"
    return (f"<h1>graphopt report: {_e(report.model)}</h1>"
            f"<div>pipeline <code>{_e(report.pipeline)}</code> · {_e(nodes)} · {_e(weights)}</div>"
            f'<div id="verdict" class="verdict {"ok" if ok else "bad"}">{_e(verdict)}</div>'
            + (f"<ul>{''.join(items)}</ul>" if items else ""))


def _check_section(check: Any) -> str:
    rows = [(g.name, c.field, _show(c.baseline), _show(c.now), c.allowed, _mark(c.ok, "ok", "REGRESSION"))
            for g in check.groups for c in g.changes]
    rows += [("run", c.field, _show(c.baseline), _show(c.now), c.allowed, "info") for c in check.notes]
    groups = _table(("group", "verdict"), [(g.name, _Raw('<span class="warn">skipped: ' + _e(g.skipped) + "</span>") if g.skipped
                                            else _mark(g.ok, "holds", "regressed")) for g in check.groups])
    changes = _table(("group", "field", "baseline", "now", "allowed", "verdict"), rows) if rows else "<p>no change against the baseline</p>"
    return _section("check", f"check against {check.baseline_path}", groups, changes)


def _show(value: Any) -> str:
    return _num(value, 6) if isinstance(value, float) else str(value)


def _passes_section(report: Report) -> str:
    rows = []
    for p in report.passes:
        rewrites = ", ".join(f"{rule} ×{count}" for rule, count in p.rewrites.items()) or "-"
        notes = [*p.declines[:DECLINES_SHOWN], *p.notes]
        if len(p.declines) > DECLINES_SHOWN:
            notes.append(f"… {len(p.declines) - DECLINES_SHOWN} more declines in report.json")
        rows.append((p.name, rewrites, f"{p.nodes_before} → {p.nodes_after}", f"{p.seconds:.2f}",
                     _Raw("<br>".join(_e(n) for n in notes))))
    return _section("pipeline", "pipeline", _table(("pass", "rewrites", "nodes", "seconds", "declined / notes"), rows, numeric=(3,)))


def _interface_section(change: dict) -> str:
    """What a pass declaring changes_interface did to the model's inputs and outputs (graphopt.interface)."""
    rows = [(side, _Raw("<br>".join(_e(n) for n in change[f"{side}_removed"]) or "-"),
             _Raw("<br>".join(_e(n) for n in change[f"{side}_added"]) or "-")) for side in ("inputs", "outputs")]
    return _section("interface", f"interface changed by {', '.join(change['changed_by'])}",
                    _table(("", "removed", "added"), rows), f"<p>compared: {_e(change.get('compared', '-'))}</p>")


def _ops_section(report: Report) -> str:
    ops = sorted(set(report.ops_before) | set(report.ops_after))
    rows = [(op, report.ops_before.get(op, 0), report.ops_after.get(op, 0), f"{report.ops_after.get(op, 0) - report.ops_before.get(op, 0):+d}")
            for op in ops if report.ops_before.get(op, 0) != report.ops_after.get(op, 0)]
    body = _table(("op", "before", "after", "change"), rows, numeric=(1, 2, 3)) if rows else "<p>no op changed</p>"
    return _section("ops", "ops before → after (changed only)", body)


def _accuracy_section(report: Report) -> str:
    masked = f", padding left out by {report.data['mask']}" if report.data.get("mask") else ""
    rows = [(name, _num(m.get("max_abs")), _num(m.get("mean_abs")), _fixed(m.get("cosine"), 6), _num(m.get("sqnr_db")),
             _fixed(m.get("top1"), 4), "yes" if m.get("checked", True) else "ignored") for name, m in report.accuracy.items()]
    caption = f"<p>vs the original on {_e(report.data.get('samples'))} {_e(report.data.get('kind'))} samples{_e(masked)}</p>"
    return _section("accuracy", "accuracy vs original", caption,
                    _table(("output", "max abs", "mean abs", "cosine", "SQNR dB", "top-1", "checked"), rows, numeric=(1, 2, 3, 4, 5)))


def _layers_section(report: Report) -> str:
    layers = report.layers
    worst = sorted(layers, key=lambda e: e["cosine"] if e.get("cosine") is not None else -1.0)[:LAYER_ROWS]
    rows = [(_Raw(f"<span class=mono>{_e(e['value'])}</span>"), e.get("where", ""), e.get("made_by", ""), _fixed(e.get("cosine"), 5),
             _num(e.get("sqnr_db")), _num(e.get("max_abs"))) for e in worst]
    title = f"the worst {len(worst)} of {len(layers)} quantized values (report.json has every row)"
    return _section("layers", "per-layer error (quantized value vs the original's float value)",
                    report_plots.layer_error_svg(layers, floor_db=LAYER_FLOOR_DB), f"<p>{_e(title)}</p>",
                    _table(("value", "where", "pass", "cosine", "SQNR dB", "max abs"), rows, numeric=(3, 4, 5)))


def _parity_section(parity: Mapping) -> str:
    rows = []
    for target, p in parity.items():
        if not p.get("ran"):
            rows.append((target, "-", "not run", "-", p.get("note", "")))
            continue
        for name, m in p["vs_onnx"].items():
            rows.append((target, name, _mark(p["bit_exact_vs_onnx"]), _num(m.get("max_abs")),
                         _fixed(p["vs_original"].get(name, {}).get("cosine"), 6)))
    return _section("parity", "backend parity (compiled target vs ONNX Runtime on the rewritten model, and vs the original)",
                    _table(("target", "output", "bit-exact vs onnx", "max abs vs onnx", "cosine vs original"), rows, numeric=(3, 4)))


def _latency_section(report: Report) -> str:
    host = report.host
    shapes = ", ".join(f"{k}[{','.join(map(str, v))}]" for k, v in report.data.get("shapes", {}).items())
    base = report.latency.get("original", {}).get("median_ms")
    rows = [(name, f"{t['median_ms']:.3f}", f"{t['p10_ms']:.3f}–{t['p90_ms']:.3f}", t.get("threads"),
             f"{base / t['median_ms']:.2f}x" if base and t.get("median_ms") else "-") for name, t in report.latency.items()]
    caption = f"<p>median of runs; inputs {_e(shapes)}; {_e(host.get('cpu'))}, {_e(host.get('cores'))} cores</p>"
    return _section("latency", "latency per target", report_plots.latency_svg(report.latency), caption,
                    _table(("run", "median ms", "p10–p90 ms", "threads", "speed vs original"), rows, numeric=(1, 3, 4)))


def _profile_section(profiles: Mapping) -> str:
    parts = []
    for target, profile in profiles.items():
        parts.append(f"<p>{_e(target)}: {profile['total_ms']:.3f} ms per instrumented run, "
                     f"{100 * profile['fallback_share']:.1f}% in fallback kernels</p>")
        rows = [(_Raw(f"<span class=mono>{_e(k['kernel'])}</span>"), k["calls"], f"{k['ms']:.3f}", f"{100 * k['share']:.1f}%", k["rule"])
                for k in profile["kernels"][:PROFILE_ROWS]]
        parts.append(_table(("kernel", "calls", "ms", "share", "schedule rule"), rows, numeric=(1, 2, 3)))
    return _section("profile", "kernel profile", *parts)


def _sparsity_section(sparsity: Mapping) -> str:
    tensors = sparsity.get("tensors", [])
    rows = [(t["site"], _percent(t.get("target")), _percent(t.get("achieved")), t.get("weight", "")) for t in tensors]
    overall, target = sparsity.get("model_wide"), sparsity.get("target_model_wide")
    caption = (f"<p>parameter-weighted model-wide sparsity on the validation samples: {_percent(overall)} "
               f"(target {_percent(target)})</p>")
    return _section("sparsity", "activation sparsity per thresholded tensor", caption, report_plots.sparsity_svg(tensors),
                    _table(("thresholded tensor", "target", "achieved", "weight (params skipped where zero)"), rows, numeric=(1, 2, 3)))


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _budget_section(budget: Mapping) -> str:
    verdict = f"{budget['metric']} ≥ {budget['floor']:.10g}: {_num(budget['initial'], 8)} → {_num(budget['final'], 8)}, " \
              f"{len(budget['rolled_back'])} rewrite(s) rolled back in {budget['validation_runs']} validation run(s)"
    rolled = _table(("pass", "rule", "node"), [(s["pass"], s["rule"], s["node"]) for s in budget["rolled_back"]])
    trace = _table(("step", "probe", "pass", "sites skipped", budget["metric"], "meets the floor"),
                   [(i, s["probe"], s.get("pass", ""), s.get("skipped", ""), _num(s.get("value"), 8), _mark(bool(s.get("met"))))
                    for i, s in enumerate(budget.get("trace", []), 1)], numeric=(0, 3, 4))
    problem = f"<p class=bad>{_e(budget['problem'])}</p>" if not budget["met"] and budget.get("problem") else ""
    return _section("budget", "numeric budget: bisection trace", f"<p>{_mark(budget['met'], 'kept', 'missed')} {_e(verdict)}</p>",
                    problem, rolled if budget["rolled_back"] else "", trace)


def _finetune_section(finetune: Mapping) -> str:
    """graphopt finetune: the loss curve and the held-out metrics vs the teacher before and after."""
    from graphopt.finetuning.plot import loss_svg  # noqa: PLC0415

    before, after = finetune.get("metrics_before", {}), finetune.get("metrics_after", {})
    rows = [(f"{name} {key}", _num(before.get(name, {}).get(key), 6), _num(m.get(key), 6)) for name, m in after.items()
            for key in ("cosine", "sqnr_db", "top1") if m.get(key) is not None]
    caption = (f"<p>{finetune['steps']} steps, lr {finetune['lr']:g} ({finetune.get('lr_scale', 'absolute')}), global batch "
               f"{finetune['batch_size']}, {finetune['world_size']} process(es), seed {finetune['seed']}, loss {_e(finetune['loss'])}, "
               f"{_num(finetune['seconds'], 3)} s; metrics vs the original on {finetune['examples']['held_out']} held-out rows</p>")
    return _section("finetune", "fine-tuning (distillation from the original)", caption, loss_svg(finetune["loss_curve"]),
                    _table(("output metric", "before", "after"), rows, numeric=(1, 2)))


def _integer_section(verdict: Mapping) -> str:
    rows = [(op["node"], op["op_type"], op.get("function") or "", ", ".join(f"{v['name']} {v['dtype']}" for v in op["values"]))
            for op in verdict.get("float_ops", [])]
    table = _table(("node", "op", "in function", "float values"), rows) if rows else ""
    return _section("integer-only", "integer-only", f"<p>{_mark(verdict['ok'], verdict.get('verdict', 'ok'), 'not integer-only')}</p>", table)


def _environment_section(report: Report) -> str:
    host = ", ".join(f"{k}: {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in sorted(report.host.items()))
    versions = ", ".join(f"{k} {v}" for k, v in sorted(report.versions.items()))
    return _section("environment", "host and versions", f"<p class=muted>{_e(host)}</p><p class=muted>{_e(versions)}</p>")


def render_html(report: Report, *, check: Any = None) -> str:
    """The whole page; ``check`` (a ``graphopt.gate.CheckResult``) adds the baseline comparison."""
    data = report.data
    parts = [_summary(report, check)]
    parts += [_check_section(check)] if check is not None and not check.updated else []
    parts += [_passes_section(report)]
    parts += [_interface_section(report.data["interface"])] if report.data.get("interface") else []
    parts += [_ops_section(report)]
    parts += [_accuracy_section(report)] if report.accuracy else []
    parts += [_layers_section(report)] if report.layers else []
    parts += [_parity_section(report.parity)] if report.parity else []
    parts += [_latency_section(report)] if report.latency else []
    parts += [_profile_section(data["profile"])] if data.get("profile") else []
    parts += [_sparsity_section(data["sparsity"])] if data.get("sparsity") else []
    parts += [_budget_section(data["budget"])] if data.get("budget") else []
    parts += [_finetune_section(data["finetune"])] if data.get("finetune") else []
    parts += [_integer_section(report.integer_only)] if report.integer_only else []
    parts.append(_environment_section(report))
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'><title>graphopt: {_e(report.model)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")


def write_html(path: str, report: Report, *, check: Any = None) -> None:
    """Write the page atomically (a reader never sees half a file)."""
    storage.atomic_write_text(path, render_html(report, check=check))
