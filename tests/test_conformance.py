"""The ONNX backend node cases: everything ONNX Runtime passes still passes after `canonicalize`.

Also: the `*_expanded` cases of gelu, layer_normalization, rms_normalization and attention are
decomposed forms, and canonicalization must turn them back into one canonical node.
"""

from __future__ import annotations

import pytest

from graphopt import conformance

# Expanded cases that legitimately keep their decomposed form, each with the reason.
NOT_CANONICAL_OK: dict[str, str] = {}


@pytest.fixture(scope="module")
def results():
    return conformance.run_suite("canonicalize", workers=2)


@pytest.mark.slow
def test_every_case_ort_passes_still_passes(results):
    summary = conformance.summarize(results)
    assert summary["ort_passes"] > 1400
    failures = [f"{f['name']}: {f['reason']}" for f in summary["failures"]]
    assert failures == []


@pytest.mark.slow
def test_expanded_cases_are_canonicalized(results):
    missed = {r.name for r in conformance.expanded_not_canonicalized(results)}
    assert sorted(missed - set(NOT_CANONICAL_OK)) == []
