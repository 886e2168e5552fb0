"""The zoo's architectures: Hugging Face ``transformers`` classes built from small configs with
random weights (seeded), each with the inputs its family takes.

``ARCHITECTURES[name]`` is an ``Architecture``: the family, a ``config(size)`` factory (``"small"``
for tests: 2 layers, hidden 64; ``"full"``: the published size, for benchmarks), the model class,
the kind of inputs, and for decoders the causal-LM class whose cache the decode graph carries.

``init`` names how the random weights are drawn. ``"hf"`` keeps Hugging Face's own init. Where
that init is degenerate at random weights, ``"he-normal"`` redraws them (``initialize``): Hugging
Face draws every conv/linear weight N(0, 0.02) and, for MobileViT, the BatchNorm gammas too, so
without pretrained weights a deep conv stack shrinks activations ~10^3 per block and its output
underflows to zeros (MobileViT: all zeros; MobileNetV2: max |y| 5e-25). A model whose FP32 output
is zero tells nothing about a rewrite (every calibrated range is 0, every cosine is 0 or undefined).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["ARCHITECTURES", "Architecture", "initialize", "make_inputs"]

SMALL = {"hidden": 64, "layers": 2, "heads": 4, "ffn": 128, "vocab": 512, "image": 32}


@dataclasses.dataclass(frozen=True)
class Architecture:
    name: str
    family: str  # text-encoder, decoder, vision, conv, audio
    model_class: str  # transformers class
    config: Callable[[str], Any]  # size -> config object
    inputs: str  # text, image, audio-features, audio-wave, ids
    output: str = "last_hidden_state"
    image: int = 32
    channels: int = 3
    init: str = "hf"  # "hf" or "he-normal" (see ``initialize``)


def _t(cls_name: str, **small):
    """A config factory: small dims for tests; the class's defaults (the published size) for ``full``."""
    def make(size: str):
        import transformers

        cls = getattr(transformers, cls_name)
        return cls() if size == "full" else cls(**small)
    return make


_TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=512,
             max_position_embeddings=128)
_DECODER = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                vocab_size=512, max_position_embeddings=128)
_VIT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32, patch_size=8)

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in [
    # text encoders
    Architecture("bert", "text-encoder", "BertModel", _t("BertConfig", **_TEXT), "text"),
    Architecture("roberta", "text-encoder", "RobertaModel", _t("RobertaConfig", **_TEXT), "text"),
    Architecture("distilbert", "text-encoder", "DistilBertModel",
                 _t("DistilBertConfig", dim=64, n_layers=2, n_heads=4, hidden_dim=128, vocab_size=512, max_position_embeddings=128), "text"),
    Architecture("albert", "text-encoder", "AlbertModel", _t("AlbertConfig", embedding_size=32, **_TEXT), "text"),
    Architecture("electra", "text-encoder", "ElectraModel", _t("ElectraConfig", embedding_size=32, **_TEXT), "text"),
    Architecture("deberta-v2", "text-encoder", "DebertaV2Model", _t("DebertaV2Config", **_TEXT), "text"),
    Architecture("mpnet", "text-encoder", "MPNetModel", _t("MPNetConfig", **_TEXT), "text"),
    Architecture("xlm-roberta", "text-encoder", "XLMRobertaModel", _t("XLMRobertaConfig", **_TEXT), "text"),
    # decoders (prefill; the zoo adds each one's decode-with-cache graph)
    Architecture("gpt2", "decoder", "GPT2LMHeadModel", _t("GPT2Config", n_embd=64, n_layer=2, n_head=4, vocab_size=512, n_positions=128),
                 "ids", output="logits"),
    Architecture("llama", "decoder", "LlamaForCausalLM", _t("LlamaConfig", **_DECODER), "ids", output="logits"),
    Architecture("mistral", "decoder", "MistralForCausalLM", _t("MistralConfig", **_DECODER), "ids", output="logits"),
    Architecture("qwen2", "decoder", "Qwen2ForCausalLM", _t("Qwen2Config", **_DECODER), "ids", output="logits"),
    Architecture("phi3", "decoder", "Phi3ForCausalLM", _t("Phi3Config", pad_token_id=0, **_DECODER), "ids", output="logits"),
    Architecture("gemma", "decoder", "GemmaForCausalLM", _t("GemmaConfig", head_dim=16, **_DECODER), "ids", output="logits"),
    # vision transformers
    Architecture("vit", "vision", "ViTModel", _t("ViTConfig", **_VIT), "image"),
    Architecture("deit", "vision", "DeiTModel", _t("DeiTConfig", **_VIT), "image"),
    Architecture("beit", "vision", "BeitModel", _t("BeitConfig", use_relative_position_bias=True, **_VIT), "image"),
    Architecture("swin", "vision", "SwinModel",
                 _t("SwinConfig", image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4), "image"),
    Architecture("segformer", "vision", "SegformerModel",
                 _t("SegformerConfig", num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                    num_attention_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2]), "image"),
    Architecture("mobilevit", "vision", "MobileViTModel",
                 _t("MobileViTConfig", image_size=32, hidden_sizes=[32, 40, 48], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64]), "image",
                 init="he-normal"),
    # conv nets
    Architecture("resnet", "conv", "ResNetModel", _t("ResNetConfig", embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1]), "image"),
    Architecture("convnext", "conv", "ConvNextModel", _t("ConvNextConfig", num_stages=2, hidden_sizes=[16, 32], depths=[1, 1]), "image"),
    Architecture("mobilenet-v2", "conv", "MobileNetV2Model", _t("MobileNetV2Config", image_size=32, depth_multiplier=0.35), "image",
                 init="he-normal"),
    Architecture("regnet", "conv", "RegNetModel", _t("RegNetConfig", embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], groups_width=8), "image"),
    # audio
    Architecture("whisper-encoder", "audio", "WhisperModel",
                 _t("WhisperConfig", d_model=64, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
                    encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=16, max_source_positions=16, vocab_size=512,
                    pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1), "audio-features"),
    Architecture("wav2vec2", "audio", "Wav2Vec2Model",
                 _t("Wav2Vec2Config", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                    conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4), "audio-wave"),
]}


