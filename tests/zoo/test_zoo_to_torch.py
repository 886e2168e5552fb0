"""``graphopt.to_torch`` on the zoo: one test id per model and stage, the FX module against ONNX
Runtime (optimizations off) on seeded inputs. ``canonicalize``: cosine >= 0.99999 (float16 models
0.9999); ``ivit``: bit-exact on every integer tensor the graph computes and on its outputs. Measured
on all 87 models that build (``python -m bench.to_torch zoo``): canonicalize min cosine 0.99999975
(max abs 3.9e-3 on the fp16 forms, <= 5e-6 on float32 models), ivit bit-exact on all 75
transformers (17,004 integer tensors), in eval mode and in train mode. REPRESENTATIVE (one per family and form) runs by default, the
rest under ``-m slow``.
"""

from __future__ import annotations

import pytest

from bench import to_torch as measure
from graphopt.models import zoo

ENTRIES = zoo.entries()
REPRESENTATIVE = {"bert", "bert-legacy17", "gpt2", "llama-decode", "vit", "swin", "mobilevit", "resnet", "wav2vec2",
                  "beit-legacy17", "bert-qdq", "bert-fp16", "whisper-encoder"}
MIN_COSINE = {"fp16": 0.9999}  # per form


def _cases():
    for name, entry in ENTRIES.items():
        marks = [] if name in REPRESENTATIVE else [pytest.mark.slow]
        for stage in ("canonicalize", "ivit") if entry.transformer else ("canonicalize",):
            yield pytest.param(name, stage, marks=marks, id=f"{name}-{stage}")


@pytest.mark.parametrize(("name", "stage"), list(_cases()))
def test_to_torch_matches_onnx_runtime_on_the_zoo(name, stage):
    import torch  # noqa: PLC0415

    torch.set_num_threads(1)
    entry = ENTRIES[name]
    try:
        proto = entry.build()
    except zoo.ExportUnsupported as e:
        pytest.skip(f"exporter limit, recorded in the zoo table: {e}")
    row = measure.zoo_row(entry, proto, stage)
    assert "error" not in row, row["error"]
    if stage == "ivit":
        assert row["train_exact"], row  # to_torch(train=True) computes eval mode's forward, bit for bit
        assert row["exact"], row
    else:
        assert row["cosine"] >= MIN_COSINE.get(entry.form, 0.99999), row
