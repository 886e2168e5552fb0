"""Export recipes: a Hugging Face model behind a ``forward`` whose arguments are plain tensors.

torch.export binds inputs by the forward signature, and a decoder's KV cache is a ``DynamicCache``
object, not a tensor: ``decoder_step`` wraps a causal LM so the cache comes in as ``past_key_i`` /
``past_value_i`` tensors and goes out as ``present_key_i`` / ``present_value_i`` (the layout ONNX
Runtime GenAI and Optimum use). ``encoder`` wraps any model that returns ``last_hidden_state`` (or
``logits``) from named inputs.
"""

from __future__ import annotations

import inspect

__all__ = ["cache_names", "decoder_prefill", "decoder_step", "encoder"]


def cache_names(layers: int, prefix: str) -> list[str]:
    """``prefix_key_0, prefix_value_0, prefix_key_1, ...``."""
    return [f"{prefix}_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]


def _with_signature(cls, names: list[str]):
    param = inspect.Parameter.POSITIONAL_OR_KEYWORD
    cls.forward.__signature__ = inspect.Signature([inspect.Parameter(n, param) for n in ("self", *names)])
    return cls


def encoder(model, input_names: list[str], output: str = "last_hidden_state"):
    """``model(**inputs).<output>`` as a module with ``input_names`` as its arguments."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args, **kwargs):  # positional for the legacy exporter, by name for torch.export
            return getattr(self.inner(**dict(zip(input_names, args)), **kwargs), output)

    return _with_signature(Encoder, input_names)(model).eval()


def decoder_prefill(lm):
    """``input_ids -> logits`` without a cache (``use_cache=False``)."""
    import torch

    class Prefill(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids):
            return self.inner(input_ids=input_ids, use_cache=False).logits

    return Prefill(lm).eval()


def decoder_step(lm, layers: int):
    """One token with a KV cache: ``(input_ids, past_key_0, past_value_0, ...) -> (logits, present_key_0, ...)``."""
    import torch
    from transformers import DynamicCache

    past = cache_names(layers, "past")

    class Decode(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, **cache):
            kv = [cache[name] for name in past]
            state = DynamicCache(list(zip(kv[0::2], kv[1::2])), config=self.inner.config)
            out = self.inner(input_ids=input_ids, past_key_values=state, use_cache=True)
            return (out.logits, *[t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)])

    return _with_signature(Decode, ["input_ids", *past])(lm).eval()
