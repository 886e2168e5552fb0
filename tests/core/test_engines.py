"""Metrics, tolerances, calibration statistics and atomic storage."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

import graphopt
from graphopt import calibrate, metrics, outdir, storage


def test_metrics_of_identical_and_noisy_outputs():
    rng = np.random.default_rng(0)
    ref = [{"logits": rng.standard_normal((4, 10)).astype(np.float32)}]
    same = metrics.compare_outputs(ref, ref)["logits"]
    assert same.max_abs == 0 and same.cosine == pytest.approx(1.0) and math.isinf(same.sqnr_db) and same.top1 == 1.0
    noisy = [{"logits": ref[0]["logits"] + 0.1}]
    m = metrics.compare_outputs(ref, noisy)["logits"]
    assert m.max_abs == pytest.approx(0.1, rel=1e-5) and 10 < m.sqnr_db < 30


def test_tolerances_report_each_violation():
    m = metrics.OutputMetrics(max_abs=0.5, mean_abs=0.1, cosine=0.9, sqnr_db=12.0, ref_max_abs=1.0, top1=0.8)
    problems = metrics.Tolerances(atol=0.1, min_cosine=0.99, min_sqnr=20, min_top1=0.9).violations("y", m)
    assert len(problems) == 4 and problems[1] == "y: cosine 0.900000 < 0.99"
    assert metrics.Tolerances(atol=1.0, min_cosine=0.5).violations("y", m) == []


def test_shape_mismatch_is_a_violation():
    ref = [{"y": np.zeros((2, 3))}]
    m = metrics.compare_outputs(ref, [{"y": np.zeros((3, 2))}])["y"]
    assert metrics.Tolerances().violations("y", m) == ["y: shape (3, 2) != original (2, 3)"]


def test_calibrator_captures_intermediates_and_stats(mlp_proto):
    model = graphopt.load(mlp_proto)
    samples = [{"x": np.full((2, 4), float(i), np.float32)} for i in range(3)]
    calibrator = calibrate.Calibrator(model, samples)
    captured = calibrator.capture(["h", "y0"])
    assert len(captured["h"]) == 3 and captured["h"][0].shape == (2, 3)
    stats = calibrator.stats(["h"], channel_axis=-1)["h"]
    w = np.array([[0.1, -0.2, 0.3], [0.4, 0.5, -0.6], [0.7, 0.8, -0.9], [1.0, 1.1, 1.2]])
    column_sums = w.sum(0)
    assert stats.max == pytest.approx(max(2 * column_sums.max(), 0), rel=1e-5)
    np.testing.assert_allclose(stats.channel_max, np.maximum(2 * column_sums, 0), rtol=1e-5)
    assert stats.percentiles[50.0] == pytest.approx(np.median([i * c for i in range(3) for c in column_sums for _ in range(2)]), rel=1e-5)
    with pytest.raises(KeyError, match="does not have"):
        calibrator.capture(["nope"])


def test_failed_save_leaves_nothing(tmp_path, mlp_proto, monkeypatch):
    model = graphopt.load(mlp_proto)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(storage.ir, "save", broken_save)
    with pytest.raises(OSError):
        storage.save_model(model, tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


def test_large_models_save_weights_as_external_data(tmp_path, mlp_proto, monkeypatch):
    monkeypatch.setattr(storage, "EXTERNAL_DATA_THRESHOLD", 8)
    model = graphopt.load(mlp_proto)
    written = storage.save_model(model, tmp_path / "m.onnx")
    assert sorted(os.path.basename(p) for p in written) == ["m.onnx", "m.onnx.data"]
    again = graphopt.load(str(tmp_path / "m.onnx"))
    np.testing.assert_array_equal(again.graph.initializers["w"].const_value.numpy(), model.graph.initializers["w"].const_value.numpy())


def test_staged_output_is_all_or_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with outdir.staged_output(out) as staging:
            (open(os.path.join(staging, "model.onnx"), "w")).close()
            raise RuntimeError("failed halfway")
    assert not out.exists()  # the folder it created is gone again
