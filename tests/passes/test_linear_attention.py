"""linear-attention, sigmoid-attention, softplus-attention on canonical DotProductAttention.

Each source is a plain softmax attention that the ``attention`` pass fuses first. Structure: golden
op lists and the node's stamped choices; the declines with their reasons (query-dependent mask,
softcap, a windowed decode step, non-positive scale; hedgehog's are in test_hedgehog.py). Numerics (ONNX Runtime, optimizations off, seeded
inputs) against numpy: the feature map written out in numpy, then the op's reference
(``linear_attention_reference``); key-padding masks honored exactly (= attention over the kept
keys only); a decode step (one query over the cache) equal to the last row of the causal prefill.
Validity: the full ONNX checker.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from graphopt import testing
from graphopt.errors import UsageError
from graphopt.ops.linear_attention import CHOICES_KEY, FEATURE_MAP_KEY, OP_NAME, SITE_KEY, linear_attention_reference
from graphopt.pipeline import run_pipeline

SCALE = 0.5
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


def _text(inputs: str, body: str, sq: int = 5) -> str:
    return (f'<ir_version: 10, opset_import: ["": 18]>\nattn ({inputs}) => (float[2,3,{sq},4] Y) {{'
            f"{body}\n}}")


def _qkv(sq: int = 5, sk: int = 5) -> str:
    return f"float[2,3,{sq},4] Q, float[2,3,{sk},4] K, float[2,3,{sk},4] V"


NO_MASK = _text(_qkv(), "\n    M = Constant <value = float {0}> ()" + _SPINE)
CAUSAL = _text(_qkv(), "\n    " + _CAUSAL_MASK + _SPINE)
PADDING = _text(f"{_qkv()}, float[2,1,1,5] M", _SPINE)
EXPANDED_PADDING = _text(f"{_qkv()}, float[2,1,1,5] P", """
    shape = Constant <value = int64[4] {2, 1, 5, 5}> ()
    M = Expand (P, shape)""" + _SPINE)
QUERY_MASK = _text(f"{_qkv()}, float[2,1,5,5] M", _SPINE)
DECODE = _text(f"{_qkv(1, 5)}", "\n    M = Constant <value = float {0}> ()" + _SPINE, sq=1)
SOFTCAP = _text(_qkv(), """
    kt = Transpose <perm = [0, 1, 3, 2]> (K)
    s = MatMul (Q, kt)
    cap = Constant <value = float {2.0}> ()
    ratio = Div (s, cap)
    t = Tanh (ratio)
    capped = Mul (t, cap)
    p = Softmax <axis = -1> (capped)
    Y = MatMul (p, V)""")
NEGATIVE_SCALE = NO_MASK.replace("float {0.5}", "float {-0.5}")


def _feeds(source: str, masked_keys=None) -> dict[str, np.ndarray]:
    proto = onnx.parser.parse_model(source)
    rng = np.random.default_rng(testing.SEED)
    feeds = {}
    for value in proto.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    for name in ("M", "P"):
        if name in feeds:  # key padding: the last two keys of batch 1, the last key of batch 0
            mask = np.zeros(feeds[name].shape, np.float32)
            mask[1, ..., 3:] = -np.inf
            mask[0, ..., 4:] = np.finfo(np.float32).min
            feeds[name] = mask
    return feeds


def _run(source: str, pipeline: str):
    import onnx_ir as ir  # noqa: PLC0415

    model = ir.serde.deserialize_model(onnx.parser.parse_model(source))
    records = run_pipeline(model, pipeline)
    return model, records[-1]


def _node(model, op_type=OP_NAME):
    (node,) = [n for n in model.graph if n.op_type == op_type]
    return node


# --- numpy feature maps (the spec the ONNX ops must compute) ------------------------------------------


def _elu1(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0))) + 1


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _features(name: str, q, k, model=None, fold_scale=False):
    q, k = q.astype(np.float64), k.astype(np.float64)
    root = math.sqrt(SCALE)
    if name in ("elu", "liger") and not fold_scale:
        root = 1.0
    if name == "elu":
        return _elu1(q * root), _elu1(k * root)
    if name == "relu":
        return np.maximum(q, 0), np.maximum(k, 0)
    if name == "liger":
        return _softmax(q * root), _softmax(k * root)
    if name == "cosformer":
        sq, sk = q.shape[-2], k.shape[-2]
        pq = (np.arange(sq) + sk - sq)[:, None] * math.pi / 2 / sk
        pk = np.arange(sk)[:, None] * math.pi / 2 / sk
        return (np.concatenate([np.maximum(q, 0) * np.cos(pq), np.maximum(q, 0) * np.sin(pq)], -1),
                np.concatenate([np.maximum(k, 0) * np.cos(pk), np.maximum(k, 0) * np.sin(pk)], -1))
    if name == "performer":
        (w,) = [t.const_value.numpy() for n, t in model.graph.initializers.items() if n.endswith("_performer_w")]
        q, k = q * root, k * root
        fq = q @ w - (q * q).sum(-1, keepdims=True) / 2
        fk = k @ w - (k * k).sum(-1, keepdims=True) / 2
        return np.exp(fq - fq.max(-1, keepdims=True)), np.exp(fk - fk.max(axis=(-2, -1), keepdims=True))
    raise AssertionError(name)


MAPS = ["elu", "relu", "cosformer", "performer", "liger"]


@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "causal"])
@pytest.mark.parametrize("feature_map", MAPS)
def test_each_map_matches_numpy(feature_map, causal):
    source = CAUSAL if causal else NO_MASK
    model, record = _run(source, f"attention,linear-attention(feature_map={feature_map})")
    assert record.rewrites == {f"linear-attention-{feature_map}": 1}
    assert "Softmax" not in testing.op_types(model) or feature_map == "liger"
    node = _node(model)
    assert node.attributes.get_int("causal", 0) == int(causal)
    assert node.metadata_props[FEATURE_MAP_KEY] == feature_map
    choices = json.loads(node.metadata_props[CHOICES_KEY])
    assert choices["causal"] == int(causal) and choices["mask"] == "none" and choices["chunk"] == 64
    assert node.metadata_props[SITE_KEY]
    testing.assert_valid(model)
    feeds = _feeds(source)
    (got,) = testing.run_ort(model, feeds)
    qf, kf = _features(feature_map, feeds["Q"], feeds["K"], model)
    expected = linear_attention_reference(qf, kf, feeds["V"].astype(np.float64), 1.0, causal=int(causal))
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5)


def test_golden_ops_elu():
    model, _ = _run(NO_MASK, "attention,linear-attention")
    assert testing.op_types(model) == ["Constant", "Elu", "Add", "Constant", "Elu", "Add", "Constant", OP_NAME]
    assert json.loads(_node(model).metadata_props[CHOICES_KEY])["scale"] == "dropped"


@pytest.mark.parametrize("feature_map", ["elu", "liger"])
def test_fold_scale_multiplies_root_scale_into_q_and_k(feature_map):
    model, _ = _run(NO_MASK, f"attention,linear-attention(feature_map={feature_map}, fold_scale=true)")
    assert testing.op_types(model)[:3] == ["Constant", "Mul", "Mul"]
    assert json.loads(_node(model).metadata_props[CHOICES_KEY])["scale"] == "folded"
    feeds = _feeds(NO_MASK)
    (got,) = testing.run_ort(model, feeds)
    qf, kf = _features(feature_map, feeds["Q"], feeds["K"], fold_scale=True)
    np.testing.assert_allclose(got, linear_attention_reference(qf, kf, feeds["V"].astype(np.float64), 1.0), rtol=2e-5, atol=2e-5)


def test_performer_features_option_and_seed_are_stamped():
    model, _ = _run(NO_MASK, "attention,linear-attention(feature_map=performer, features=12, seed=3)")
    (w,) = [t.const_value for n, t in model.graph.initializers.items() if n.endswith("_performer_w")]
    assert w.shape == ir_shape(4, 12)
    choices = json.loads(_node(model).metadata_props[CHOICES_KEY])
    assert choices["features"] == 12 and choices["seed"] == 3
    again, _ = _run(NO_MASK, "attention,linear-attention(feature_map=performer, features=12, seed=3)")
    (w2,) = [t.const_value for n, t in again.graph.initializers.items() if n.endswith("_performer_w")]
    np.testing.assert_array_equal(w.numpy(), w2.numpy())  # seeded: reruns agree


def ir_shape(*dims):
    import onnx_ir as ir  # noqa: PLC0415

    return ir.Shape(dims)


@pytest.mark.parametrize("source", [PADDING, EXPANDED_PADDING], ids=["padding", "expanded-padding"])
@pytest.mark.parametrize("feature_map", ["elu", "performer"])
def test_key_padding_mask_is_honored(source, feature_map):
    """Masked keys drop out: the result equals linear attention over the kept keys only."""
    model, record = _run(source, f"attention,linear-attention(feature_map={feature_map})")
    assert record.modified
    assert json.loads(_node(model).metadata_props[CHOICES_KEY])["mask"] == "key-padding"
    testing.assert_valid(model)
    feeds = _feeds(source)
    (got,) = testing.run_ort(model, feeds)
    for batch, kept in ((0, 4), (1, 3)):
        q, k, v = (feeds[n][batch : batch + 1] for n in "QKV")
        qf, kf = _features(feature_map, q, k[..., :kept, :], model)
        expected = linear_attention_reference(qf, kf, v[..., :kept, :].astype(np.float64), 1.0)
        np.testing.assert_allclose(got[batch : batch + 1], expected, rtol=2e-5, atol=2e-5)


def test_decode_step_is_the_last_row_of_the_causal_prefill():
    """One query over the cache (not causal): the causal linear attention's value at that position."""
    model, record = _run(DECODE, "attention,linear-attention")
    assert record.modified and _node(model).attributes.get_int("causal", 0) == 0
    prefill_feeds = _feeds(CAUSAL)
    feeds = {"Q": prefill_feeds["Q"][:, :, -1:], "K": prefill_feeds["K"], "V": prefill_feeds["V"]}
    (got,) = testing.run_ort(model, feeds)
    prefill, _ = _run(CAUSAL, "attention,linear-attention")
    (full,) = testing.run_ort(prefill, prefill_feeds)
    np.testing.assert_allclose(got, full[:, :, -1:], rtol=1e-5, atol=1e-5)


