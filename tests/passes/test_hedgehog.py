"""Hedgehog fitting (``passes/_hedgehog.py``): on synthetic multi-head attention (Q, K projections of
random tokens), maps fitted on calibration samples beat elu+1 on held-out attention-weight KL
(non-causal and causal); fitting is deterministic (same seed: identical arrays) and obeys its
step and time bounds; the ONNX builder equals the numpy map through ONNX Runtime (optimizations
off) and passes the full checker."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest

pytest.importorskip("torch")

from onnxscript.rewriter import pattern, rewrite  # noqa: E402

from graphopt import testing  # noqa: E402
from graphopt.passes import _hedgehog as hedgehog  # noqa: E402

HEADS, SEQ, DIM, MODEL = 2, 32, 8, 16
SCALE = DIM ** -0.5


def _attention_data(seed: int, calibration: int = 12, held_out: int = 4):
    rng = np.random.default_rng(seed)
    wq, wk = (rng.standard_normal((HEADS, MODEL, DIM)) / np.sqrt(MODEL) for _ in range(2))

    def draw(n):
        x = rng.standard_normal((n, 1, SEQ, MODEL))
        return np.matmul(x, wq).astype(np.float32), np.matmul(x, wk).astype(np.float32)

    return draw(calibration), draw(held_out)


@pytest.mark.parametrize("causal", [False, True])
def test_fitted_maps_beat_elu_on_held_out_attention(causal):
    (qc, kc), (qe, ke) = _attention_data(testing.SEED)
    info = {}
    w, b = hedgehog.fit_hedgehog(qc, kc, scale=SCALE, causal=causal, steps=80, seconds=120, seed=0, info=info)
    assert w.shape == (HEADS, DIM, DIM) and b.shape == (HEADS, DIM) and w.dtype == np.float32
    assert info["steps"] == 80 and info["stopped_by"] == "steps" and info["kl_end"] < info["kl_start"]
    fitted = hedgehog.attention_kl(qe, ke, hedgehog.hedgehog_features_numpy(qe, w, b),
                                   hedgehog.hedgehog_features_numpy(ke, w, b), scale=SCALE, causal=causal)
    elu = hedgehog.attention_kl(qe, ke, hedgehog.elu_plus_one(qe), hedgehog.elu_plus_one(ke), scale=SCALE, causal=causal)
    root = np.sqrt(SCALE)  # elu+1 with the scale folded into Q and K, the other way to apply it
    elu_scaled = hedgehog.attention_kl(qe, ke, hedgehog.elu_plus_one(qe * root), hedgehog.elu_plus_one(ke * root),
                                       scale=SCALE, causal=causal)
    assert fitted < 0.8 * min(elu, elu_scaled), (fitted, elu, elu_scaled)


def test_fit_is_deterministic_and_bounded():
    (qc, kc), _ = _attention_data(testing.SEED, calibration=6)
    first = hedgehog.fit_hedgehog(qc, kc, scale=SCALE, steps=5, seed=3)
    second = hedgehog.fit_hedgehog(qc, kc, scale=SCALE, steps=5, seed=3)
    for a, c in zip(first, second):
        np.testing.assert_array_equal(a, c)
    info = {}
    hedgehog.fit_hedgehog(qc, kc, scale=SCALE, steps=50, seconds=0.0, seed=3, info=info)
    assert info["steps"] == 1 and info["stopped_by"] == "seconds"
    with pytest.raises(ValueError, match="causal fitting needs Sq == Sk"):
        hedgehog.fit_hedgehog(qc[:, :, :5], kc, scale=SCALE, causal=True, steps=1)


class _MapRule(pattern.RewriteRuleClassBase):
    """Identity(x) -> φ(x): the builder inside an onnxscript rewrite, as the pass uses it."""

    def __init__(self, w, b):
        super().__init__("hedgehog-map")
        self.w, self.b = w, b

    def pattern(self, op, x):
        return op.Identity(x)

    def rewrite(self, op, x):
        return hedgehog.hedgehog_features(op, x, self.w, self.b)


def test_onnx_builder_matches_numpy():
    rng = np.random.default_rng(testing.SEED)
    w = (np.eye(DIM) + 0.3 * rng.standard_normal((HEADS, DIM, DIM))).astype(np.float32)
    b = rng.standard_normal((HEADS, DIM)).astype(np.float32)
    x = ir.val("x", ir.DataType.FLOAT, ir.Shape([2, HEADS, 5, DIM]))
    node = ir.node("Identity", [x])
    node.outputs[0].name = "y"
    node.outputs[0].dtype = ir.DataType.FLOAT
    graph = ir.Graph([x], node.outputs, nodes=[node], opset_imports={"": 18}, name="map")
    model = rewrite(ir.Model(graph, ir_version=10), pattern_rewrite_rules=[_MapRule.rule(w, b)])
    assert testing.op_types(model) == ["Constant", "Constant", "MatMul", "Add", "Softmax", "Neg", "Softmax", "Concat"]
    out = model.graph.outputs[0]
    out.dtype, out.shape = ir.DataType.FLOAT, ir.Shape([2, HEADS, 5, 2 * DIM])
    testing.assert_valid(model)
    feed = rng.standard_normal((2, HEADS, 5, DIM)).astype(np.float32)
    (got,) = testing.run_ort(model, {"x": feed})
    np.testing.assert_allclose(got, hedgehog.hedgehog_features_numpy(feed, w, b), rtol=1e-5, atol=1e-6)


def test_fit_model_maps_captures_each_attention_with_its_key_mask():
    import onnx.helper as oh  # noqa: PLC0415

    from graphopt import ops  # noqa: PLC0415

    f = 1  # FLOAT
    node = oh.make_node("DotProductAttention", ["q", "k", "v", "mask"], ["y"], domain=ops.DOMAIN, scale=SCALE)
    shapes = {"q": [1, HEADS, SEQ, DIM], "k": [1, HEADS, SEQ, DIM], "v": [1, HEADS, SEQ, DIM], "mask": [1, 1, 1, SEQ]}
    graph = oh.make_graph([node], "attention", [oh.make_tensor_value_info(n, f, s) for n, s in shapes.items()],
                          [oh.make_tensor_value_info("y", f, [1, HEADS, SEQ, DIM])])
    model = ir.serde.deserialize_model(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid(ops.DOMAIN, 1)]))
    ops.attach_functions(model)
    (qc, kc), _ = _attention_data(testing.SEED, calibration=4)
    mask = np.zeros((1, 1, 1, SEQ), np.float32)
    mask[..., SEQ - 5:] = -np.inf  # padded keys
    samples = [{"q": qc[i:i + 1], "k": kc[i:i + 1], "v": kc[i:i + 1], "mask": mask} for i in range(4)]
    maps = hedgehog.fit_model_maps(model, samples, steps=20, seconds=60, seed=0)
    assert list(maps) == ["y"]
    w, b, info = maps["y"]
    assert w.shape == (HEADS, DIM, DIM) and b.shape == (HEADS, DIM)
    assert info["steps"] == 20 and np.isfinite(info["loss_end"]) and info["kl_end"] < info["kl_start"]


def _attention_model(mask: bool):
    import onnx.helper as oh  # noqa: PLC0415

    from graphopt import ops  # noqa: PLC0415

    node = oh.make_node("DotProductAttention", ["q", "k", "v", "mask"], ["y"], domain=ops.DOMAIN, scale=SCALE)
    shapes = {"q": [1, HEADS, SEQ, DIM], "k": [1, HEADS, SEQ, DIM], "v": [1, HEADS, SEQ, DIM]}
    if mask:
        shapes["mask"] = [1, 1, 1, SEQ]
    inits = [] if mask else [oh.make_tensor("mask", 1, [], [0.0])]
    graph = oh.make_graph([node], "attention", [oh.make_tensor_value_info(n, 1, s) for n, s in shapes.items()],
                          [oh.make_tensor_value_info("y", 1, [1, HEADS, SEQ, DIM])], inits)
    model = ir.serde.deserialize_model(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid(ops.DOMAIN, 1)]))
    ops.attach_functions(model)
    return model


def test_linear_attention_pass_with_hedgehog_beats_elu():
    """linear-attention(feature_map=hedgehog) fits on the samples and rewrites; held-out output cosine vs softmax > elu's."""
    from graphopt.pipeline import run_pipeline  # noqa: PLC0415

    (qc, kc), (qe, ke) = _attention_data(testing.SEED, calibration=8)
    rng = np.random.default_rng(testing.SEED)
    samples = [{"q": qc[i:i + 1], "k": kc[i:i + 1], "v": rng.standard_normal((1, HEADS, SEQ, DIM)).astype(np.float32)}
               for i in range(8)]
    held_out = [{"q": qe[i:i + 1], "k": ke[i:i + 1], "v": rng.standard_normal((1, HEADS, SEQ, DIM)).astype(np.float32)}
                for i in range(4)]
    expected = [testing.run_ort(_attention_model(False), feeds)[0] for feeds in held_out]

    def cosine(pipeline):
        model = _attention_model(False)
        record = run_pipeline(model, pipeline, samples=samples)[-1]
        testing.assert_valid(model)
        got = [testing.run_ort(model, feeds)[0] for feeds in held_out]
        a, c = np.concatenate([g.ravel() for g in got]), np.concatenate([e.ravel() for e in expected])
        return float(a @ c / np.linalg.norm(a) / np.linalg.norm(c)), model, record

    fitted, model, record = cosine("linear-attention(feature_map=hedgehog, hedgehog_steps=60)")
    assert "LinearizedAttention" in testing.op_types(model) and "DotProductAttention" not in testing.op_types(model)
    assert testing.op_types(model).count("Softmax") == 4  # φ(q), φ(k): softmax of ±(xW + b)
    from graphopt.ops.linear_attention import CHOICES_KEY  # noqa: PLC0415

    node = next(n for n in model.graph if n.op_type == "LinearizedAttention")
    choices = json.loads(node.metadata_props[CHOICES_KEY])
    assert choices["feature_map"] == "hedgehog" and choices["hedgehog_steps"] == 60 and choices["scale"] == "dropped"
    elu, _, _ = cosine("linear-attention(feature_map=elu)")
    assert fitted > elu, (fitted, elu)

