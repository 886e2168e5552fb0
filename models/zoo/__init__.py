"""The model zoo: graph shapes nobody on the project drew (BRIEF §5).

Hugging Face architectures from configs with random weights, each exported by the dynamo exporter
(opset 18) and, where it works, by the legacy TorchScript exporter at opsets 14 and 17; decoders as
prefill and as one decode step with a KV cache; plus the forms models arrive in (``forms.py``):
QDQ from ONNX Runtime's ``quantize_static``, weight-only int8 (Cast + Mul, DequantizeLinear), fp16,
weights as Constant nodes, dynamic axes, ONNX Runtime's transformers optimizer output.

    from graphopt.models import zoo
    zoo.names()                       # every entry
    entry = zoo.get("bert-legacy17")
    proto, feeds = entry.build(), entry.example_inputs(seed=0)

``python -m graphopt.models.zoo --list`` and ``--build NAME DIR``. Builds are cached on disk like
the reference models (``graphopt.models._export``). Where an exporter fails on an architecture the
entry is still listed, and ``build()`` raises ``ExportUnsupported`` with the exporter's first line.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np
import onnx

from graphopt.models import _export
from graphopt.models.zoo.architectures import ARCHITECTURES, Architecture, initialize, make_inputs

__all__ = ["Entry", "ExportUnsupported", "entries", "get", "names", "torch_module"]

_FILES = [os.path.join(os.path.dirname(__file__), f) for f in ("__init__.py", "architectures.py", "recipes.py", "forms.py")]
DECODE_PAST = 8  # cache positions in the decode graph's example inputs


class ExportUnsupported(RuntimeError):
    """The exporter cannot export this architecture (recorded in the zoo table, not a graphopt bug)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    family: str
    exporter: str
    opset: int
    form: str  # "plain", "decode", or a form from forms.py
    make: Callable[[], onnx.ModelProto]
    inputs: Callable[[int], dict[str, np.ndarray]]
    transformer: bool = True  # has attention (ivit applies)

    def build(self) -> onnx.ModelProto:
        return self.make()

    def example_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        return self.inputs(seed)


def _module(arch: Architecture, config, graph: str = "plain"):
    import torch
    import transformers

    from graphopt.models.zoo import recipes

    torch.manual_seed(0)
    model = getattr(transformers, arch.model_class)(config).eval()
    initialize(model, arch.init, seed=0)
    if arch.name == "whisper-encoder":
        return recipes.encoder(model.get_encoder(), ["input_features"])
    if arch.family == "decoder":
        return recipes.decoder_step(model, config.num_hidden_layers) if graph == "decode" else recipes.decoder_prefill(model)
    names = list(make_inputs(arch, config))
    output = "last_hidden_state" if arch.family != "conv" else "pooler_output"
    return recipes.encoder(model, names, output)


def _decode_inputs(arch: Architecture, config, seed: int) -> dict[str, np.ndarray]:
    from graphopt.models.zoo.recipes import cache_names

    rng = np.random.default_rng(seed)
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    feeds = {"input_ids": rng.integers(3, config.vocab_size, size=(1, 1), dtype=np.int64)}
    for name in cache_names(config.num_hidden_layers, "past"):
        feeds[name] = rng.standard_normal((1, heads, DECODE_PAST, head_dim)).astype(np.float32)
    return feeds


def _export_entry(arch: Architecture, exporter: str, opset: int, graph: str, size: str = "small") -> onnx.ModelProto:
    config = arch.config(size)

    def produce() -> bytes:
        feeds = _decode_inputs(arch, config, 0) if graph == "decode" else make_inputs(arch, config)
        outputs = ["logits", *[n.replace("past", "present") for n in list(feeds)[1:]]] if graph == "decode" else [arch.output]
        try:
            return _export.export(_module(arch, config, graph), feeds, outputs, exporter=exporter, opset=opset)
        except Exception as e:  # noqa: BLE001 — any exporter failure is the exporter's limit, recorded
            text = str(e).strip().splitlines()
            raise ExportUnsupported(f"{exporter} exporter (opset {opset}) on {arch.name}: {type(e).__name__}: "
                                    f"{text[0][:200] if text else ''}") from e

    key = {"arch": arch.name, "exporter": exporter, "opset": opset, "graph": graph, "size": size}
    return _export.cached(f"zoo-{arch.name}", key, produce, files=_FILES)


def _arch_entries(arch: Architecture) -> list[Entry]:
    config = arch.config("small")
    transformer = arch.family != "conv"
    plain = lambda seed, a=arch, c=config: make_inputs(a, c, seed)  # noqa: E731
    out = [Entry(arch.name, arch.family, "dynamo", 18, "plain", lambda a=arch: _export_entry(a, "dynamo", 18, "plain"), plain,
                 transformer)]
    if arch.family == "decoder":
        out.append(Entry(f"{arch.name}-decode", arch.family, "dynamo", 18, "decode",
                         lambda a=arch: _export_entry(a, "dynamo", 18, "decode"),
                         lambda seed, a=arch, c=config: _decode_inputs(a, c, seed), transformer))
    for opset in (14, 17):
        out.append(Entry(f"{arch.name}-legacy{opset}", arch.family, "legacy", opset, "plain",
                         lambda a=arch, o=opset: _legacy(a, o), plain, transformer))
    return out


def _legacy(arch: Architecture, opset: int) -> onnx.ModelProto:
    return _export_entry(arch, "legacy", opset, "plain")


def entries() -> dict[str, Entry]:
    from graphopt.models.zoo import forms

    found = {e.name: e for arch in ARCHITECTURES.values() for e in _arch_entries(arch)}
    for entry in forms.entries(found):
        found[entry.name] = entry
    return found


def torch_module(name: str):
    """The torch module behind an architecture entry (``bert``, ``gpt2-decode``), eval mode, seeded:
    what ``graphopt.compile(module, example_inputs=...)`` takes (decoders through the KV-cache recipe)."""
    graph = "decode" if name.endswith("-decode") else "plain"
    arch = ARCHITECTURES.get(name.removesuffix("-decode"))
    if arch is None:
        from graphopt.errors import UsageError

        raise UsageError(f"{name!r} is not an architecture entry; torch modules exist for {sorted(ARCHITECTURES)}")
    return _module(arch, arch.config("small"), graph)


def names() -> list[str]:
    return list(entries())


def get(name: str) -> Entry:
    table = entries()
    if name not in table:
        from graphopt.errors import UsageError

        raise UsageError(f"unknown zoo model {name!r}; `python -m graphopt.models.zoo --list` shows the {len(table)} entries")
    return table[name]
