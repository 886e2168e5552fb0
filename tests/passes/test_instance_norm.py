"""instance-norm: InstanceNormalization -> LayerNormalization over the spatial axes + per-channel Mul/Add.

Structure (golden op lists), numerics against the original through ONNX Runtime (optimizations
off, seeded inputs), onnx.checker full check; the cases it declines, with their reasons.
"""

from __future__ import annotations

import numpy as np
import pytest

SCALE = "{1.0, -0.5, 2.0}"
BIAS = "{0.1, -0.2, 0.3}"


def model(x: str = "float[2, 3, 7]", opset: int = 23, scale: str = SCALE, bias: str = BIAS, inputs: str = "") -> str:
    return (
        f'<ir_version: 10, opset_import: ["" : {opset}]>\n'
        f"g ({x} x{inputs}) => ({x} y) <float[3] s = {scale}, float[3] b = {bias}> {{\n"
        f"y = InstanceNormalization <epsilon = 1e-3> (x, s, b)\n}}"
    )


def _node(result, op_type):
    return next(n for n in result.model.graph if n.op_type == op_type)


def test_one_spatial_axis_is_a_last_axis_layer_norm_and_a_per_channel_affine(check):
    result = check.fires(model(), "instance-norm", ["Constant", "LayerNormalization", "Constant", "Mul", "Constant", "Add"])
    norm = _node(result, "LayerNormalization")
    assert norm.attributes.get_int("axis") == -1
    assert norm.attributes.get_float("epsilon") == pytest.approx(1e-3)
    assert norm.inputs[1].producer().attributes["value"].as_tensor().numpy().tolist() == [1.0] * 7
    channel_scale = _node(result, "Mul").inputs[1].producer().attributes["value"].as_tensor().numpy()
    assert channel_scale.shape == (3, 1)
    assert result.last.rewrites == {"instance-norm": 1}


def test_two_spatial_axes_normalize_the_last_two(check):
    result = check.fires(model(x="float[2, 3, 4, 5]"), "instance-norm", ["Constant", "LayerNormalization", "Constant", "Mul", "Constant", "Add"])
    assert _node(result, "LayerNormalization").attributes.get_int("axis") == -2
    assert _node(result, "Add").inputs[1].producer().attributes["value"].as_tensor().numpy().shape == (3, 1, 1)


def test_an_identity_affine_leaves_no_mul_or_add(check):
    # the zoo's Wav2Vec2: GroupNorm exported as InstanceNormalization with ones / zeros, its affine after
    text = model(scale="{1.0, 1.0, 1.0}", bias="{0.0, 0.0, 0.0}")
    check.fires(text, "instance-norm", ["Constant", "LayerNormalization"])


def test_a_computed_scale_and_bias_are_unsqueezed(check):
    text = model(inputs=", float[3] scale_in, float[3] bias_in").replace("(x, s, b)", "(x, scale_in, bias_in)")
    rng = np.random.default_rng(20250621)
    feeds = {"x": rng.standard_normal((2, 3, 7)).astype(np.float32),
             "scale_in": rng.standard_normal(3).astype(np.float32), "bias_in": rng.standard_normal(3).astype(np.float32)}
    result = check.fires(text, "instance-norm", None, feeds=feeds)
    assert sorted(result.ops) == sorted(["Constant", "LayerNormalization", "Constant", "Unsqueeze", "Mul", "Constant",
                                         "Unsqueeze", "Add"])


def test_declines_a_dynamic_spatial_dim(check):
    check.declines(model(x="float[2, 3, T]"), "instance-norm", "x's spatial dims [T] or its dtype are not static: cannot build a ones scale")


def test_declines_below_opset_17(check):
    check.declines(model(opset=16), "instance-norm", "LayerNormalization needs opset >= 17, model has 16")
