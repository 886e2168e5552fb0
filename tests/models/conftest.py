"""Shared checks for the reference models: valid ONNX, runs in ONNX Runtime, matches torch."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt import testing

ATOL = 1e-4


class ModelChecker:
    @staticmethod
    def torch_outputs(module, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The torch module's outputs on numpy ``inputs``, as a list of numpy arrays."""
        import torch

        with torch.no_grad():
            out = module(**{k: torch.from_numpy(v) for k, v in inputs.items()})
        return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]

    @staticmethod
    def matches_torch(builder, config: dict, *input_shapes: dict, atol: float = ATOL):
        """Build ``builder`` with ``config``: full-check valid, and for each input-shape dict its
        ONNX Runtime outputs (optimizations off) match the torch module's. Returns the proto."""
        proto = builder.build(**config)
        testing.assert_valid(proto)
        module = builder.module(**config)
        for seed, shape in enumerate(input_shapes or ({},)):
            inputs = builder.example_inputs(seed=seed, **shape, **config)
            assert [i.name for i in proto.graph.input] == list(inputs)
            actual, expected = testing.run_ort(proto, inputs), ModelChecker.torch_outputs(module, inputs)
            assert len(actual) == len(expected) == len(proto.graph.output)
            for name, a, e in zip([o.name for o in proto.graph.output], actual, expected):
                assert a.shape == e.shape, (name, a.shape, e.shape)
                np.testing.assert_allclose(a, e, rtol=0, atol=atol, err_msg=f"{name} {shape}")
        return proto


@pytest.fixture(scope="session")
def check():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return ModelChecker()
