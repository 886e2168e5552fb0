"""bench.attention end to end at toy lengths (slow: compiles softmax and linear attention on tvm-llvm
at each length): every case timed, the slopes and 8K-or-longest ratios computed, the JSON and the
PNG plot written; one memory case in its own process. Numbers are printed, not asserted."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("tvm")

from bench import attention  # noqa: E402

pytestmark = pytest.mark.slow


def test_quick_run_writes_json_and_plot(tmp_path, capsys):
    out, png = tmp_path / "attention.json", tmp_path / "attention.png"
    attention.main(["--quick", "--lengths", "128,256", "--json", str(out), "--plot", str(png)])
    result = json.loads(out.read_text())
    assert result["lengths"] == [128, 256] and png.stat().st_size > 10_000
    assert all(len(v) == 2 and None not in v for v in result["prefill_ms"].values())
    assert set(result["decode_ms"]) == set(attention.DECODE) and result["ratio_at"] == 256
    assert "log-log slope" in capsys.readouterr().out


def test_memory_case_in_a_fresh_process():
    grown = attention.memory_in_subprocess("prefill", "linear tvm", 256, threads=1)
    assert grown is not None and grown >= 0
