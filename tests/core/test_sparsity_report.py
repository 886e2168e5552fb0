"""The measured sparsity of a thresholded model in every report: ``report.json``'s ``data.sparsity``
(schema-valid), the console table with the model-wide figure, the HTML section, and ``graphopt
check``'s ``sparsity`` group (recorded in the baseline, a move beyond ``sparsity_change`` fails).

On the tiny LLaMA (SwiGLU MLPs) under ``cats(sparsity=0.5)``, calibrated on 4 seeded prompts and
validated on 3 others, so the achieved figure is measured on data the thresholds never saw.
"""

from __future__ import annotations

import io
import json

import jsonschema
import pytest
from rich.console import Console

import graphopt
from graphopt import gate, report_html
from graphopt.models import tiny_llama
from tests.core.test_report_schema import SCHEMA

PIPELINE = "canonicalize,cats(sparsity=0.5)"


@pytest.fixture(scope="module")
def data():
    calib = [tiny_llama.example_inputs(seed=i) for i in range(4)]
    held_out = [tiny_llama.example_inputs(seed=100 + i) for i in range(3)]
    return tiny_llama.build(), calib, held_out


@pytest.fixture(scope="module")
def result(data):
    model, calib, held_out = data
    return graphopt.compile(model, PIPELINE, calib=calib, eval=held_out)


def test_the_report_has_the_measured_sparsity(result):
    report = json.loads(result.report.to_json())
    jsonschema.validate(report, SCHEMA)
    sparsity = report["data"]["sparsity"]
    assert len(sparsity["tensors"]) == 2 and all(t["target"] == 0.5 and t["weight"] > 0 for t in sparsity["tensors"])
    assert all(abs(t["achieved"] - 0.5) <= 0.05 for t in sparsity["tensors"]), sparsity  # held-out prompts
    assert sparsity["model_wide"] == pytest.approx(
        sum(t["achieved"] * t["weight"] for t in sparsity["tensors"]) / sparsity["weight"], abs=1e-6)


def test_console_and_html_show_it(result):
    console = Console(file=io.StringIO(), width=200)
    result.print_report(console)
    printed = console.file.getvalue()
    assert "activation sparsity on the validation samples: model-wide" in printed and "target 50.0%" in printed
    page = report_html.render_html(result.report)
    assert 'id="sparsity"' in page and page.count("<svg") == 1  # the sparsity plot (no layers: cats quantizes nothing)


def test_a_model_without_thresholds_has_no_sparsity_section(data):
    model, calib, _ = data
    assert "sparsity" not in graphopt.compile(model, "canonicalize", calib=calib).report.data


def test_check_records_sparsity_and_fails_when_it_moves(data, tmp_path):
    model, calib, held_out = data
    lock = tmp_path / "lock.json"
    recorded = gate.check(model, PIPELINE, baseline=lock, calib=calib, update=True).record["sparsity"]
    assert set(recorded["tensors"]) and recorded["model_wide"] is not None
    held = gate.check(model, PIPELINE, baseline=lock, calib=calib)
    assert held.ok and any(g.name == "sparsity" and g.ok for g in held.groups)

    content = json.loads(lock.read_text())
    site = sorted(content["sparsity"]["tensors"])[0]
    content["sparsity"]["tensors"][site] += 0.05  # an older run that was sparser there
    lock.write_text(json.dumps(content))
    failed = gate.check(model, PIPELINE, baseline=lock, calib=calib)
    assert [c.field for c in failed.failures] == [f"sparsity.{site}"]
    assert "may move by 0.02" in failed.failures[0].allowed


def test_relufy_zeros_are_reported_without_a_target(data):
    """relufy has no threshold op: its stamped ReLU is what the sparsity stage measures."""
    model, calib, held_out = data
    sparsity = graphopt.compile(model, "canonicalize,relufy", calib=calib, eval=held_out).report.data["sparsity"]
    assert len(sparsity["tensors"]) == 2 and all(t["target"] is None and 0 < t["achieved"] < 1 for t in sparsity["tensors"])
    assert sparsity["target_model_wide"] is None and sparsity["model_wide"] is not None
