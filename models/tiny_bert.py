"""A tiny BERT-style encoder: ``transformers.BertModel`` with random weights under a fixed seed.

2 layers, hidden 64, 4 heads, intermediate 128, erf GELU, post-LN LayerNorm, attention with a
padding mask, no pooler, vocab 512. Inputs ``input_ids`` and ``attention_mask`` (int64,
``(batch, sequence)``, both dims dynamic); output ``last_hidden_state`` ``(batch, sequence, 64)``.
Exporting the real HF module keeps the exporters' attention / mask / GELU patterns the real ones.
``attn_implementation`` picks HF's ``eager`` attention (MatMul/Softmax/MatMul, the default) or
``sdpa``; ``exporter`` and ``opset`` as in ``_export.export``.
"""

from __future__ import annotations

import numpy as np
import onnx

from graphopt.models import _export

__all__ = ["build", "example_inputs", "module"]

VOCAB = 512
INPUTS, OUTPUT = ("input_ids", "attention_mask"), "last_hidden_state"
DYNAMIC = {name: {0: "batch", 1: "sequence"} for name in (*INPUTS, OUTPUT)}
CONFIG = ("exporter", "opset", "seed", "layers", "hidden", "heads", "attn_implementation")  # build()'s keys


def module(
    seed: int = 0, layers: int = 2, hidden: int = 64, heads: int = 4, attn_implementation: str = "eager", **config
):
    """The BertModel (no pooler) behind a ``(input_ids, attention_mask) -> last_hidden_state`` wrapper."""
    import torch
    from transformers import BertConfig, BertModel

    _export.check_keys(config, CONFIG, "tiny_bert.module")

    class TinyBert(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        hidden_act="gelu",
        attn_implementation=attn_implementation,
    )
    torch.manual_seed(seed)
    return TinyBert(BertModel(cfg, add_pooling_layer=False)).eval()


def example_inputs(seed: int = 0, batch: int = 2, seq_len: int = 16, **config) -> dict[str, np.ndarray]:
    """Random token ids; every row but the first is right-padded (mask 0) over its last quarter."""
    _export.check_keys(config, CONFIG, "tiny_bert.example_inputs")
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(batch, seq_len), dtype=np.int64)
    mask = np.ones((batch, seq_len), dtype=np.int64)
    mask[1:, seq_len - seq_len // 4 :] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


def build(
    exporter: str = "dynamo",
    opset: int = 18,
    seed: int = 0,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    attn_implementation: str = "eager",
) -> onnx.ModelProto:
    """Export ``module(seed, ...)``; batch and sequence are dynamic."""
    arch = {"layers": layers, "hidden": hidden, "heads": heads, "attn_implementation": attn_implementation}
    return _export.cached(
        "tiny-bert",
        {"exporter": exporter, "opset": opset, "seed": seed, **arch},
        lambda: _export.export(
            module(seed, **arch), example_inputs(), [OUTPUT], exporter=exporter, opset=opset, dynamic=DYNAMIC
        ),
        files=[__file__],
    )
