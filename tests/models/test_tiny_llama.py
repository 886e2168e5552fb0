"""tiny-llama: prefill and KV-cache decode graphs, valid, matching torch, deterministic."""

from __future__ import annotations

import pytest

from graphopt.models import tiny_llama


def test_prefill_matches_torch(check):
    proto = check.matches_torch(tiny_llama, {"graph": "prefill"}, {}, {"batch": 1, "seq_len": 13})
    assert [i.name for i in proto.graph.input] == ["input_ids"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    ops = {n.op_type for n in proto.graph.node}
    assert {"Softmax", "Sigmoid", "Cos", "Sin", "ReduceMean"} <= ops  # attention, SiLU, RoPE, RMSNorm


def test_decode_with_kv_cache_matches_torch(check):
    proto = check.matches_torch(tiny_llama, {"graph": "decode"}, {}, {"batch": 3, "seq_len": 5})
    cache = ["key_0", "value_0", "key_1", "value_1"]
    assert [i.name for i in proto.graph.input] == ["input_ids", *(f"past_{c}" for c in cache)]
    assert [o.name for o in proto.graph.output] == ["logits", *(f"present_{c}" for c in cache)]


def test_legacy_exporter_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="dynamo"):
        tiny_llama.build(exporter="legacy")


@pytest.mark.slow
def test_build_is_deterministic(check, monkeypatch):
    cached = tiny_llama.build(graph="decode").SerializeToString()
    monkeypatch.setenv("GRAPHOPT_CACHE", "off")
    assert tiny_llama.build(graph="decode").SerializeToString() == cached
