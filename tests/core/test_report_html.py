"""``report.html``: written beside report.json by every compile and by ``check --html``; self-contained
(no script, no network, no file beside it), user text escaped, every section present when its data
is, deterministic; and, in a slow test, rendered by a real headless Chromium without errors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

import graphopt
from bench import _browser
from graphopt import gate, report_html
from graphopt.pipeline import PassRecord
from graphopt.report import Report
from tests.core.test_check import _args, run_main
from tests.core.test_check import model as model  # noqa: F401, PLC0414 — the fixture

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("check", "pipeline", "ops", "accuracy", "layers", "parity", "latency", "profile", "sparsity", "budget", "integer-only",
            "environment")


def _parse(text: str):
    return _browser.parse_page(text)


def full_report() -> Report:
    """A report with data for every section (values shaped as the stages write them)."""
    layers = [{"value": f"v{i}", "where": "input of MatMulInteger", "made_by": "int8-linear", "cosine": 0.999 - i * 1e-3,
               "sqnr_db": 40.0 - i, "max_abs": 0.01 * i} for i in range(30)]
    timing = {"median_ms": 2.0, "p10_ms": 1.9, "p90_ms": 2.2, "threads": 2}
    return Report(
        model="<script>alert(1)</script>.onnx", pipeline="canonicalize,int8-linear",
        passes=[PassRecord("int8-linear", {}, True, 0.2, {"int8-matmul": 3}, ["int8-matmul at n: no scale"] * 7, [], 10, 19)],
        before={"nodes": 10, "weight_bytes": 4000}, after={"nodes": 19, "weight_bytes": 1000},
        ops_before={"MatMul": 3}, ops_after={"MatMulInteger": 3}, data={
            "kind": "user", "samples": 4, "profile": {"tvm-llvm": {"total_ms": 1.0, "fallback_share": 0.1, "kernels": [
                {"kernel": "fused_matmul", "calls": 3, "ms": 0.9, "share": 0.9, "rule": "matmul"}]}},
            "sparsity": {"model_wide": 0.48, "target_model_wide": 0.5,
                         "tensors": [{"site": "mlp.act", "node": "t0", "target": 0.5, "achieved": 0.48, "weight": 4096}]},
            "budget": {"metric": "cosine", "floor": 0.999, "met": True, "initial": 0.2, "final": 0.9999, "validation_runs": 6,
                       "rolled_back": [{"pass": "int8-linear", "rule": "int8-matmul", "node": "outlier"}],
                       "trace": [{"probe": "rewritten", "value": 0.2, "met": False}, {"probe": "rolled back", "value": 0.9999, "met": True}]}},
        accuracy={"y": {"max_abs": 0.1, "mean_abs": 0.01, "cosine": 0.9999, "sqnr_db": 40.0, "top1": None}},
        layers=layers, latency={"original": timing, "tvm-llvm": {**timing, "median_ms": 1.0}},
        parity={"tvm-llvm": {"ran": True, "bit_exact_vs_onnx": True, "vs_onnx": {"y": {"max_abs": 0.0}},
                             "vs_original": {"y": {"cosine": 0.9999}}}},
        integer_only={"ok": False, "verdict": "", "float_ops": [{"node": "n", "op_type": "Erf", "function": None,
                                                                  "values": [{"name": "h", "dtype": "FLOAT"}]}]},
    )


class _Check:  # the attributes of gate.CheckResult the page reads
    ok, updated, baseline_path, notes = False, False, "lock.json", []
    groups = [gate.Group("ops", [gate.Change("ops_after.Gelu", 1, 0, "op counts must not change", ok=False)])]
    failures = groups[0].changes


def test_every_section_renders_and_the_page_is_self_contained():
    text = report_html.render_html(full_report(), check=_Check())
    page = _parse(text)
    assert set(SECTIONS) <= set(page.ids), set(SECTIONS) - set(page.ids)
    assert page.tags.count("svg") == 3  # layer error, latency, sparsity
    assert "script" not in page.tags and "link" not in page.tags and "img" not in page.tags and "iframe" not in page.tags
    assert all(url.startswith("#") for url in page.urls), [u for u in page.urls if not u.startswith("#")]
    assert not re.search(r"url\(\s*['\"]?(https?:|//)", text) and "@import" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # the model name is text, not markup
    assert "ops_after.Gelu" in text and "REGRESSION" in text and "check failed" in text
    assert "2 more declines in report.json" in text and "the worst 20 of 30" in text


def test_the_page_is_deterministic_and_sections_without_data_are_left_out():
    report = full_report()
    assert report_html.render_html(report) == report_html.render_html(report)
    bare = Report(model="m.onnx", pipeline="cleanup")
    ids = set(_parse(report_html.render_html(bare)).ids)
    assert ids == {"verdict", "pipeline", "ops", "environment"}


def test_report_json_read_back_renders_the_same_page():
    report = full_report()
    again = Report.from_dict(json.loads(report.to_json()))
    assert report_html.render_html(again) == report_html.render_html(report)


def test_compile_writes_report_html_beside_report_json(model, tmp_path):  # noqa: F811
    result = graphopt.compile(model, "canonicalize", calib=str(tmp_path / "calib.npz"))
    written = result.save(tmp_path / "out")
    assert {Path(p).name for p in written} >= {"model.onnx", "report.json", "report.html"}
    text = (tmp_path / "out" / "report.html").read_text()
    assert {"pipeline", "ops", "accuracy"} <= set(_parse(text).ids)
    manifest = json.loads((tmp_path / "out" / ".graphopt-manifest.json").read_text())
    assert "report.html" in json.dumps(manifest)  # a rerun may replace it


def test_check_html_shows_the_comparison_and_a_folder_is_refused(model, tmp_path, capsys):  # noqa: F811
    lock = tmp_path / "graphopt.lock.json"
    assert run_main(capsys, *_args(model, lock, "--update"))[0] == 0
    page = tmp_path / "check.html"
    assert run_main(capsys, *_args(model, lock, "--html", str(page)))[0] == 0
    text = page.read_text()
    assert "check holds" in text and 'id="check"' in text and "integer-only: no integer region" not in text
    code, _, err = run_main(capsys, *_args(model, lock, "--html", str(tmp_path)))
    assert code == 2 and "--html" in err and "report.html" in err


@pytest.mark.slow
@pytest.mark.skipif(_browser.chromium() is None, reason="no Chromium on this host (.ci/run installs Debian's chromium)")
def test_the_demo_report_renders_in_headless_chromium(tmp_path):
    """The digits ViT under ivit (layer error, integer-only) rendered by a real browser: DOM complete, no console error."""
    from graphopt.models import digits_vit  # noqa: PLC0415

    path = tmp_path / "digits-vit.onnx"
    onnx.save(digits_vit.build(), path)
    x = digits_vit.dataset()[2][:8]
    result = graphopt.compile(str(path), "ivit", calib={"pixels": x.astype(np.float32)})
    result.save(tmp_path / "out")
    url = (tmp_path / "out" / "report.html").as_uri()
    rendered = _browser.render(tmp_path / "out" / "report.html")
    assert rendered.ok, rendered.errors
    assert {"pipeline", "ops", "accuracy", "layers", "integer-only", "environment"} <= rendered.ids
    shot = _browser.headless(f"--screenshot={tmp_path / 'shot.png'}", "--window-size=1200,2400", url)
    assert shot.returncode == 0 and (tmp_path / "shot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
