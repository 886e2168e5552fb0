"""tiny-bert: valid, matches torch with a padding mask and dynamic shapes, deterministic."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from graphopt.models import tiny_bert

SHAPES = ({}, {"batch": 3, "seq_len": 11})


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({}, id="dynamo18-eager"),
        pytest.param({"exporter": "legacy", "opset": 14}, id="legacy14-eager"),
        pytest.param({"attn_implementation": "sdpa"}, id="dynamo18-sdpa", marks=pytest.mark.slow),
    ],
)
def test_export_matches_torch(check, config):
    proto = check.matches_torch(tiny_bert, config, *SHAPES)
    assert [o.name for o in proto.graph.output] == ["last_hidden_state"]
    assert [d.dim_param for d in proto.graph.input[1].type.tensor_type.shape.dim] == ["batch", "sequence"]


def test_example_inputs_are_padded():
    inputs = tiny_bert.example_inputs(batch=2, seq_len=8)
    assert inputs["attention_mask"].tolist() == [[1] * 8, [1] * 6 + [0] * 2]


def test_build_is_deterministic(check, monkeypatch):
    cached = tiny_bert.build().SerializeToString()  # often exported by an earlier process, maybe elsewhere
    monkeypatch.setenv("GRAPHOPT_CACHE", "off")
    assert tiny_bert.build().SerializeToString() == cached
    assert os.fspath(Path(__file__).resolve().parents[2]).encode() not in cached  # no checkout paths
