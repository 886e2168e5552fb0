"""binary-attention (ShiftAddViT / EcoFormer binary-code attention) on canonical DotProductAttention.

Each source is a plain softmax attention that the ``attention`` pass fuses first; the codes are
fitted on four seeded calibration samples (few steps: the fit's quality is measured in
``test_fit_*`` and docs/binary-attention.md, not here). Structure: golden op list (codes as
MatMul/Add/Greater/Cast, then LinearizedAttention), the stamped choices and fit; declines with
their reasons (query-dependent mask, softcap, inside a function). Numerics (ONNX Runtime,
optimizations off) against numpy: the codes recomputed from the fit (deterministic: the same call
gives the same codes), then ``linear_attention_reference``; a key-padding mask drops the padded
keys exactly; causal form. Validity: the full ONNX checker. The fit itself: seeded and repeatable,
balanced bits at the initialization, distillation lowers the hard-code KL.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from graphopt import registry, testing
from graphopt.errors import UsageError
from graphopt.ops.linear_attention import CHOICES_KEY, FEATURE_MAP_KEY, OP_NAME, SITE_KEY, linear_attention_reference
from graphopt.passes._binary_codes import binary_codes_numpy, code_features_numpy, fit_binary_codes
from graphopt.passes.binary_attention import FIT_KEY
from graphopt.pipeline import run_pipeline

SCALE = 0.5
STEPS = 30
_SPINE = """
    kt = Transpose <perm = [0, 1, 3, 2]> (K)
    s = MatMul (Q, kt)
    c = Constant <value = float {0.5}> ()
    sc = Mul (s, c)
    l = Add (sc, M)
    p = Softmax <axis = -1> (l)
    Y = MatMul (p, V)"""
_CAUSAL_MASK = ("M = Constant <value = float[5,5] {0,-inf,-inf,-inf,-inf, 0,0,-inf,-inf,-inf, 0,0,0,-inf,-inf, "
                "0,0,0,0,-inf, 0,0,0,0,0}> ()")
_QKV = "float[2,3,5,4] Q, float[2,3,5,4] K, float[2,3,5,4] V"


def _text(inputs: str, body: str) -> str:
    return f'<ir_version: 10, opset_import: ["": 18]>\nattn ({inputs}) => (float[2,3,5,4] Y) {{{body}\n}}'


NO_MASK = _text(_QKV, "\n    M = Constant <value = float {0}> ()" + _SPINE)
CAUSAL = _text(_QKV, "\n    " + _CAUSAL_MASK + _SPINE)
PADDING = _text(f"{_QKV}, float[2,1,1,5] M", _SPINE)
QUERY_MASK = _text(f"{_QKV}, float[2,1,5,5] M", _SPINE)
SOFTCAP = _text(_QKV, """
    kt = Transpose <perm = [0, 1, 3, 2]> (K)
    s = MatMul (Q, kt)
    cap = Constant <value = float {2.0}> ()
    ratio = Div (s, cap)
    t = Tanh (ratio)
    capped = Mul (t, cap)
    p = Softmax <axis = -1> (capped)
    Y = MatMul (p, V)""")


def _feeds(source: str, seed: int = testing.SEED) -> dict[str, np.ndarray]:
    proto = onnx.parser.parse_model(source)
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in proto.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    if "M" in feeds:  # key padding: the last two keys of batch 1, the last key of batch 0
        mask = np.zeros(feeds["M"].shape, np.float32)
        mask[1, ..., 3:] = -np.inf
        mask[0, ..., 4:] = np.finfo(np.float32).min
        feeds["M"] = mask
    return feeds


def _samples(source: str) -> list[dict[str, np.ndarray]]:
    return [_feeds(source, seed) for seed in range(4)]


def _run(source: str, pipeline: str):
    model = ir.serde.deserialize_model(onnx.parser.parse_model(source))
    records = run_pipeline(model, pipeline, samples=_samples(source))
    return model, records[-1]


def _node(model, op_type=OP_NAME):
    (node,) = [n for n in model.graph if n.op_type == op_type]
    return node


def _expected(source: str, feeds, *, causal: bool, nbits: int, similarity: str = "and", mask=None):
    """The fit redone on the same samples (deterministic), then the codes and the op's reference in numpy."""
    samples = _samples(source)
    q_all = np.stack([s["Q"] for s in samples])
    k_all = np.stack([s["K"] for s in samples])
    wq, bq, wk, bk = fit_binary_codes(q_all, k_all, scale=SCALE, causal=causal, nbits=nbits, similarity=similarity,
                                      steps=STEPS, seconds=30.0, seed=0)
    qf = code_features_numpy(binary_codes_numpy(feeds["Q"], wq, bq), similarity)
    kf = code_features_numpy(binary_codes_numpy(feeds["K"], wk, bk), similarity)
    if mask is not None:
        kf = kf * np.exp(np.swapaxes(mask.astype(np.float64), -1, -2))
    return linear_attention_reference(qf, kf, feeds["V"].astype(np.float64), 1.0, causal=int(causal))


