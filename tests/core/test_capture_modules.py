"""graphopt.compile(module, example_inputs=...) takes any nn.Module: the user's own class, Hugging Face models."""

from __future__ import annotations

import numpy as np
import pytest

import graphopt

torch = pytest.importorskip("torch")


class Mine(torch.nn.Module):  # defined in a user's script, not inside torch
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x):
        return torch.nn.functional.gelu(self.linear(x))


def test_a_users_own_module_class():
    torch.manual_seed(0)
    result = graphopt.compile(Mine(), example_inputs=(torch.randn(2, 4),), passes="canonicalize")
    assert result.ok and "Gelu" in result.report.ops_after


@pytest.mark.parametrize("name", ["bert", "vit", "gpt2-decode"])
def test_hugging_face_modules_with_the_zoo_recipes(name):
    """The zoo's recipes (a decoder's KV cache as tensors) make HF models exportable through the API."""
    from graphopt.models import zoo

    module, feeds = zoo.torch_module(name), zoo.get(name).example_inputs(0)
    result = graphopt.compile(module, example_inputs={k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()},
                              passes="canonicalize", calib=[feeds])
    assert result.ok, result.report.violations
    assert "DotProductAttention" in "".join(result.report.ops_after)
