"""graphopt.compile(module, example_inputs=...) on every torch-side zoo entry: the Hugging Face modules behind
the architecture entries, with the zoo's export recipes (a decoder's KV cache as tensors). The captured,
canonicalized graph must compute what the zoo's own export of the same module computes."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import graphopt
from graphopt.models import zoo

torch = pytest.importorskip("torch")


def _run(proto_bytes: bytes, feeds):
    session = ort.InferenceSession(proto_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})


TORCH_SIDE = [name for name, e in zoo.entries().items() if e.exporter == "dynamo" and e.form in ("plain", "decode")]


@pytest.mark.parametrize("name", TORCH_SIDE)
def test_a_zoo_module_compiles_through_the_api_and_matches_the_zoo_export(name):
    entry = zoo.get(name)
    feeds = entry.example_inputs(0)
    module = zoo.torch_module(name)
    result = graphopt.compile(module, example_inputs={k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()},
                              passes="canonicalize", calib=[feeds])
    assert result.ok, result.report.violations
    got = result.artifacts["onnx"].run(feeds)
    got = got if isinstance(got, (list, tuple)) else list(got.values())
    expected = _run(entry.build().SerializeToString(), feeds)
    np.testing.assert_allclose(np.asarray(got[0]), expected[0], atol=1e-4, rtol=1e-4)
