"""A bounded, seeded share of the loader fuzzer (`python -m bench.fuzz_loader`, `make fuzz`).

A few hundred mutants of real seed models (bit flips, truncation, duplicated chunks, protobuf
fields, external-data entries) through the real CLI, `inspect` and `compile`, in-process in two
worker processes: every exit code is in {0, 1, 2, 3, 4}, nothing escapes ``main``, no traceback,
no worker dies or hangs. Failures it found are regression tests in
``tests/core/test_malformed_models.py`` (``test_fuzz_*``).
"""

from __future__ import annotations

from bench import fuzz_loader

CASES = 400


def test_loader_fuzz_bounded(tmp_path):
    result = fuzz_loader.fuzz(CASES, seed=0, jobs=2, timeout=60.0, seeds_dir=str(tmp_path / "seeds"))
    histogram = result["histogram"]
    assert sum(histogram["inspect"].values()) == CASES
    failures = result["failures"]
    assert not failures, "\n".join(
        f"case {f['case']} ({f['what']}): {x['command']} {x['why']}: {x['stderr'][-300:]}" for f in failures for x in f["failures"]
    )
    # the mutants reach every outcome that matters: refused as a bad model, and accepted
    assert histogram["inspect"].get(3, 0) > CASES // 3 and histogram["inspect"].get(0, 0) > 10, histogram


def test_mutants_are_deterministic(tmp_path):
    seeds = fuzz_loader.build_seeds(str(tmp_path / "seeds"), names=("mlp", "digits-vit-ext"))
    for case in range(12):
        first, second = tmp_path / f"a{case}", tmp_path / f"b{case}"
        assert fuzz_loader.make_case(seeds, str(first), 7, case) == fuzz_loader.make_case(seeds, str(second), 7, case)
        for name in ("model.onnx", "model.onnx.data"):
            if (first / name).exists() or (second / name).exists():
                assert (first / name).read_bytes() == (second / name).read_bytes()
