"""digits-vit: valid, matches torch, keeps its accuracy in ONNX, deterministic, retrainable."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from graphopt import testing
from graphopt.models import _export, digits_vit


def test_export_matches_torch_at_two_batch_sizes(check):
    proto = check.matches_torch(digits_vit, {}, {"batch": 4}, {"batch": 7})
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert {"Conv", "Softmax", "LayerNormalization", "Erf"} <= {n.op_type for n in proto.graph.node}


def test_onnx_accuracy_equals_torch_accuracy(check):
    module = digits_vit.module()
    torch_acc = digits_vit.accuracy(lambda batch: check.torch_outputs(module, batch)[0])
    onnx_acc = digits_vit.accuracy(lambda batch: testing.run_ort(digits_vit.build(), batch)[0])
    assert torch_acc >= 0.95
    assert onnx_acc == pytest.approx(torch_acc, abs=1.5 / 450)  # at most one near-tie flips


def test_dataset_split_is_fixed():
    x_tr, y_tr, x_te, y_te = digits_vit.dataset()
    assert x_tr.shape == (1347, 1, 8, 8) and x_te.shape == (450, 1, 8, 8)
    assert x_tr.dtype == np.float32 and 0.0 <= x_tr.min() and x_tr.max() <= 1.0
    counts = np.bincount(y_te)
    assert counts.max() - counts.min() <= 3  # stratified
    x_tr[:] = -1  # callers get copies
    assert digits_vit.dataset()[0].min() == 0.0


def test_build_is_deterministic_and_the_cache_returns_the_same_bytes(check, monkeypatch, tmp_path):
    default = digits_vit.build().SerializeToString()  # the user cache: often exported by an earlier process
    monkeypatch.setenv("GRAPHOPT_CACHE", str(tmp_path))
    assert _export.cache_dir() == tmp_path / "models"
    fresh = digits_vit.build().SerializeToString()  # exported now, written to the empty cache
    assert len(list((tmp_path / "models").glob("digits-vit-*.onnx"))) == 1
    assert fresh == default == digits_vit.build().SerializeToString()  # the last one is a cache hit
    assert os.fspath(Path(__file__).resolve().parents[2]).encode() not in fresh  # no checkout paths


def test_training_is_deterministic(check):
    a, b = (digits_vit.train(seed=1, epochs=1, save=False).state_dict() for _ in range(2))
    shipped = digits_vit.module().state_dict()
    assert a.keys() == shipped.keys()
    for k in a:
        assert a[k].shape == shipped[k].shape and a[k].equal(b[k]), k


@pytest.mark.slow
def test_retraining_reproduces_the_shipped_accuracy(check):
    net = digits_vit.train(seed=0, save=False)
    acc = digits_vit.accuracy(lambda batch: check.torch_outputs(net, batch)[0])
    assert acc >= 0.95