def test_causal_option_overrides_the_node():
    model, _ = _run(NO_MASK, "attention,linear-attention(causal=always)")
    assert _node(model).attributes.get_int("causal", 0) == 1
    model, _ = _run(CAUSAL, "attention,linear-attention(causal=never)")
    assert _node(model).attributes.get_int("causal", 0) == 0


@pytest.mark.parametrize(("source", "pipeline", "reason"), [
    (QUERY_MASK, "linear-attention", "may differ between queries"),
    (SOFTCAP, "linear-attention", "softcapped"),
    (DECODE, "linear-attention(window=64)", "top-left aligned"),
    (NEGATIVE_SCALE, "linear-attention(feature_map=performer)", "is not positive"),
], ids=["query-mask", "softcap", "window", "negative-scale"])
def test_declines_with_reason(source, pipeline, reason):
    model, record = _run(source, f"attention,{pipeline}")
    assert not record.modified
    assert "DotProductAttention" in testing.op_types(model) and OP_NAME not in testing.op_types(model)
    assert any(reason in d for d in record.declines), record.declines


def test_bad_options_are_usage_errors():
    with pytest.raises(UsageError, match="feature_map"):
        _run(NO_MASK, "linear-attention(feature_map=gauss)")
    with pytest.raises(UsageError, match="bias"):
        _run(NO_MASK, "sigmoid-attention(bias=big)")


