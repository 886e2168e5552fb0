"""The model registry and the shared builder API."""

from __future__ import annotations

import pytest

from graphopt import models
from graphopt.errors import UsageError


def test_registry_lists_the_models_and_the_demo_default():
    assert set(models.MODELS) == {"digits-vit", "tiny-bert", "tiny-llama", "minilm", "stdlib-llama"}
    assert models.DEFAULT == models.default == "digits-vit"
    for name, builder in models.MODELS.items():
        assert models.get_model(name) is builder
        for fn in ("build", "module", "example_inputs"):
            assert callable(getattr(builder, fn)), (name, fn)
    assert models.get_model("tiny_bert") is models.MODELS["tiny-bert"]


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(UsageError, match="digits-vit, tiny-bert, tiny-llama, minilm"):
        models.get_model("resnet")


def test_config_typos_are_rejected_not_ignored():
    with pytest.raises(TypeError, match="layerz"):
        models.get_model("tiny-bert").example_inputs(layerz=3)
    with pytest.raises(TypeError):
        models.get_model("tiny-bert").build(layerz=3)
    # build keys that an input builder does not use are accepted
    assert set(models.get_model("tiny-bert").example_inputs(exporter="legacy", opset=14)) == {
        "input_ids", "attention_mask"
    }