def initialize(model, recipe: str, seed: int = 0) -> None:
    """Redraw ``model``'s weights by ``recipe`` (seeded; ``"hf"`` leaves them as built).

    ``"he-normal"``: every Conv and Linear weight N(0, 2 / fan_in) (He, for ReLU-like activations:
    the activation scale is kept from layer to layer), their biases 0; every BatchNorm gamma 1,
    beta 0, running mean 0 and variance 1 (an identity at eval time). LayerNorms keep Hugging
    Face's ones and zeros; embeddings keep their draw.
    """
    import torch

    if recipe == "hf":
        return
    if recipe != "he-normal":
        raise ValueError(f"unknown init recipe {recipe!r}: 'hf' or 'he-normal'")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
                fan_in = module.weight[0].numel()  # what one output reads: in/group x kernel taps
                module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.reset_parameters()  # gamma 1, beta 0, running stats 0 / 1


def make_inputs(arch: Architecture, config: Any, seed: int = 0, batch: int = 1, seq: int = 16) -> dict[str, np.ndarray]:
    """Seeded inputs of the architecture's kind (text rows after the first padded over their last quarter)."""
    rng = np.random.default_rng(seed)
    if arch.inputs in ("text", "ids"):
        vocab = getattr(config, "vocab_size", 512)
        ids = rng.integers(3, vocab, size=(batch, seq), dtype=np.int64)
        if arch.inputs == "ids":
            return {"input_ids": ids}
        mask = np.ones((batch, seq), np.int64)
        mask[1:, seq - seq // 4:] = 0
        return {"input_ids": np.where(mask == 1, ids, 1), "attention_mask": mask}
    if arch.inputs == "image":
        size = getattr(config, "image_size", 32)
        size = size[0] if isinstance(size, (list, tuple)) else size
        size = 32 if size > 64 else size
        return {"pixel_values": rng.standard_normal((batch, getattr(config, "num_channels", 3), size, size)).astype(np.float32)}
    if arch.inputs == "audio-features":
        frames = 2 * config.max_source_positions
        return {"input_features": rng.standard_normal((batch, config.num_mel_bins, frames)).astype(np.float32)}
    return {"input_values": rng.standard_normal((batch, 1600)).astype(np.float32)}
