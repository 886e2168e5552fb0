"""Acceptance: `graphopt compile` canonicalizes every MiniLM export variant without moving outputs.

all-MiniLM-L6-v2 (real pretrained weights) exported by the dynamo exporter and by the legacy
exporter at opsets 14 and 17, with eager and sdpa attention: every GELU, every LayerNorm and all
6 attention blocks become canonical nodes, and the last hidden state keeps cosine >= 0.99999 on
real tokenized sentences (ONNX Runtime, optimizations off).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import graphopt

VARIANTS = [
    (exporter, opset, attn)
    for exporter, opset in (("dynamo", 18), ("legacy", 14), ("legacy", 17))
    for attn in ("eager", "sdpa")
]


@pytest.fixture(scope="module")
def minilm():
    return pytest.importorskip("graphopt.models.minilm")


def _calibration(minilm, count: int = 6) -> list[dict[str, np.ndarray]]:
    batch = minilm.tokenize(minilm.sentences()[:count], seq_len=128)
    return [{k: v[i : i + 1] for k, v in batch.items()} for i in range(count)]


@pytest.mark.slow
@pytest.mark.parametrize(("exporter", "opset", "attn"), VARIANTS, ids=[f"{e}{o}-{a}" for e, o, a in VARIANTS])
def test_canonicalize_minilm_variant(minilm, exporter, opset, attn):
    proto = minilm.build(exporter=exporter, opset=opset, attn_implementation=attn)
    result = graphopt.compile(proto, passes="canonicalize", calib=_calibration(minilm), name=f"minilm-{exporter}{opset}-{attn}")
    ops = result.report.ops_after
    attention = sum(count for op, count in ops.items() if op.startswith("pkg.graphopt::") and "Attention" in op)
    assert ops.get("Gelu") == 6, ops
    assert ops.get("LayerNormalization") == 13, ops
    assert attention == 6, ops
    for leftover in ("Erf", "Softmax", "ReduceMean", "Sqrt"):
        assert leftover not in ops, ops
    cosine = result.report.accuracy["last_hidden_state"]["cosine"]
    assert cosine >= 0.99999, cosine
    assert result.ok


@pytest.mark.slow
def test_cli_compile_minilm_reports_the_rewrites(minilm, tmp_path):
    model = tmp_path / "minilm.onnx"
    import onnx

    onnx.save(minilm.build(exporter="legacy", opset=14, attn_implementation="eager"), model)
    stacked = {k: v[:, None, :] for k, v in minilm.tokenize(minilm.sentences()[:4], seq_len=128).items()}  # 4 samples of [1, 128]
    np.savez(tmp_path / "calib.npz", **stacked)
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "graphopt", "compile", str(model), "-o", str(out), "--calib", str(tmp_path / "calib.npz"),
         "--min-cosine", "0.99999", "--bench-runs", "3"],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["pipeline"] == "canonicalize" and report["data"]["kind"] == "user" and report["data"]["samples"] == 4
    assert report["data"]["mask"] == "attention_mask" and report["data"]["shapes"]["input_ids"] == [1, 128]
    rewrites = {p["name"]: p["rewrites"] for p in report["passes"]}
    assert sum(rewrites["attention"].values()) == 6 and sum(rewrites["gelu"].values()) == 6
    assert report["accuracy"]["last_hidden_state"]["cosine"] >= 0.99999
    assert set(report["latency"]) == {"original", "onnx"}
