"""stdlib-llama: a small LLaMA-style decoder trained on the Python standard library's source.

``transformers.LlamaForCausalLM``: 4 layers, hidden 192, 4 query heads sharing 2 KV heads (GQA,
head dim 48), SwiGLU MLP 512 (8/3 x hidden, as LLaMA), RMSNorm, RoPE, context 256, untied
embeddings; byte-level vocabulary of 257 (``stdlib_corpus``: bytes + a BOS before every file).
1.72 M parameters. The graphs and their contract are tiny-llama's:

- ``build(graph="prefill")``: ``input_ids`` int64 ``(batch, sequence)`` -> ``logits``
  ``(batch, sequence, 257)``;
- ``build(graph="decode")``: ``input_ids`` ``(batch, 1)`` and per layer i ``past_key_i`` /
  ``past_value_i`` float32 ``(batch, 2, past_sequence, 48)`` -> ``logits`` ``(batch, 1, 257)`` and
  ``present_key_i`` / ``present_value_i`` ``(batch, 2, past_sequence + 1, 48)``.

The trained weights ship in ``data/stdlib_llama.npz`` stored as float16 (to stay under 5 MB; the
module loads them as float32), with the Python version, corpus digest and losses they were trained
with. ``train()`` reproduces them (seeded, deterministic on one thread; 1000 steps, about 13
minutes of CPU); see ``stdlib_llama_train`` for the recipe, the measured time and the losses.
Held-out perplexity per byte: 3.74 on the whole split, 3.57 with ``perplexity()``'s default 64
windows (unigram baseline: 24.5). ``perplexity(runner)`` measures held-out
perplexity per token (per byte, file starts included) through any runner; ``calibration_samples``
draws windows from the train split.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx

from graphopt.models import _export, stdlib_corpus, tiny_llama

__all__ = [
    "ARCH", "GRAPHS", "VOCAB", "WEIGHTS", "build", "calibration_samples", "example_inputs", "held_out_tokens",
    "lm", "llama_config", "metadata", "module", "perplexity", "train", "windows",
]

WEIGHTS = Path(__file__).with_name("data") / "stdlib_llama.npz"
ARCH = {"hidden": 192, "layers": 4, "heads": 4, "kv_heads": 2, "intermediate": 512, "context": 256}
GRAPHS = ("prefill", "decode")
HEAD_DIM = ARCH["hidden"] // ARCH["heads"]
VOCAB = stdlib_corpus.VOCAB
CONFIG = ("exporter", "opset", "seed", "graph", "attn_implementation")
META = "meta."  # npz keys that are not weights: python version, corpus digest, losses


def llama_config(attn_implementation: str = "eager"):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=stdlib_corpus.VOCAB,
        hidden_size=ARCH["hidden"],
        intermediate_size=ARCH["intermediate"],
        num_hidden_layers=ARCH["layers"],
        num_attention_heads=ARCH["heads"],
        num_key_value_heads=ARCH["kv_heads"],
        max_position_embeddings=ARCH["context"],
        bos_token_id=stdlib_corpus.BOS,
        eos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=False,
        attn_implementation=attn_implementation,
    )


def lm(attn_implementation: str = "eager"):
    """The ``LlamaForCausalLM`` with the shipped weights (float16 on disk, float32 here), eval mode."""
    import torch
    from transformers import LlamaForCausalLM

    if not WEIGHTS.exists():
        raise FileNotFoundError(f"{WEIGHTS} is missing; `python -m graphopt.models.stdlib_llama_train` writes it")
    net = LlamaForCausalLM(llama_config(attn_implementation))
    with np.load(WEIGHTS) as w:
        state = {k: torch.from_numpy(w[k].astype(np.float32)) for k in w.files if not k.startswith(META)}
        _warn_if_corpus_changed(str(w[META + "corpus_sha256"]), str(w[META + "python"]))
    net.load_state_dict(state)
    return net.eval()


def _warn_if_corpus_changed(trained_digest: str, trained_python: str) -> None:
    if trained_digest != stdlib_corpus.digest():
        warnings.warn(
            f"stdlib-llama was trained on the standard library of Python {trained_python}; this one differs "
            "(another patch version?): held-out perplexity is measured on this one's text",
            stacklevel=3,
        )


def metadata() -> dict[str, str]:
    """What the shipped weights were trained with: python, corpus_sha256, steps, losses, seconds."""
    with np.load(WEIGHTS) as w:
        return {k[len(META):]: str(w[k]) for k in w.files if k.startswith(META)}


def _cache_names(graph: str, prefix: str) -> list[str]:
    if graph not in GRAPHS:
        raise ValueError(f"unknown graph {graph!r}; choose one of {', '.join(GRAPHS)}")
    if graph == "prefill":
        return []
    return [f"{prefix}_{kind}_{i}" for i in range(ARCH["layers"]) for kind in ("key", "value")]


def module(seed: int = 0, graph: str = "prefill", attn_implementation: str = "eager", **config):
    """The trained model behind a wrapper whose forward takes ``graph``'s inputs; eval mode.

    Only seed 0 ships (training takes about 25 minutes): ``train(seed)`` makes others.
    """
    _export.check_keys(config, CONFIG, "stdlib_llama.module")
    if seed != 0:
        raise ValueError(f"stdlib-llama ships the weights of seed 0 only; train(seed={seed}) trains others")
    past_names = _cache_names(graph, "past")
    return tiny_llama.graph_module(lm(attn_implementation), past_names)


def held_out_tokens() -> np.ndarray:
    """The held-out token stream (read at run time from this Python's standard library)."""
    return stdlib_corpus.split("held-out")


def windows(split: str, count: int | None, seq_len: int, seed: int = 0) -> np.ndarray:
    """``count`` windows of ``seq_len`` tokens, int64 ``(count, seq_len)``. Held-out: spread evenly
    over the whole split (``seed`` unused), so every caller measures the same text; ``count=None``:
    all of it, non-overlapping. Train: at random offsets drawn with ``seed``."""
    stream = stdlib_corpus.split(split)
    last = len(stream) - seq_len
    if split == "held-out":
        if count is None:
            return stream[: len(stream) // seq_len * seq_len].reshape(-1, seq_len).copy()
        if count * seq_len > len(stream):
            raise ValueError(f"the held-out split has {len(stream)} tokens, fewer than {count} x {seq_len}")
        starts = np.linspace(0, last, count).astype(np.int64)
    else:
        starts = np.random.default_rng(seed).integers(0, last, size=count)
    return np.stack([stream[s : s + seq_len] for s in starts])


def calibration_samples(n: int, seq_len: int = 64, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` prefill inputs ``{"input_ids": (1, seq_len)}`` from the train split (never held-out text)."""
    return [{"input_ids": w[None]} for w in windows("train", n, seq_len, seed)]


def example_inputs(seed: int = 0, graph: str = "prefill", batch: int = 2, seq_len: int = 16, **config):
    """Train-split text; for ``decode`` one token per row and the model's own KV cache of
    ``seq_len`` positions (computed with the torch model, so the step is a real next step)."""
    _export.check_keys(config, CONFIG, "stdlib_llama.example_inputs")
    if graph == "prefill":
        return {"input_ids": windows("train", batch, seq_len, seed)}
    tokens = windows("train", batch, seq_len + 1, seed)
    return {"input_ids": tokens[:, -1:], **_kv_cache(tokens[:, :-1])}


def _kv_cache(prompt: np.ndarray) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        cache = lm()(input_ids=torch.from_numpy(prompt), use_cache=True).past_key_values
    out = {}
    for i, layer in enumerate(cache.layers):
        out[f"past_key_{i}"], out[f"past_value_{i}"] = layer.keys.numpy(), layer.values.numpy()
    return out


def build(exporter: str = "dynamo", opset: int = 18, seed: int = 0, graph: str = "prefill",
          attn_implementation: str = "eager") -> onnx.ModelProto:
    """Export the ``prefill`` or ``decode`` graph (see the module docstring); dynamo exporter only."""
    if exporter != "dynamo":
        raise ValueError("stdlib-llama exports with the dynamo exporter only (legacy: aten::diff is unsupported)")
    present = _cache_names(graph, "present")
    if graph == "prefill":
        dynamic = {"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}
    else:
        dynamic = {"input_ids": {0: "batch"}, "logits": {0: "batch"}}
        dynamic |= {name: {0: "batch", 2: "past_sequence"} for name in _cache_names(graph, "past")}
    return _export.cached(
        "stdlib-llama",
        {"exporter": exporter, "opset": opset, "seed": seed, "graph": graph,
         "attn_implementation": attn_implementation},
        lambda: _export.export(
            module(seed, graph, attn_implementation), example_inputs(graph=graph), ["logits", *present],
            exporter=exporter, opset=opset, dynamic=dynamic,
        ),
        files=[__file__, stdlib_corpus.__file__, WEIGHTS],
    )


def perplexity(runner: Callable[[Mapping[str, np.ndarray]], object], count: int | None = 64, seq_len: int = 256,
               batch: int = 8) -> float:
    """Held-out perplexity per token of ``runner`` on ``count`` held-out windows of
    ``seq_len`` tokens (``windows``; None: the whole split); each window predicts its tokens 2..seq_len.

    ``runner``: an ``onnxruntime.InferenceSession`` of the prefill graph, or a callable
    ({"input_ids": (b, s)} -> logits (b, s, 257), or a list/tuple whose first item is them; numpy or
    torch), e.g. the torch ``module()`` wrapped or ``lambda x: testing.run_ort(proto, x)``."""
    tokens = windows("held-out", count, seq_len)
    nats = [_window_nats(_logits(runner, tokens[i : i + batch]), tokens[i : i + batch])
            for i in range(0, len(tokens), batch)]
    return float(np.exp(np.concatenate(nats).mean()))


def _logits(runner, tokens: np.ndarray) -> np.ndarray:
    if hasattr(runner, "get_inputs") and hasattr(runner, "run"):  # an onnxruntime.InferenceSession
        return np.asarray(runner.run(None, {"input_ids": tokens})[0])
    out = runner({"input_ids": tokens})
    if isinstance(out, (list, tuple)):
        out = out[0]
    return out.detach().numpy() if hasattr(out, "detach") else np.asarray(out)


def _window_nats(logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of each next token, float64, flattened."""
    logits = logits[:, :-1].astype(np.float64)
    top = logits.max(-1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
    picked = np.take_along_axis(logits, tokens[:, 1:, None], -1)[..., 0]
    return (log_z - picked).ravel()


def train(seed: int = 0, **recipe):
    """Train from scratch (see ``stdlib_llama_train.train``); returns the float32 model."""
    from graphopt.models import stdlib_llama_train

    return stdlib_llama_train.train(seed=seed, **recipe)
