"""linear-attention-state: prefill graphs emit each layer's (S, z); decode graphs carry them instead of the KV cache.

The key check: prefill(prompt) states -> decode(token) -> decode(token) ... gives, at every step, the
output of the linear-attention prefill over prompt + tokens at its last position (ONNX Runtime,
optimizations off, fp32), on a few-node synthetic decoder and on the trained stdlib-llama (slow).
Structure: golden inputs/outputs and op lists of both graphs; does not fire on an encoder, on a
decode graph whose attention is still softmax, on cosformer/performer maps (reasons checked).
Validity: the full ONNX checker on every rewritten graph.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from graphopt import testing
from graphopt.ops.linear_attention import CHOICES_KEY
from graphopt.pipeline import run_pipeline

HEADS, DIM, PROMPT, STEPS = 2, 4, 4, 3
_SPINE = """
    kt = Transpose <perm = [0, 1, 3, 2]> (K)
    s = MatMul (Q, kt)
    c = Constant <value = float {0.5}> ()
    sc = Mul (s, c)
    l = Add (sc, M)
    p = Softmax <axis = -1> (l)
    Y = MatMul (p, V)"""


def _prefill(n: int, causal: bool = True) -> str:
    """Attention over n tokens (causal: a decoder's prefill, else an encoder); the cache (K, V) is
    also an output, as exporters write it."""
    rows = ", ".join("0" if j <= i or not causal else "-inf" for i in range(n) for j in range(n))
    t = f"float[1,{HEADS},{n},{DIM}]"
    return (f'<ir_version: 10, opset_import: ["": 18]>\nprefill ({t} Q, {t} K, {t} V) => ({t} Y, {t} present_key, '
            f"{t} present_value) {{\n    M = Constant <value = float[{n},{n}] {{{rows}}}> ()" + _SPINE
            + "\n    present_key = Identity (K)\n    present_value = Identity (V)\n}")


DECODE = (f'<ir_version: 10, opset_import: ["": 18]>\ndecode (float[1,{HEADS},1,{DIM}] Q, float[1,{HEADS},1,{DIM}] k, '
          f"float[1,{HEADS},1,{DIM}] v, float[1,{HEADS},past,{DIM}] past_key, float[1,{HEADS},past,{DIM}] past_value) "
          f"=> (float[1,{HEADS},1,{DIM}] Y, float[1,{HEADS},total,{DIM}] present_key, "
          f"float[1,{HEADS},total,{DIM}] present_value) {{\n    M = Constant <value = float {{0}}> ()"
          "\n    K = Concat <axis = 2> (past_key, k)\n    V = Concat <axis = 2> (past_value, v)" + _SPINE
          + "\n    present_key = Identity (K)\n    present_value = Identity (V)\n}")
ENCODER = _prefill(PROMPT, causal=False)


def _run(source: str | ir.Model, pipeline: str):
    model = ir.serde.deserialize_model(onnx.parser.parse_model(source)) if isinstance(source, str) else source
    records = run_pipeline(model, pipeline)
    return model, records[-1]


def _outputs(model: ir.Model, feeds: dict) -> dict[str, np.ndarray]:
    return dict(zip([o.name for o in model.graph.outputs], testing.run_ort(model, feeds)))


def _states(outputs: dict) -> dict[str, np.ndarray]:
    return {k.replace("present_", "past_"): v for k, v in outputs.items() if k.startswith("present_state")}


@pytest.mark.parametrize("feature_map", ["elu", "relu", "liger"])
def test_prefill_then_decode_steps_equal_the_prefill_of_the_whole_sequence(feature_map):
    la = f"attention,linear-attention(feature_map={feature_map})"
    prefill, record = _run(_prefill(PROMPT), la + ",linear-attention-state")
    assert record.rewrites == {"linear-attention-state-prefill": 1}
    decode, record = _run(DECODE, la + ",linear-attention-state")
    assert record.rewrites == {"linear-attention-state-decode": 1}
    testing.assert_valid(prefill)
    testing.assert_valid(decode)
    full, _ = _run(_prefill(PROMPT + STEPS), la)  # the reference: linear attention over the whole sequence
    rng = np.random.default_rng(testing.SEED)
    q, k, v = (rng.standard_normal((1, HEADS, PROMPT + STEPS, DIM)).astype(np.float32) for _ in range(3))
    expected = testing.run_ort(full, {"Q": q, "K": k, "V": v})[0]
    state = _states(_outputs(prefill, {"Q": q[:, :, :PROMPT], "K": k[:, :, :PROMPT], "V": v[:, :, :PROMPT]}))
    for t in range(PROMPT, PROMPT + STEPS):
        step = _outputs(decode, {"Q": q[:, :, t:t + 1], "k": k[:, :, t:t + 1], "v": v[:, :, t:t + 1],
                                 "past_sequence_length": np.array([t], np.int64), **state})
        np.testing.assert_allclose(step["Y"], expected[:, :, t:t + 1], rtol=1e-5, atol=1e-5)
        state = _states(step)


def test_structure_golden():
    prefill, record = _run(_prefill(PROMPT), "attention,linear-attention,linear-attention-state")
    assert [o.name for o in prefill.graph.outputs] == ["Y", "present_state_S_0", "present_state_z_0"]
    assert sorted(record.notes) == ["dropped output present_key: the KV cache is replaced by the state",
                                    "dropped output present_value: the KV cache is replaced by the state"]
    assert [n.op_type for n in prefill.graph if n.op_type in ("LinearizedAttention", "Transpose", "MatMul", "ReduceSum")][-4:] == [
        "LinearizedAttention", "Transpose", "MatMul", "ReduceSum"]
    assert [o.shape for o in prefill.graph.outputs[1:]] == [ir.Shape([1, HEADS, DIM, DIM]), ir.Shape([1, HEADS, 1, DIM])]
    decode, _ = _run(DECODE, "attention,linear-attention,linear-attention-state")
    assert [i.name for i in decode.graph.inputs] == ["Q", "k", "v", "past_sequence_length", "past_state_S_0", "past_state_z_0"]
    assert [o.name for o in decode.graph.outputs] == ["Y", "present_state_S_0", "present_state_z_0"]
    assert [n.op_type for n in decode.graph if n.op_type != "Constant"] == ["Elu", "Add", "Elu", "Add", "LinearAttentionStep"]
    step = next(n for n in decode.graph if n.op_type == "LinearAttentionStep")
    assert json.loads(step.metadata_props[CHOICES_KEY])["recurrent"] is True


def test_does_not_fire_on_an_encoder():
    model, record = _run(ENCODER, "attention,linear-attention,linear-attention-state")
    assert not record.modified and "an encoder has no state to carry" in record.declines[0]
    assert [i.name for i in model.graph.inputs] == ["Q", "K", "V"]


def test_does_not_fire_on_softmax_attention():
    model, record = _run(DECODE, "attention,linear-attention-state")
    assert not record.modified and "softmax attention: run linear-attention first" in record.declines[0]
    assert "past_key" in [i.name for i in model.graph.inputs]


@pytest.mark.parametrize("feature_map, why", [("cosformer", "depend on the key length"), ("performer", "max over all keys")])
def test_declines_maps_that_are_not_recurrent(feature_map, why):
    model, record = _run(DECODE, f"attention,linear-attention(feature_map={feature_map}),linear-attention-state")
    assert not record.modified and why in record.declines[0]
    assert [o.name for o in model.graph.outputs] == ["Y", "present_key", "present_value"]


def test_declines_a_cache_of_static_length():
    model, record = _run(DECODE.replace(",past,", ",6,"), "attention,linear-attention,linear-attention-state")
    assert not record.modified and "has a static length (6)" in record.declines[0]
    assert "past_key" in [i.name for i in model.graph.inputs]


@pytest.mark.slow
def test_stdlib_llama_prefill_then_decode_equals_the_prefill():
    """The trained decoder: 12-token prompt, 3 decode steps, logits vs the linear prefill of 15 tokens."""
    from graphopt.models import stdlib_llama

    def graph(kind: str, pipeline: str) -> ir.Model:
        model = ir.serde.deserialize_model(stdlib_llama.build(graph=kind))
        run_pipeline(model, pipeline)
        return model

    linear_prefill = graph("prefill", "canonicalize,linear-attention(causal=always)")
    prefill = graph("prefill", "canonicalize,linear-attention(causal=always),linear-attention-state")
    decode = graph("decode", "canonicalize,linear-attention,linear-attention-state")
    for model in (prefill, decode):
        testing.assert_valid(model)
    assert sum(n.op_type == "LinearAttentionStep" for n in decode.graph) == 4
    assert not any(i.name.startswith("past_key") for i in decode.graph.inputs)
    # nothing left runs along the context (the mask's key weights are cut to the new key up their chain)
    assert not [n.op_type for n in decode.graph for o in n.outputs if o.shape is not None and "past" in str(o.shape)]
    tokens = stdlib_llama.windows("held-out", 2, 15)
    expected = testing.run_ort(linear_prefill, {"input_ids": tokens})[0]
    state = _states(_outputs(prefill, {"input_ids": tokens[:, :12]}))
    for t in range(12, 15):
        step = _outputs(decode, {"input_ids": tokens[:, t:t + 1], "past_sequence_length": np.array([t], np.int64), **state})
        np.testing.assert_allclose(step["logits"][:, 0], expected[:, t], rtol=1e-4, atol=1e-4)
        state = _states(step)


def test_to_torch_runs_the_recurrent_decode_graph():
    """LinearAttentionStep's three outputs reach torch (graphopt.fx splits multi-output graphopt ops)."""
    torch = pytest.importorskip("torch")
    from graphopt import ops
    from graphopt.fx import to_torch

    decode, _ = _run(DECODE, "attention,linear-attention,linear-attention-state")
    ops.attach_functions(decode)
    rng = np.random.default_rng(testing.SEED)
    feeds = {v.name: np.abs(rng.standard_normal([d for d in v.shape])).astype(np.float32)
             for v in decode.graph.inputs if v.name != "past_sequence_length"}
    feeds["past_sequence_length"] = np.array([PROMPT], np.int64)
    with torch.no_grad():
        got = to_torch(decode)(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    for g, e in zip(got, testing.run_ort(decode, feeds)):
        np.testing.assert_allclose(g.numpy(), e, rtol=1e-5, atol=1e-5)