def test_golden_ops_and_metadata():
    model, record = _run(NO_MASK, f"attention,binary-attention(nbits=8, steps={STEPS})")
    assert record.rewrites == {"binary-attention": 1}
    assert testing.op_types(model) == ["Constant", "MatMul", "Constant", "Add", "Constant", "Greater", "Cast",
                                       "Constant", "MatMul", "Constant", "Add", "Constant", "Greater", "Cast",
                                       "Constant", OP_NAME]
    node = _node(model)
    assert node.metadata_props[FEATURE_MAP_KEY] == "binary" and node.metadata_props[SITE_KEY] == "Y"
    choices = json.loads(node.metadata_props[CHOICES_KEY])
    assert choices == {"nbits": 8, "similarity": "and", "causal": 0, "eps": 1e-6, "mask": "none", "per_head": True}
    fit = json.loads(node.metadata_props[FIT_KEY])
    assert fit["steps"] == STEPS and fit["samples"] == 8 and fit["kept"] in ("fit", "init")
    assert fit[f"kl_{'end' if fit['kept'] == 'fit' else 'init'}"] <= fit["kl_init"]
    (w,) = [n.attributes["value"].value.numpy() for n in model.graph
            if n.op_type == "Constant" and n.attributes["value"].value.shape == ir.Shape([3, 4, 8])][:1]
    assert w.shape == (3, 4, 8)  # per head
    assert any("attentions coded" in note for note in record.notes)
    testing.assert_valid(model)


@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "causal"])
@pytest.mark.parametrize("similarity", ["and", "hamming"])
def test_matches_numpy(causal, similarity):
    source = CAUSAL if causal else NO_MASK
    model, record = _run(source, f"attention,binary-attention(nbits=16, similarity={similarity}, steps={STEPS})")
    assert record.modified
    node = _node(model)
    assert node.attributes.get_int("causal", 0) == int(causal)
    testing.assert_valid(model)
    feeds = _feeds(source, seed=99)  # held out
    (got,) = testing.run_ort(model, feeds)
    expected = _expected(source, feeds, causal=causal, nbits=16, similarity=similarity)
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5)


def test_codes_are_binary_and_attention_adds_only():
    """Every feature the attention sees is 0 or 1 (Cast of a Greater): Qf·(Kfᵀ·V) is masked sums of V rows."""
    model, _ = _run(NO_MASK, f"attention,binary-attention(steps={STEPS})")
    node = _node(model)
    for feature in node.inputs[:2]:
        producer = feature.producer()
        assert producer.op_type == "Cast" and producer.inputs[0].producer().op_type == "Greater"


def test_key_padding_mask_is_honored():
    """Padded keys drop out: the result equals binary-code attention over the kept keys only."""
    model, record = _run(PADDING, f"attention,binary-attention(steps={STEPS})")
    assert record.modified
    assert json.loads(_node(model).metadata_props[CHOICES_KEY])["mask"] == "key-padding"
    testing.assert_valid(model)
    feeds = _feeds(PADDING)
    (got,) = testing.run_ort(model, feeds)
    np.testing.assert_allclose(got, _expected(PADDING, feeds, causal=False, nbits=16, mask=feeds["M"][:, :, :1, :]),
                               rtol=2e-5, atol=2e-5)
    # and the padded keys' V rows do not matter
    changed = dict(feeds, V=feeds["V"].copy())
    changed["V"][1, :, 3:] = 1e3
    changed["V"][0, :, 4:] = -1e3
    np.testing.assert_allclose(testing.run_ort(model, changed)[0], got, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("source", "reason"), [
    (QUERY_MASK, "may differ between queries"),
    (SOFTCAP, "softcapped"),
], ids=["query-mask", "softcap"])
def test_declines_with_reason(source, reason):
    model, record = _run(source, f"attention,binary-attention(steps={STEPS})")
    assert not record.modified
    assert "DotProductAttention" in testing.op_types(model)
    assert any(reason in d for d in record.declines), record.declines


def test_bad_options_are_usage_errors():
    model = ir.serde.deserialize_model(onnx.parser.parse_model(NO_MASK))
    with pytest.raises(UsageError, match="nbits"):
        run_pipeline(model, "binary-attention(nbits=0)")
    with pytest.raises(UsageError, match="similarity"):
        run_pipeline(model, "binary-attention(similarity=xor)")


def test_shiftadd_preset_ends_with_binary_attention():
    assert registry.get_pass("shiftadd").pipeline == "canonicalize,shift-linear,binary-attention"


# --- the fit ------------------------------------------------------------------------------------------


def _synthetic(seed=0, samples=6, heads=2, seq=24, dim=8):
    """Q, K with a few peaked keys per query (a softmax that a hash can follow): K = Q's neighbours + noise."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((samples, heads, seq, dim)).astype(np.float32)
    k = (q[:, :, rng.permutation(seq)] + 0.3 * rng.standard_normal((samples, heads, seq, dim))).astype(np.float32)
    return q, k


def test_fit_is_seeded_and_repeatable():
    q, k = _synthetic()
    first = fit_binary_codes(q, k, scale=1.0, nbits=8, steps=20, seed=3)
    again = fit_binary_codes(q, k, scale=1.0, nbits=8, steps=20, seed=3)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert first[0].shape == (2, 8, 8) and first[1].shape == (2, 8)


def test_initialization_balances_the_bits():
    """steps=0: principal directions with median thresholds: each bit is set on half the rows."""
    q, k = _synthetic()
    info = {}
    wq, bq, wk, bk = fit_binary_codes(q, k, scale=1.0, nbits=12, steps=0, info=info)  # 12 > D: random extra directions
    assert info["steps"] == 0 and info["kept"] == "init"
    for x, w, b in ((q, wq, bq), (k, wk, bk)):
        ones = binary_codes_numpy(x, w, b).mean(axis=(0, 2))  # [H, nbits]
        np.testing.assert_allclose(ones, 0.5, atol=1.5 / (x.shape[0] * x.shape[2]))


@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "causal"])
def test_distillation_lowers_the_kl(causal):
    q, k = _synthetic()
    info = {}
    fit_binary_codes(q, k, scale=1.0, causal=causal, nbits=16, steps=150, info=info)
    assert info["kept"] == "fit" and info["kl_end"] < 0.8 * info["kl_init"], info