# --- softmax-free attention ----------------------------------------------------------------------------


def _logits(feeds, causal=False, mask=None):
    q, k = feeds["Q"].astype(np.float64), feeds["K"].astype(np.float64)
    s = q @ np.swapaxes(k, -1, -2) * SCALE
    if mask is not None:
        s = s + mask
    if causal:
        s = np.where(np.triu(np.ones(s.shape[-2:], bool), 1), -np.inf, s)
    return s


@pytest.mark.parametrize(("source", "causal"), [(NO_MASK, False), (CAUSAL, True), (PADDING, False)],
                         ids=["encoder", "causal", "padding"])
@pytest.mark.parametrize("bias", ["auto", "-3"])
def test_sigmoid_attention(source, causal, bias):
    model, record = _run(source, f"attention,sigmoid-attention(bias={bias})")
    assert record.rewrites == {"sigmoid-attention": 1}
    ops = testing.op_types(model)
    assert "Sigmoid" in ops and "Softmax" not in ops and "DotProductAttention" not in ops
    testing.assert_valid(model)
    feeds = _feeds(source)
    (got,) = testing.run_ort(model, feeds)
    b = -math.log(5) if bias == "auto" else -3.0
    with np.errstate(over="ignore"):  # exp(+inf) at masked keys: weight 0
        weights = 1 / (1 + np.exp(-(_logits(feeds, causal, feeds.get("M")) + b)))
    np.testing.assert_allclose(got, weights @ feeds["V"], rtol=1e-5, atol=1e-5)


