"""linear-attention, sigmoid-attention and softplus-attention on every zoo model (one test id per model,
small dims).

Each built model is canonicalized (QDQ forms: their activation fake-quantization dropped first), then
runs ``linear-attention`` with one feature map (the maps take turns over the zoo, so each map meets
every family and form) and one softmax-free pass (sigmoid and softplus take turns). Where the model
has a canonical attention: the pass fires, the result passes the full ONNX checker, and ONNX Runtime
loads and runs it at all four optimization levels with finite outputs. Models without a canonical
attention (convolution backbones; DeBERTa's and MPNet's relative-position scores, which ``attention``
leaves unfused) must be left alone; attention whose additive bias differs between queries (BEiT's
relative-position bias as the legacy exporter spells it) is declined by ``linear-attention`` with the
reason, and still rewritten by the softmax-free passes, which keep any mask.
"""

from __future__ import annotations

import onnx_ir as ir
import pytest

from graphopt.models import zoo
from graphopt.pipeline import run_pipeline

ENTRIES = zoo.entries()
MAPS = ("elu", "cosformer", "performer", "liger", "relu")
SOFTMAX_FREE = ("sigmoid-attention", "softplus-attention")
QUERY_MASK = "may differ between queries"

KNOWN = {"bert-ort-opt": "canonicalize's output already fails to load in ORT at level basic and up "
                         "('AddInitializedOrtValue: Attempt to replace the existing tensor'), see tests/zoo/test_zoo.py"}


def _check(model: ir.Model, samples: list[dict], pipeline: str, attention: int, runs_everywhere) -> list[str]:
    """Run ``pipeline`` on a copy; returns its declines. Fired: valid and runs at every ORT level."""
    model = model.clone()
    record = run_pipeline(model, pipeline, samples=samples)[-1]
    if not attention:
        assert not record.modified and not record.declines, (pipeline, record.declines)
        return []
    if not record.modified:
        return record.declines
    runs_everywhere(model, samples[0], pipeline)
    return []


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN[n])) if n in KNOWN else n
                                  for n in ENTRIES])
def test_attention_passes_on_zoo_model(name, canonical_zoo, runs_everywhere):
    index = list(ENTRIES).index(name)
    model, samples = canonical_zoo(name, 1)
    attention = sum(n.op_type == "DotProductAttention" for n in model.graph.all_nodes())
    linear = f"linear-attention(feature_map={MAPS[index % len(MAPS)]})"
    declines = _check(model, samples, linear, attention, runs_everywhere)
    if declines:  # only a bias that differs between queries may stop it
        assert all(QUERY_MASK in d for d in declines), declines
        assert name.startswith("beit-legacy"), f"{linear} did not fire on {name}: {declines}"
    assert not _check(model, samples, SOFTMAX_FREE[index % 2], attention, runs_everywhere)
