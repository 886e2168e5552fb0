"""`graphopt inspect` and `graphopt explain` on a small model with a decomposed GELU."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import onnx.parser
import pytest

GELU_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
gelu_mlp (float[N, 4] x) => (float[N, 4] y) <float[4, 4] w = {1,0,0,0, 0,1,0,0, 0,0,1,0, 0,0,0,1}> {
    h = MatMul(x, w)
    s2 = Constant <value = float {1.4142135}> ()
    d = Div(h, s2)
    e = Erf(d)
    one = Constant <value = float {1.0}> ()
    p = Add(e, one)
    m = Mul(h, p)
    half = Constant <value = float {0.5}> ()
    y = Mul(m, half)
}
"""


@pytest.fixture
def gelu_path(tmp_path):
    path = tmp_path / "gelu.onnx"
    onnx.save(onnx.parser.parse_model(GELU_TEXT), path)
    return str(path)


def run(*args):
    return subprocess.run([sys.executable, "-m", "graphopt", *args], capture_output=True, text=True, timeout=300)


def test_inspect_json(gelu_path):
    result = run("inspect", gelu_path, "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 4]}]
    assert info["ops"]["Erf"] == 1 and info["summary"]["parameters"] == 16
    assert info["patterns"] == {"GELU": 1}


def test_inspect_table(gelu_path):
    result = run("inspect", gelu_path)
    assert result.returncode == 0, result.stderr
    assert "detected patterns: GELU: 1" in result.stdout


def test_explain_names_rewrites_and_notes(gelu_path):
    result = run("explain", gelu_path, "--passes", "cleanup,opset-upgrade,gelu,layer-norm")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "gelu: rewrote gelu-erf x1" in lines
    assert "opset-upgrade: rewrote opset-17-to-23 x1" in lines
    assert "layer-norm: rewrote nothing" in lines


def test_explain_shows_declines(gelu_path):
    # Without the opset upgrade Gelu does not exist at opset 17: the check says so.
    result = run("explain", gelu_path, "--passes", "gelu")
    assert result.returncode == 0, result.stderr
    assert "gelu: rewrote nothing" in result.stdout
    assert "opset" in result.stdout and "declined" in result.stdout


ALMOST_ATTENTION = """
<ir_version: 10, opset_import: ["" : 23]>
g (float[1, 2, 4, 8] q, float[1, 2, 8, 4] kt, float[1, 2, 4, 8] v) => (float[1, 2, 4, 8] y) {
    scores = MatMul (q, kt)
    gated = Relu (scores)
    probs = Softmax <axis = -1> (gated)
    y = MatMul (probs, v)
}"""


def test_explain_shows_near_misses_of_passes_that_run_their_rules_themselves(tmp_path):
    """attention (and shiftmax) are not RulePasses; their rules' near misses show all the same."""
    path = tmp_path / "almost.onnx"
    onnx.save(onnx.parser.parse_model(ALMOST_ATTENTION), path)
    result = run("explain", str(path), "--passes", "attention")
    assert result.returncode == 0, result.stderr
    assert "attention: rewrote nothing" in result.stdout
    assert "near miss" in result.stdout, result.stdout
