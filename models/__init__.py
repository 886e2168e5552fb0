"""Reference models shared by tests, demos and benchmarks (BRIEF §5).

Each builder module exposes the same three functions:

- ``build(**config) -> onnx.ModelProto``: the exported ONNX; deterministic (same config, same bytes)
  and cached on disk (see ``_export``);
- ``module(seed=0, **config) -> torch.nn.Module``: the torch module it exports, in eval mode;
- ``example_inputs(seed=0, **config) -> dict[str, np.ndarray]``: inputs keyed by ONNX input name.

``module`` and ``example_inputs`` accept the whole ``build`` config (and ignore what they don't
use), so one dict drives all three. Importing this package does not import torch.

- ``digits-vit``: tiny ViT trained on sklearn digits (shipped weights, ``accuracy()``);
  pixels -> logits.
- ``tiny-bert``: 2-layer ``BertModel``, random weights; input_ids, attention_mask -> last_hidden_state.
- ``tiny-llama``: 2-layer ``LlamaForCausalLM`` with GQA; ``graph="prefill"`` (input_ids -> logits)
  or ``graph="decode"`` (one token + KV cache in, logits + updated cache out).
- ``minilm``: the pretrained all-MiniLM-L6-v2 (``tokenize``, ``mean_pool``, ``sentences``);
  input_ids, attention_mask -> last_hidden_state.
- ``stdlib-llama``: 4-layer ``LlamaForCausalLM`` trained on the Python standard library's source
  (shipped weights, byte vocabulary, ``perplexity()`` on held-out files); tiny-llama's two graphs.

``synthetic_bert`` (numpy-built BERT graphs of any size for the overhead benchmark) lives here too
but is not a registry entry: it has no torch module.
"""

from __future__ import annotations

from types import ModuleType

from graphopt.errors import UsageError
from graphopt.models import digits_vit, minilm, stdlib_llama, tiny_bert, tiny_llama

__all__ = ["DEFAULT", "MODELS", "default", "get_model"]

MODELS: dict[str, ModuleType] = {
    "digits-vit": digits_vit,
    "tiny-bert": tiny_bert,
    "tiny-llama": tiny_llama,
    "minilm": minilm,
    "stdlib-llama": stdlib_llama,
}
DEFAULT = "digits-vit"  # the demo's model: builds in seconds from shipped weights, no network
default = DEFAULT


def get_model(name: str) -> ModuleType:
    """The builder module registered as ``name`` (``digits_vit`` spelled with ``_`` works too)."""
    try:
        return MODELS[name.replace("_", "-")]
    except KeyError:
        raise UsageError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None
