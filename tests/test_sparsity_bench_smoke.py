"""bench.sparsity end to end at a small size: the dense row and one cats row on the trained
stdlib-llama, with the JSON it writes. Numbers are printed by the benchmark, not asserted, except
what must hold at any size: the achieved sparsity near its target on held-out text, and a finite
perplexity no better than a model with the information it threw away would allow (>= dense x 0.99)."""

from __future__ import annotations

import json
import math

from bench import sparsity


def test_dense_and_cats_rows(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert sparsity.main(["--methods", "cats", "--targets", "0.5", "--windows", "4", "--calib", "4", "--json", str(out)]) == 0
    dense, cats = json.loads(out.read_text())
    assert dense["method"] == "dense" and cats["pipeline"] == "canonicalize,cats(sparsity=0.5)"
    assert math.isfinite(dense["perplexity"]) and cats["perplexity"] >= dense["perplexity"] * 0.99
    assert abs(cats["achieved"] - 0.5) <= 0.05 and cats["thresholds"] == 4
    printed = capsys.readouterr().out
    assert "dense" in printed and "cats" in printed and "vs dense" in printed
