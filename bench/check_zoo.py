"""``graphopt check`` as a CI gate on every zoo model: the acceptance of the check issue.

    python -m bench.check_zoo [--only NAME ...] [--passes canonicalize] [--bench-runs 3] [--browser] [--json PATH]

Per model: record a baseline (``--update``), then

- **unchanged**: the same run against it must hold (exit 0);
- **pass removed**: the pipeline with the pass that rewrote most taken out of its preset (same
  pipeline string, as a silently changed export pipeline would be) must fail naming that pass;
- **tolerance tightened**: the baseline records one more of the commonest op after the rewrite, as
  an older run might have; allowed with ``tolerances.ops = 1``, a failure naming ``ops_after.<op>``
  with 0;
- **slower target**: the baseline records the onnx target's time ratio halved, so this run is 2x
  slower than it: a failure naming ``latency.onnx``;
- the JUnit XML of the failing run parses (xml.etree) with the failure in its group, and with
  ``--browser`` the HTML report of that run renders in headless Chromium (DOM complete, no console error).

The weakened baselines are compared with the unchanged run's record (``gate.compare``: the same
code the command runs, without recomputing a deterministic run); the pass-removed run is a real run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import tempfile
import time
import xml.etree.ElementTree as ET

from bench import _browser
from bench import zoo as matrix

COLUMNS = ("model", "unchanged", "pass removed", "tolerance", "slower", "junit", "html", "seconds")


@contextlib.contextmanager
def _preset_without(pipeline_name: str, pass_name: str):
    """The preset ``pipeline_name`` with ``pass_name`` left out (the pipeline string stays the same)."""
    from graphopt import registry  # noqa: PLC0415

    registry._ensure_loaded()
    original = registry._PRESETS[pipeline_name]
    steps = [s for s in original.pipeline.split(",") if s.split("(")[0] != pass_name]
    registry._PRESETS[pipeline_name] = registry.Preset(pipeline_name, ",".join(steps), f"{original.summary} (without {pass_name})")
    try:
        yield
    finally:
        registry._PRESETS[pipeline_name] = original


def _busiest_pass(record: dict) -> str | None:
    counts = {name.split("#")[0]: sum(p["rewrites"].values()) for name, p in record["passes"].items()}
    name = max(counts, key=counts.get, default=None)
    return name if name is not None and counts[name] > 0 else None


def _failed_fields(groups) -> list[str]:
    return [c.field for g in groups for c in g.failures]


def _tolerance_tightened(record: dict) -> dict:
    from graphopt import gate  # noqa: PLC0415

    op = max(record["ops_after"], key=record["ops_after"].get)
    old = copy.deepcopy(record)
    old["ops_after"][op] += 1
    loose = gate.compare(old, record, {**record["tolerances"], "ops": 1})[0]
    strict = gate.compare(old, record, {**record["tolerances"], "ops": 0})[0]
    ok = not _failed_fields(loose) and _failed_fields(strict) == [f"ops_after.{op}"]
    return {"ok": ok, "field": f"ops_after.{op}", "strict_failures": _failed_fields(strict)}


def _slower_target(record: dict) -> dict:
    from graphopt import gate  # noqa: PLC0415

    if "onnx" not in record["latency"]:
        return {"ok": False, "field": None, "why": "not timed (--bench-runs 0)"}
    old = copy.deepcopy(record)
    old["latency"]["onnx"] = record["latency"]["onnx"] / 2
    failures = _failed_fields(gate.compare(old, record, record["tolerances"])[0])
    return {"ok": failures == ["latency.onnx"], "field": "latency.onnx", "failures": failures}


def _junit_names_failure(text: str, field: str) -> bool:
    cases = list(ET.fromstring(text.split("?>", 1)[1]).iter("testcase"))
    return any(c.find("failure") is not None and field in (c.find("failure").text or "") for c in cases)


def _browser_renders(path: str) -> bool:
    rendered = _browser.render(path)
    return rendered.ok and {"check", "pipeline", "verdict"} <= rendered.ids


def model_row(entry, passes: str, bench_runs: int, browser: bool, folder: str) -> dict:
    from graphopt import gate, report_html  # noqa: PLC0415

    start = time.perf_counter()
    lock = os.path.join(folder, f"{entry.name}.lock.json")
    model = entry.build()
    calib = matrix.samples(entry, 2)
    run = {"baseline": lock, "calib": calib, "bench_runs": bench_runs, "name": entry.name}
    gate.check(model, passes, update=True, **run)
    unchanged = gate.check(model, passes, **run)
    row = {"name": entry.name, "unchanged": unchanged.ok, "unchanged_failures": [c.message() for c in unchanged.failures]}
    busiest = _busiest_pass(unchanged.record)
    if busiest is not None:
        with _preset_without(passes, busiest):
            weakened = gate.check(model, passes, **run)
        fields = _failed_fields(weakened.groups)
        row["pass_removed"] = {"pass": busiest, "ok": not weakened.ok and f"passes.{busiest}" in fields, "fields": fields}
        row["junit"] = _junit_names_failure(weakened.junit(), f"passes.{busiest}")
        page = os.path.join(folder, f"{entry.name}.html")
        report_html.write_html(page, weakened.report, check=weakened)
        row["html"] = _browser_renders(page) if browser else None
    row["tolerance"] = _tolerance_tightened(unchanged.record)
    row["slower"] = _slower_target(unchanged.record)
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def _mark(value) -> str:
    return "-" if value is None else "ok" if value else "FAIL"


def line(row: dict) -> str:
    if "error" in row:
        return f"{row['name']:<28} {row['error']}"
    removed = row.get("pass_removed")
    cells = (row["name"], _mark(row["unchanged"]), "-" if removed is None else f"{_mark(removed['ok'])} ({removed['pass']})",
             _mark(row["tolerance"]["ok"]), _mark(row["slower"]["ok"]), _mark(row.get("junit")), _mark(row.get("html")), row["seconds"])
    return " ".join(f"{str(c):<{w}}" for c, w in zip(cells, (28, 10, 26, 10, 8, 6, 6, 8), strict=True))


def _summary(rows: list[dict]) -> str:
    built = [r for r in rows if "error" not in r]

    def count(check) -> str:
        applicable = [r for r in built if check(r) is not None]
        return f"{sum(bool(check(r)) for r in applicable)}/{len(applicable)}"

    return (f"{len(built)} of {len(rows)} built; unchanged holds {count(lambda r: r['unchanged'])}; pass removed fails "
            f"{count(lambda r: (r.get('pass_removed') or {}).get('ok'))}; tightened tolerance fails {count(lambda r: r['tolerance']['ok'])}; "
            f"slower target fails {count(lambda r: r['slower']['ok'] if r['slower'].get('field') else None)}; "
            f"JUnit names the failure {count(lambda r: r.get('junit'))}; HTML renders {count(lambda r: r.get('html'))}")


def main(argv=None) -> int:
    from graphopt.errors import GraphoptError  # noqa: PLC0415
    from graphopt.models import zoo  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m bench.check_zoo", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="zoo entries (default: all)")
    parser.add_argument("--passes", default="canonicalize", help="a preset (default canonicalize)")
    parser.add_argument("--bench-runs", type=int, default=3, help="timed runs per check (default 3; 0: no latency fields)")
    parser.add_argument("--browser", action="store_true", help="render each failing run's HTML report in headless Chromium")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    if args.browser and _browser.chromium() is None:
        raise SystemExit("--browser needs chromium (apt-get install chromium)")
    rows = []
    print(" ".join(f"{c:<{w}}" for c, w in zip(COLUMNS, (28, 10, 26, 10, 8, 6, 6, 8), strict=True)))
    with tempfile.TemporaryDirectory() as folder:
        for name, entry in zoo.entries().items():
            if args.only and name not in args.only:
                continue
            try:
                row = model_row(entry, args.passes, args.bench_runs, args.browser, folder)
            except zoo.ExportUnsupported as e:
                row = {"name": name, "error": f"not built: {str(e)[:100]}", "exporter_limit": True}
            except GraphoptError as e:  # recorded; the other models still run, and the exit code says so
                row = {"name": name, "error": f"{type(e).__name__}: {str(e)[:160]}"}
            rows.append(row)
            print(line(row), flush=True)
    print(_summary(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)
    return 0 if all(r.get("exporter_limit") or ("error" not in r and r["unchanged"]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
