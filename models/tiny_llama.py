"""A tiny LLaMA-style decoder: ``transformers.LlamaForCausalLM`` with random weights under a fixed seed.

2 layers, hidden 64, 4 query heads sharing 2 KV heads (GQA), head dim 16, SwiGLU MLP (128),
RMSNorm, RoPE, causal attention (HF ``eager`` attention by default, or ``sdpa``), vocab 512.
Two graphs, both with logits out:

- ``build(graph="prefill")``: ``input_ids`` int64 ``(batch, sequence)`` -> ``logits``
  ``(batch, sequence, 512)``. No KV cache in or out, no padding mask.
- ``build(graph="decode")``: one token step *with* a KV cache. Inputs ``input_ids`` int64
  ``(batch, 1)`` and, per layer i, ``past_key_i`` / ``past_value_i`` float32
  ``(batch, 2, past_sequence, 16)``; outputs ``logits`` ``(batch, 1, 512)`` and
  ``present_key_i`` / ``present_value_i`` ``(batch, 2, past_sequence + 1, 16)``. The new token
  sits at position ``past_sequence``.

Batch, sequence and past_sequence are dynamic. Dynamo exporter only: the legacy TorchScript exporter
cannot export transformers' mask code (``aten::diff``). ``example_inputs(graph=..., seq_len=n)`` gives n
prompt tokens for prefill and a random n-position cache for decode.
"""

from __future__ import annotations

import inspect

import numpy as np
import onnx

from graphopt.models import _export

__all__ = ["GRAPHS", "build", "example_inputs", "module"]

GRAPHS = ("prefill", "decode")
VOCAB = 512
CONFIG = ("exporter", "opset", "seed", "graph", "layers", "hidden", "heads", "kv_heads", "attn_implementation")


def _cache_names(graph: str, layers: int, prefix: str) -> list[str]:
    """``prefix_key_0, prefix_value_0, prefix_key_1, ...``; none for prefill."""
    if graph not in GRAPHS:
        raise ValueError(f"unknown graph {graph!r}; choose one of {', '.join(GRAPHS)}")
    return [] if graph == "prefill" else [f"{prefix}_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]


def module(
    seed: int = 0,
    graph: str = "prefill",
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    attn_implementation: str = "eager",
    **config,
):
    """The LlamaForCausalLM behind a wrapper whose forward takes ``graph``'s inputs; eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    _export.check_keys(config, CONFIG, "tiny_llama.module")
    past_names = _cache_names(graph, layers, "past")
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        attn_implementation=attn_implementation,
    )

    torch.manual_seed(seed)
    return graph_module(LlamaForCausalLM(cfg), past_names)


def graph_module(lm, past_names: list[str]):
    """``lm`` (a causal LM) behind a wrapper whose forward takes one graph's inputs, eval mode:
    ``input_ids`` -> logits (prefill, no ``past_names``), or ``input_ids`` and the named KV cache ->
    logits and the new cache (decode)."""
    import torch  # noqa: PLC0415
    from transformers import DynamicCache  # noqa: PLC0415

    class Prefill(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids):
            return self.lm(input_ids=input_ids, use_cache=False).logits

    class Decode(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, **past):
            kv = [past[name] for name in past_names]
            cache = DynamicCache(list(zip(kv[0::2], kv[1::2])), config=self.lm.config)
            out = self.lm(input_ids=input_ids, past_key_values=cache, use_cache=True)
            return (out.logits, *[t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)])

    # torch.export binds inputs by the forward signature: spell the per-layer cache names out in it.
    param = inspect.Parameter.POSITIONAL_OR_KEYWORD
    Decode.forward.__signature__ = inspect.Signature(
        [inspect.Parameter(name, param) for name in ("self", "input_ids", *past_names)]
    )
    return (Decode if past_names else Prefill)(lm).eval()


def example_inputs(
    seed: int = 0,
    graph: str = "prefill",
    batch: int = 2,
    seq_len: int = 8,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    **config,
) -> dict[str, np.ndarray]:
    """Random token ids; for ``decode`` one token per row and a random KV cache of ``seq_len`` positions."""
    _export.check_keys(config, CONFIG, "tiny_llama.example_inputs")
    rng = np.random.default_rng(seed)
    inputs = {"input_ids": rng.integers(0, VOCAB, size=(batch, 1 if graph == "decode" else seq_len), dtype=np.int64)}
    for name in _cache_names(graph, layers, "past"):
        inputs[name] = rng.standard_normal((batch, kv_heads, seq_len, hidden // heads), dtype=np.float32)
    return inputs


def build(
    exporter: str = "dynamo",
    opset: int = 18,
    seed: int = 0,
    graph: str = "prefill",
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    attn_implementation: str = "eager",
) -> onnx.ModelProto:
    """Export the ``prefill`` or ``decode`` graph (see the module docstring)."""
    if exporter != "dynamo":
        raise ValueError("tiny-llama exports with the dynamo exporter only (legacy: aten::diff is unsupported)")
    arch = {"layers": layers, "hidden": hidden, "heads": heads, "kv_heads": kv_heads}
    past, present = _cache_names(graph, layers, "past"), _cache_names(graph, layers, "present")
    if graph == "prefill":
        dynamic = {"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}
    else:
        dynamic = {"input_ids": {0: "batch"}, "logits": {0: "batch"}}
        dynamic |= {name: {0: "batch", 2: "past_sequence"} for name in past}
    return _export.cached(
        "tiny-llama",
        {"exporter": exporter, "opset": opset, "seed": seed, "graph": graph,
         "attn_implementation": attn_implementation, **arch},
        lambda: _export.export(
            module(seed, graph, attn_implementation=attn_implementation, **arch),
            example_inputs(graph=graph, **arch),
            ["logits", *present],
            exporter=exporter,
            opset=opset,
            dynamic=dynamic,
        ),
        files=[__file__],
    )
