"""report.json is a contract: every kind of report validates against docs/report.schema.json."""

from __future__ import annotations

import json
import pathlib

import jsonschema
import numpy as np
import pytest

import graphopt
from graphopt import cli
from graphopt.metrics import Tolerances
from graphopt.report import REPORT_SCHEMA_VERSION

SCHEMA = json.loads((pathlib.Path(__file__).parents[2] / "docs" / "report.schema.json").read_text())


def _valid(report: dict) -> None:
    jsonschema.validate(report, SCHEMA)
    assert report["schema_version"] == REPORT_SCHEMA_VERSION


def test_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("kwargs", [
    {"passes": "cleanup", "bench_runs": 2},
    {"passes": "ivit", "calib": [{"x": np.random.default_rng(i).standard_normal((2, 4)).astype(np.float32)} for i in range(4)]},
    {"passes": "cleanup", "validate": False},
    {"passes": "cleanup", "tolerances": Tolerances(min_cosine=1.5)},  # a failed check: violations and a hint
])
def test_every_kind_of_report_validates(mlp_proto, kwargs):
    result = graphopt.compile(mlp_proto, **kwargs)
    report = json.loads(result.report.to_json())
    _valid(report)
    assert report["host"]["cores"] and report["versions"]["graphopt"] == graphopt.__version__
    if kwargs.get("tolerances"):
        assert report["violations"] and report["hints"]


def test_written_and_printed_reports_validate(tmp_path, mlp_path, capsys):
    assert cli.main(["compile", mlp_path, "-o", str(tmp_path / "out"), "--json", "--bench-runs", "1"]) == 0
    _valid(json.loads(capsys.readouterr().out))
    _valid(json.loads((tmp_path / "out" / "report.json").read_text()))
    assert "folder" not in json.loads((tmp_path / "out" / "report.json").read_text())["targets"]["onnx"]  # nothing of that name is written


@pytest.mark.slow
def test_tvm_report_validates(mlp_proto):
    result = graphopt.compile(mlp_proto, passes="cleanup", targets=["onnx", "tvm-llvm"], bench_runs=2)
    report = json.loads(result.report.to_json())
    _valid(report)
    assert report["parity"]["tvm-llvm"]["ran"] and report["targets"]["tvm-llvm"]["folder"] == "tvm-llvm"
