"""`graphopt check`: the baseline holds for an unchanged run, and regressions, tightened tolerances,
other models and missing baselines give the documented exit codes, messages, JSON and JUnit.

Small models from ONNX text (a MatMul + erf-GELU that `canonicalize` fuses) and the digits ViT;
the CLI runs in a subprocess where the real stderr matters, in-process elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest

import graphopt
from graphopt import cli, gate, registry
from graphopt.errors import CheckFailedError, UsageError

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "check.md"
DEMO_LOCK = ROOT / "tests" / "data" / "demo.lock.json"

GELU_MLP = """
<ir_version: 8, opset_import: ["" : 17]>
gelu_mlp (float[N, 4] x) => (float[N, 3] y) <float[4, 3] w = {WEIGHTS}, float[3] b = {0.5, -0.5, 0.25}> {
    h0 = MatMul(x, w)
    h = Add(h0, b)
    sqrt2 = Constant <value = float {1.41421}> ()
    d = Div(h, sqrt2)
    e = Erf(d)
    one = Constant <value = float {1.0}> ()
    e1 = Add(e, one)
    half = Constant <value = float {0.5}> ()
    hh = Mul(h, half)
    y = Mul(hh, e1)
}
"""


def _model(folder: Path, weights=(0.1, -0.2, 0.3, 0.4, 0.5, -0.6, 0.7, 0.8, -0.9, 1.0, 1.1, 1.2), name="model.onnx") -> str:
    text = GELU_MLP.replace("WEIGHTS", ", ".join(map(str, weights)))
    path = folder / name
    onnx.save(onnx.parser.parse_model(text), path)
    return str(path)


@pytest.fixture
def model(tmp_path) -> str:
    path = _model(tmp_path)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((3, 2, 4)).astype(np.float32))
    return path


def graphopt_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphopt", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _args(model: str, lock: Path, *extra: str, quiet: bool = True) -> list[str]:
    return ["check", model, "--passes", "canonicalize", "--calib", str(Path(model).parent / "calib.npz"), "--baseline", str(lock),
            *(["--quiet"] if quiet else []), *extra]


def _edit(lock: Path, change) -> None:
    content = json.loads(lock.read_text())
    change(content)
    lock.write_text(json.dumps(content, indent=2))


def test_missing_baseline_is_exit_2_saying_to_create_it(model, tmp_path):
    lock = tmp_path / "graphopt.lock.json"
    result = graphopt_cli(*_args(model, lock))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graphopt: error: no baseline at") and "--update" in lines[0]
    assert "Traceback" not in result.stderr and not lock.exists()


def test_baseline_then_unchanged_run_holds(model, tmp_path):
    lock = tmp_path / "graphopt.lock.json"
    created = graphopt_cli(*_args(model, lock, "--update", quiet=False))
    assert created.returncode == 0, created.stderr
    assert "created" in created.stdout
    content = json.loads(lock.read_text())
    assert content["schema_version"] == gate.BASELINE_SCHEMA_VERSION and content["pipeline"] == "canonicalize"
    assert content["passes"]["gelu"]["rewrites"] == {"gelu-erf": 1}
    assert content["ops_after"]["Gelu"] == 1 and "Erf" not in content["ops_after"]
    assert content["tolerances"] == gate.DEFAULT_TOLERANCES and content["latency"] == {}
    assert content["versions"]["graphopt"] and len(content["model"]["sha256"]) == 64

    again = graphopt_cli(*_args(model, lock, "--json"))
    assert again.returncode == 0, again.stderr
    verdict = json.loads(again.stdout)
    assert verdict["ok"] and {g["name"] for g in verdict["groups"]} == {"ops", "rewrites", "accuracy/y", "integer-only"}


def test_a_pass_removed_from_the_pipeline_exits_1_naming_the_field(model, tmp_path, capsys, monkeypatch):
    lock = tmp_path / "graphopt.lock.json"
    assert run_main(capsys, *_args(model, lock, "--update"))[0] == 0
    registry._ensure_loaded()
    weakened = registry._PRESETS["canonicalize"].pipeline.replace("gelu,", "")
    monkeypatch.setitem(registry._PRESETS, "canonicalize", registry.Preset("canonicalize", weakened, "without gelu"))
    code, out, err = run_main(capsys, *_args(model, lock, quiet=False))
    assert code == 1
    assert "graphopt: check failed: " in err and "--update" in err
    for field in ("ops_after.Gelu", "ops_after.Erf", "passes.gelu"):
        assert field in out
    assert "REGRESSION" in out

    result = graphopt.check(model, "canonicalize", calib=str(tmp_path / "calib.npz"), baseline=lock)
    assert not result.ok and {g.name for g in result.groups if not g.ok} == {"ops", "rewrites"}
    with pytest.raises(CheckFailedError, match="ops_after.Erf"):
        result.check()


def test_a_tightened_tolerance_exits_1(model, tmp_path, capsys):
    lock = tmp_path / "graphopt.lock.json"
    assert run_main(capsys, *_args(model, lock, "--update"))[0] == 0

    def recorded_one_more_gelu(content, allowed):
        content["ops_after"]["Gelu"] = 2
        content["tolerances"]["ops"] = allowed

    _edit(lock, lambda c: recorded_one_more_gelu(c, 1))
    code, out, _ = run_main(capsys, *_args(model, lock, quiet=False))
    assert code == 0 and "ops_after.Gelu" in out  # shown, within the tolerance
    _edit(lock, lambda c: recorded_one_more_gelu(c, 0))
    code, out, err = run_main(capsys, *_args(model, lock, quiet=False))
    assert code == 1 and "ops_after.Gelu: 2 -> 1 (must not change)" in err

    def better_accuracy(content, growth):
        content["ops_after"]["Gelu"] = 1
        content["accuracy"]["y"]["max_abs"] = 1e-12
        content["tolerances"]["max_abs_growth"] = growth

    _edit(lock, lambda c: better_accuracy(c, None))  # Gelu vs its Erf spelling: max abs error ~1e-6 on this model
    assert run_main(capsys, *_args(model, lock))[0] == 0
    _edit(lock, lambda c: better_accuracy(c, 0.5))
    code, _, err = run_main(capsys, *_args(model, lock))
    assert code == 1 and "accuracy.y.max_abs: 1e-12 -> " in err and "may grow by a factor 0.5" in err


def test_a_slower_target_exits_1_and_an_unmeasured_one_is_skipped(model, tmp_path, capsys):
    lock, junit = tmp_path / "graphopt.lock.json", tmp_path / "results.xml"
    assert run_main(capsys, *_args(model, lock, "--update", "--bench-runs", "3"))[0] == 0
    ratio = json.loads(lock.read_text())["latency"]["onnx"]
    assert ratio > 0
    _edit(lock, lambda c: c["latency"].update(onnx=ratio / 100))
    code, _, err = run_main(capsys, *_args(model, lock, "--bench-runs", "3", "--junit", str(junit)))
    assert code == 1 and "latency.onnx" in err and "may grow by 25%" in err
    failed = {case.get("name"): case.find("failure") for case in ET.parse(junit).getroot().iter("testcase")}
    assert failed["latency/onnx"] is not None and "latency.onnx" in failed["latency/onnx"].get("message")

    code, _, _ = run_main(capsys, *_args(model, lock, "--junit", str(junit)))
    assert code == 0
    cases = {case.get("name"): case for case in ET.parse(junit).getroot().iter("testcase")}
    assert cases["latency/onnx"].find("skipped") is not None


def test_junit_has_one_case_per_group_and_the_failures(model, tmp_path, capsys):
    lock, junit = tmp_path / "graphopt.lock.json", tmp_path / "results.xml"
    assert run_main(capsys, *_args(model, lock, "--update"))[0] == 0
    _edit(lock, lambda c: (c["passes"]["gelu"]["rewrites"].update({"gelu-erf": 3}), c["accuracy"]["y"].update(cosine=1.5)))
    assert run_main(capsys, *_args(model, lock, "--junit", str(junit)))[0] == 1
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("tests") == "4" and suite.get("failures") == "2"
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert set(cases) == {"ops", "rewrites", "accuracy/y", "integer-only"}
    assert cases["ops"].find("failure") is None and cases["integer-only"].find("failure") is None
    assert cases["rewrites"].find("failure").get("message") == "passes.gelu.rewrites.gelu-erf: 3 -> 1 (must not change)"
    assert "accuracy.y.cosine" in cases["accuracy/y"].find("failure").text


def test_update_writes_atomically_keeps_tolerances_and_prints_the_diff(model, tmp_path, capsys, monkeypatch):
    lock = tmp_path / "graphopt.lock.json"
    assert run_main(capsys, *_args(model, lock, "--update"))[0] == 0
    _edit(lock, lambda c: (c["ops_before"].update(Erf=7), c["tolerances"].update(cosine_drop=0.01)))
    edited = lock.read_text()

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        graphopt.check(model, calib=str(tmp_path / "calib.npz"), baseline=lock, update=True)
    assert lock.read_text() == edited and sorted(os.listdir(tmp_path)) == ["calib.npz", "graphopt.lock.json", "model.onnx"]
    monkeypatch.undo()

    code, out, _ = run_main(capsys, *_args(model, lock, "--update", quiet=False))
    assert code == 0 and "ops_before.Erf" in out and "written" in out
    content = json.loads(lock.read_text())
    assert content["ops_before"]["Erf"] == 1 and content["tolerances"]["cosine_drop"] == 0.01
    assert sorted(os.listdir(tmp_path)) == ["calib.npz", "graphopt.lock.json", "model.onnx"]


def test_another_models_or_pipelines_baseline_is_exit_2(model, tmp_path, capsys):
    lock = tmp_path / "graphopt.lock.json"
    assert run_main(capsys, *_args(model, lock, "--update"))[0] == 0
    recorded = json.loads(lock.read_text())["model"]["sha256"]
    other = _model(tmp_path, weights=[0.5] * 12, name="other.onnx")
    result = graphopt_cli(*_args(other, lock))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    other_hash = hashlib.sha256(Path(other).read_bytes()).hexdigest()
    assert recorded[:16] in result.stderr and other_hash[:16] in result.stderr and "--update" in result.stderr

    result = graphopt_cli("check", model, "--passes", "cleanup", "--baseline", str(lock))
    assert result.returncode == 2 and "'canonicalize'" in result.stderr and "'cleanup'" in result.stderr and "--update" in result.stderr
    assert graphopt_cli(*_args(other, lock, "--update")).returncode == 0  # --update replaces it


def test_bad_model_and_bad_tolerances(model, tmp_path, capsys):
    lock = tmp_path / "graphopt.lock.json"
    assert run_main(capsys, *_args(model, lock, "--update"))[0] == 0
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    assert run_main(capsys, *_args(str(broken), lock))[0] == 3
    _edit(lock, lambda c: c["tolerances"].update(cosine_dorp=0.1))
    code, _, err = run_main(capsys, *_args(model, lock))
    assert code == 2 and "cosine_dorp" in err and "cosine_drop" in err
    with pytest.raises(UsageError, match="schema_version"):
        _edit(lock, lambda c: c.update(schema_version=99))
        graphopt.check(model, baseline=lock)


def test_digits_vit_unchanged_run_holds(tmp_path):
    from graphopt.models import get_model

    path = tmp_path / "digits-vit.onnx"
    onnx.save(get_model("digits-vit").build(), path)
    lock = tmp_path / "demo.lock.json"
    first = graphopt.check(path, "canonicalize", baseline=lock, update=True)
    assert first.updated and first.record["passes"]["attention"]["rewrites"] == {"attention": 2}
    again = graphopt.check(path, "canonicalize", baseline=lock)
    assert again.ok and again.check() is again
    # The committed baseline of .ci/run's gate is for this very file: the export is deterministic.
    committed = json.loads(DEMO_LOCK.read_text())
    assert committed["model"]["sha256"] == first.record["model"]["sha256"] and committed["pipeline"] == "canonicalize"


def _snippets() -> dict[str, str]:
    text = DOC.read_text()
    blocks = re.findall(r"^## (GitHub Actions|GitLab CI)\n.*?```yaml\n(.*?)```", text, flags=re.S | re.M)
    return dict(blocks)


@pytest.mark.parametrize("ci", ["GitHub Actions", "GitLab CI"])
def test_the_docs_ci_snippets_run(ci, model, tmp_path):
    yaml = pytest.importorskip("yaml")
    snippet = _snippets()[ci]
    steps = yaml.safe_load(snippet)
    commands = (step["run"] for job in steps["jobs"].values() for step in job["steps"] if "run" in step) if ci == "GitHub Actions" \
        else (line for job in steps.values() for line in job["script"])
    line = next(c for c in commands if c.startswith("graphopt check"))
    argv = shlex.split(line)[1:]
    parsed = cli.build_parser().parse_args(argv)
    assert (parsed.model, parsed.baseline, parsed.junit, parsed.bench_runs) == ("model.onnx", "graphopt.lock.json", "graphopt-junit.xml", 0)
    assert graphopt_cli(*argv, "--update", cwd=tmp_path).returncode == 0
    result = graphopt_cli(*argv, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    suite = ET.parse(tmp_path / "graphopt-junit.xml").getroot().find("testsuite")
    assert suite.get("failures") == "0" and int(suite.get("tests")) == 4


def test_check_with_a_budget_rolls_back_before_comparing_and_fails_when_it_cannot_keep_it(tmp_path):
    from tests.core.test_budget import calib, outlier_model  # noqa: PLC0415

    path = tmp_path / "outlier.onnx"
    onnx.save(outlier_model(), path)
    lock = tmp_path / "lock.json"
    samples = calib()
    gate.check(str(path), "int8-linear", baseline=lock, calib=samples, update=True, budget="cosine=0.999")
    result = gate.check(str(path), "int8-linear", baseline=lock, calib=samples, budget="cosine=0.999")
    group = next(g for g in result.groups if g.name == "budget")
    assert result.ok and group.ok and "int8-linear/int8-matmul at outlier" in group.changes[0].allowed
    assert result.record["passes"]["int8-linear"]["rewrites"] == {"int8-matmul": 2}  # the rolled-back site stays float


def test_check_fails_when_the_budget_cannot_be_kept(tmp_path):
    from tests.core.test_budget import _TestOffsetOutputPass, calib, softmax_model  # noqa: PLC0415

    registry.register_pass("test-offset-output")(_TestOffsetOutputPass)  # an approximation no rollback can undo
    try:
        path = tmp_path / "softmax.onnx"
        onnx.save(softmax_model(), path)
        lock = tmp_path / "lock.json"
        gate.check(str(path), "test-offset-output", baseline=lock, calib=calib(), update=True)
        result = gate.check(str(path), "test-offset-output", baseline=lock, calib=calib(), budget="cosine=0.9999")
    finally:
        registry._PASSES.pop("test-offset-output")
    group = next(g for g in result.groups if g.name == "budget")
    assert not result.ok and not group.ok and group.changes[0].field == "budget.cosine"
    assert "nothing rolled back" in group.changes[0].allowed