def test_sigmoid_golden_ops():
    model, _ = _run(NO_MASK, "attention,sigmoid-attention")
    assert testing.op_types(model) == ["Transpose", "MatMul", "Constant", "Mul", "Constant", "Add", "Sigmoid", "MatMul"]


@pytest.mark.parametrize(("source", "causal"), [(NO_MASK, False), (CAUSAL, True), (PADDING, False)],
                         ids=["encoder", "causal", "padding"])
def test_softplus_attention(source, causal):
    model, record = _run(source, "attention,softplus-attention")
    assert record.rewrites == {"softplus-attention": 1}
    ops = testing.op_types(model)
    assert "Softplus" in ops and "Softmax" not in ops
    testing.assert_valid(model)
    feeds = _feeds(source)
    (got,) = testing.run_ort(model, feeds)
    weights = np.logaddexp(0, _logits(feeds, causal, feeds.get("M")))
    weights /= weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(got, weights @ feeds["V"], rtol=1e-5, atol=1e-5)


def test_softmax_free_passes_decline_unknown_key_rank():
    import onnx_ir as ir  # noqa: PLC0415

    model = ir.serde.deserialize_model(onnx.parser.parse_model(NO_MASK))
    run_pipeline(model, "attention")
    node = _node(model, "DotProductAttention")
    node.inputs[1].shape = None
    record = run_pipeline(model, "sigmoid-attention")[-1]
    assert not record.modified and any("rank of K" in d for d in record.declines)


@pytest.mark.parametrize("pipeline", ["linear-attention(feature_map=elu)", "softplus-attention"])
def test_float64_models_run_in_onnx_runtime(pipeline):
    """ONNX Runtime has no float64 Elu or Softplus: the float64 graphs spell them with other ops (found by fuzzing)."""
    source = NO_MASK.replace("float[", "double[").replace("float {", "double {")
    model, record = _run(source, f"attention,{pipeline}")
    assert record.modified and "Elu" not in testing.op_types(model) and "Softplus" not in testing.op_types(model)
    testing.assert_valid(model)
    feeds = {k: v.astype(np.float64) for k, v in _feeds(NO_MASK).items()}
    (got,) = testing.run_ort(model, feeds)
    if "elu" in pipeline:
        qf, kf = _features("elu", feeds["Q"], feeds["K"])
        expected = linear_attention_reference(qf, kf, feeds["V"], 1.0)
    else:
        weights = np.logaddexp(0, _logits(feeds))
        expected = (weights / weights.sum(-1, keepdims=True)) @ feeds["V"]
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


def _float16(source: str) -> onnx.ModelProto:
    """``source`` with its float inputs, outputs and Constant tensors in float16 (the text parser takes no float16 literals)."""
    proto = onnx.parser.parse_model(source)
    for value in [*proto.graph.input, *proto.graph.output]:
        value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    for node in proto.graph.node:
        for attribute in node.attribute:
            if attribute.name == "value" and attribute.t.data_type == onnx.TensorProto.FLOAT:
                array = onnx.numpy_helper.to_array(attribute.t).astype(np.float16)
                attribute.t.CopyFrom(onnx.numpy_helper.from_array(array))
    return proto


def test_float16_attention_runs_the_op_in_float32():
    import onnx_ir as ir  # noqa: PLC0415

    model = ir.serde.deserialize_model(_float16(NO_MASK))
    record = run_pipeline(model, "attention,linear-attention(feature_map=performer)")[-1]
    assert record.modified
    node = _node(model)
    assert node.inputs[0].dtype == node.inputs[2].dtype == ir_float()
    assert json.loads(node.metadata_props[CHOICES_KEY])["compute"] == "float32"
    assert testing.op_types(model)[-1] == "Cast"
    testing.assert_valid(model)
    feeds = {k: v.astype(np.float16) for k, v in _feeds(NO_MASK).items()}
    (got,) = testing.run_ort(model, feeds)
    assert got.dtype == np.float16
    qf, kf = _features("performer", feeds["Q"], feeds["K"], model)
    np.testing.assert_allclose(got, linear_attention_reference(qf, kf, feeds["V"].astype(np.float64), 1.0), rtol=2e-2, atol=2e-2)


def ir_float():
    import onnx_ir as ir  # noqa: PLC0415

    return ir.DataType.FLOAT
