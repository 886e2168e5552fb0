"""binary-attention (ShiftAddViT / EcoFormer binary-code attention) on canonical DotProductAttention.

Each source is a plain softmax attention that the ``attention`` pass fuses first; the codes are
fitted on four seeded calibration samples (few steps: the fit's quality is measured in
``test_fit_*`` and docs/binary-attention.md, not here). Structure: golden op list (codes as
MatMul/Add/Greater, packed 16 to an int32 word at run time, then two MaskedAddMatMul and a Div;
a causal attention keeps LinearizedAttention with float 0/1 codes, and says why), the stamped
choices and fit; declines with their reasons (query-dependent mask, softcap). Numerics (ONNX
Runtime, optimizations off) against numpy: the codes recomputed from the fit (deterministic: the
same call gives the same codes), then ``linear_attention_reference`` (the float form's spec: the
masked additions are the same maths); a key-padding mask drops the padded keys exactly; causal
form; and the rewritten graph on tvm-llvm (the hand-scheduled MaskedAddMatMul kernel) equals ORT.
Validity: the full ONNX checker. The fit itself: seeded and repeatable, balanced bits at the
initialization, distillation lowers the hard-code KL.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from graphopt import registry, testing
from graphopt.errors import UsageError
from graphopt.ops.linear_attention import CHOICES_KEY, FEATURE_MAP_KEY, OP_NAME, SITE_KEY, linear_attention_reference
from graphopt.ops.masked_add_matmul import OP_NAME as MASKED_ADD
from graphopt.passes._binary_codes import binary_codes_numpy, code_features_numpy, fit_binary_codes
from graphopt.passes.binary_attention import FIT_KEY
from graphopt.pipeline import run_pipeline

SCALE = 0.5
STEPS = 30
_SPINE = """
    kt = Transpose <perm = [0, 1, 3, 2]> (K)
    s = MatMul (Q, kt)
    c = Constant <value = float {0.5}> ()
    sc = Mul (s, c)
    l = Add (sc, M)
    p = Softmax <axis = -1> (l)
    Y = MatMul (p, V)"""
_CAUSAL_MASK = ("M = Constant <value = float[5,5] {0,-inf,-inf,-inf,-inf, 0,0,-inf,-inf,-inf, 0,0,0,-inf,-inf, "
                "0,0,0,0,-inf, 0,0,0,0,0}> ()")
_QKV = "float[2,3,5,4] Q, float[2,3,5,4] K, float[2,3,5,4] V"


def _text(inputs: str, body: str) -> str:
    return f'<ir_version: 10, opset_import: ["": 18]>\nattn ({inputs}) => (float[2,3,5,4] Y) {{{body}\n}}'


NO_MASK = _text(_QKV, "\n    M = Constant <value = float {0}> ()" + _SPINE)
CAUSAL = _text(_QKV, "\n    " + _CAUSAL_MASK + _SPINE)
PADDING = _text(f"{_QKV}, float[2,1,1,5] M", _SPINE)
QUERY_MASK = _text(f"{_QKV}, float[2,1,5,5] M", _SPINE)
SOFTCAP = _text(_QKV, """
    kt = Transpose <perm = [0, 1, 3, 2]> (K)
    s = MatMul (Q, kt)
    cap = Constant <value = float {2.0}> ()
    ratio = Div (s, cap)
    t = Tanh (ratio)
    capped = Mul (t, cap)
    p = Softmax <axis = -1> (capped)
    Y = MatMul (p, V)""")


def _feeds(source: str, seed: int = testing.SEED) -> dict[str, np.ndarray]:
    proto = onnx.parser.parse_model(source)
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in proto.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    if "M" in feeds:  # key padding: the last two keys of batch 1, the last key of batch 0
        mask = np.zeros(feeds["M"].shape, np.float32)
        mask[1, ..., 3:] = -np.inf
        mask[0, ..., 4:] = np.finfo(np.float32).min
        feeds["M"] = mask
    return feeds


def _samples(source: str) -> list[dict[str, np.ndarray]]:
    return [_feeds(source, seed) for seed in range(4)]


def _run(source: str, pipeline: str):
    model = ir.serde.deserialize_model(onnx.parser.parse_model(source))
    records = run_pipeline(model, pipeline, samples=_samples(source))
    return model, records[-1]


def _node(model, op_type=OP_NAME):
    (node,) = [n for n in model.graph if n.op_type == op_type]
    return node


def _stamped(model):
    """The node computing the replaced attention's output (it carries the choices and the fit)."""
    (node,) = [n for n in model.graph if FIT_KEY in n.metadata_props]
    return node


def _expected(source: str, feeds, *, causal: bool, nbits: int, similarity: str = "and", mask=None):
    """The fit redone on the same samples (deterministic), then the codes and the op's reference in numpy."""
    samples = _samples(source)
    q_all = np.stack([s["Q"] for s in samples])
    k_all = np.stack([s["K"] for s in samples])
    wq, bq, wk, bk = fit_binary_codes(q_all, k_all, scale=SCALE, causal=causal, nbits=nbits, similarity=similarity,
                                      steps=STEPS, seconds=30.0, seed=0)
    qf = code_features_numpy(binary_codes_numpy(feeds["Q"], wq, bq), similarity)
    kf = code_features_numpy(binary_codes_numpy(feeds["K"], wk, bk), similarity)
    if mask is not None:
        kf = kf * np.exp(np.swapaxes(mask.astype(np.float64), -1, -2))
    return linear_attention_reference(qf, kf, feeds["V"].astype(np.float64), 1.0, causal=int(causal))


_CODES = ["Constant", "MatMul", "Constant", "Add", "Constant", "Greater"]
# 8 bits (< 16: one padded word per query), 5 keys (one padded word per bit row)
_PACK_PADDED = ["Cast", "Constant", "Pad", "Constant", "Reshape", "Constant", "Mul", "Constant", "ReduceSum"]


def test_golden_ops_and_metadata():
    model, record = _run(NO_MASK, f"attention,binary-attention(nbits=8, steps={STEPS})")
    assert record.rewrites == {"binary-attention": 1}
    assert testing.op_types(model) == [
        *_CODES, *_PACK_PADDED,  # the query codes, packed
        *_CODES, "Transpose", *_PACK_PADDED,  # the key codes, a row per bit: packed over the keys
        "Constant", "Shape", "Constant", "Concat", "Expand", "Concat",  # [V | 1]
        MASKED_ADD, MASKED_ADD,  # [S | z] = Ckᵀ·[V | 1], [num | den] = Cq·[S | z]
        "Constant", "Constant", "Constant", "Slice", "Slice", "Constant", "Add", "Div"]
    state, both = [n for n in model.graph if n.op_type == MASKED_ADD]
    assert state.attributes.get_int("k") == 5 and both.attributes.get_int("k") == 8
    assert state.inputs[0].shape == ir.Shape([2, 3, 8, 1]) and both.inputs[0].shape == ir.Shape([2, 3, 5, 1])
    node = _stamped(model)
    assert node.op_type == "Div" and node.outputs[0].name == "Y"
    assert node.metadata_props[FEATURE_MAP_KEY] == "binary" and node.metadata_props[SITE_KEY] == "Y"
    choices = json.loads(node.metadata_props[CHOICES_KEY])
    assert choices == {"nbits": 8, "similarity": "and", "causal": 0, "eps": 1e-6, "mask": "none", "per_head": True,
                       "form": "masked-add", "keys": 5}
    fit = json.loads(node.metadata_props[FIT_KEY])
    assert fit["steps"] == STEPS and fit["samples"] == 8 and fit["kept"] in ("fit", "init")
    assert fit[f"kl_{'end' if fit['kept'] == 'fit' else 'init'}"] <= fit["kl_init"]
    (w,) = [n.attributes["value"].value.numpy() for n in model.graph
            if n.op_type == "Constant" and n.attributes["value"].value.shape == ir.Shape([3, 4, 8])][:1]
    assert w.shape == (3, 4, 8)  # per head
    assert any("attentions coded" in note for note in record.notes)
    testing.assert_valid(model)


def test_causal_keeps_the_linearized_form():
    """The prefix sums of a causal attention are LinearizedAttention's causal form: float 0/1 codes, and why."""
    model, record = _run(CAUSAL, f"attention,binary-attention(nbits=8, steps={STEPS})")
    assert record.rewrites == {"binary-attention": 1} and MASKED_ADD not in testing.op_types(model)
    assert testing.op_types(model) == [*_CODES, "Cast", *_CODES, "Cast", "Constant", OP_NAME]
    node = _node(model)
    assert node.attributes.get_int("causal", 0) == 1 and _stamped(model) is node
    choices = json.loads(node.metadata_props[CHOICES_KEY])
    assert choices["form"] == "linearized" and "prefix" in choices["why_linearized"]
    testing.assert_valid(model)


@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "causal"])
@pytest.mark.parametrize("similarity", ["and", "hamming"])
def test_matches_numpy(causal, similarity):
    """Masked additions over packed codes (encoder) and the causal float form both equal the float form's spec."""
    source = CAUSAL if causal else NO_MASK
    model, record = _run(source, f"attention,binary-attention(nbits=16, similarity={similarity}, steps={STEPS})")
    assert record.modified
    assert (MASKED_ADD in testing.op_types(model)) != causal
    testing.assert_valid(model)
    feeds = _feeds(source, seed=99)  # held out
    (got,) = testing.run_ort(model, feeds)
    expected = _expected(source, feeds, causal=causal, nbits=16, similarity=similarity)
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("source", [NO_MASK, PADDING], ids=["no-mask", "key-padding"])
def test_masked_add_equals_the_float_form(source):
    """The same codes, the same maths: MaskedAddMatMul over packed words vs ``form=linearized`` (float 0/1
    codes + LinearizedAttention), both in ORT, on held-out inputs: equal to float32 rounding."""
    pipeline = f"attention,binary-attention(nbits=20, steps={STEPS}{{}})"  # 20 bits: a word and a partial one
    packed, _ = _run(source, pipeline.format(""))
    floats, _ = _run(source, pipeline.format(", form=linearized"))
    assert MASKED_ADD in testing.op_types(packed) and MASKED_ADD not in testing.op_types(floats)
    assert json.loads(_stamped(floats).metadata_props[CHOICES_KEY])["why_linearized"] == "form=linearized was asked for"
    assert _stamped(packed).metadata_props[FIT_KEY] == _stamped(floats).metadata_props[FIT_KEY]
    feeds = _feeds(source, seed=5)
    np.testing.assert_allclose(testing.run_ort(packed, feeds)[0], testing.run_ort(floats, feeds)[0], rtol=1e-5, atol=1e-6)


def test_codes_are_packed_bits_and_attention_adds_only():
    """The MaskedAddMatMul operands are int32 words summed from Greater bits (no float codes), and no
    MatMul is left but the two hashing projections: the attention itself is masked additions."""
    model, _ = _run(NO_MASK, f"attention,binary-attention(steps={STEPS})")
    for node in (n for n in model.graph if n.op_type == MASKED_ADD):
        words = node.inputs[0]
        assert words.dtype == ir.DataType.INT32 and words.producer().op_type == "ReduceSum"
    matmuls = [n for n in model.graph if n.op_type == "MatMul"]
    assert len(matmuls) == 2 and all(n.outputs[0].consumers()[0].op_type == "Add" for n in matmuls)


def test_tvm_llvm_runs_the_rewrite():
    """The rewritten graph on tvm-llvm (the MaskedAddMatMul CPU kernel, 5 keys: a partial word) equals ORT."""
    pytest.importorskip("tvm")
    from graphopt.backends import tvm as tvm_backend  # noqa: PLC0415

    model, _ = _run(PADDING, f"attention,binary-attention(steps={STEPS})")
    feeds = _feeds(PADDING, seed=7)
    got = tvm_backend.compile(model, target="tvm-llvm", example_inputs=feeds).run(feeds)["Y"]
    np.testing.assert_allclose(got, testing.run_ort(model, feeds)[0], rtol=1e-5, atol=1e-5)


def test_key_padding_mask_is_honored():
    """Padded keys drop out: the result equals binary-code attention over the kept keys only."""
    model, record = _run(PADDING, f"attention,binary-attention(steps={STEPS})")
    assert record.modified
    assert json.loads(_stamped(model).metadata_props[CHOICES_KEY])["mask"] == "key-padding"
    testing.assert_valid(model)
    feeds = _feeds(PADDING)
    (got,) = testing.run_ort(model, feeds)
    np.testing.assert_allclose(got, _expected(PADDING, feeds, causal=False, nbits=16, mask=feeds["M"][:, :, :1, :]),
                               rtol=2e-5, atol=2e-5)
    # and the padded keys' V rows do not matter
    changed = dict(feeds, V=feeds["V"].copy())
    changed["V"][1, :, 3:] = 1e3
    changed["V"][0, :, 4:] = -1e3
    np.testing.assert_allclose(testing.run_ort(model, changed)[0], got, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("source", "reason"), [
    (QUERY_MASK, "may differ between queries"),
    (SOFTCAP, "softcapped"),
], ids=["query-mask", "softcap"])
def test_declines_with_reason(source, reason):
    model, record = _run(source, f"attention,binary-attention(steps={STEPS})")
    assert not record.modified
    assert "DotProductAttention" in testing.op_types(model)
    assert any(reason in d for d in record.declines), record.declines


def test_bad_options_are_usage_errors():
    model = ir.serde.deserialize_model(onnx.parser.parse_model(NO_MASK))
    with pytest.raises(UsageError, match="nbits"):
        run_pipeline(model, "binary-attention(nbits=0)")
    with pytest.raises(UsageError, match="similarity"):
        run_pipeline(model, "binary-attention(similarity=xor)")


def test_shiftadd_preset_ends_with_binary_attention():
    assert registry.get_pass("shiftadd").pipeline == "canonicalize,shift-linear,binary-attention"


# --- the fit ------------------------------------------------------------------------------------------


def _synthetic(seed=0, samples=6, heads=2, seq=24, dim=8):
    """Q, K with a few peaked keys per query (a softmax that a hash can follow): K = Q's neighbours + noise."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((samples, heads, seq, dim)).astype(np.float32)
    k = (q[:, :, rng.permutation(seq)] + 0.3 * rng.standard_normal((samples, heads, seq, dim))).astype(np.float32)
    return q, k


def test_fit_is_seeded_and_repeatable():
    q, k = _synthetic()
    first = fit_binary_codes(q, k, scale=1.0, nbits=8, steps=20, seed=3)
    again = fit_binary_codes(q, k, scale=1.0, nbits=8, steps=20, seed=3)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert first[0].shape == (2, 8, 8) and first[1].shape == (2, 8)


def test_initialization_balances_the_bits():
    """steps=0: principal directions with median thresholds: each bit is set on half the rows."""
    q, k = _synthetic()
    info = {}
    wq, bq, wk, bk = fit_binary_codes(q, k, scale=1.0, nbits=12, steps=0, info=info)  # 12 > D: random extra directions
    assert info["steps"] == 0 and info["kept"] == "init"
    for x, w, b in ((q, wq, bq), (k, wk, bk)):
        ones = binary_codes_numpy(x, w, b).mean(axis=(0, 2))  # [H, nbits]
        np.testing.assert_allclose(ones, 0.5, atol=1.5 / (x.shape[0] * x.shape[2]))


@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "causal"])
def test_distillation_lowers_the_kl(causal):
    q, k = _synthetic()
    info = {}
    fit_binary_codes(q, k, scale=1.0, causal=causal, nbits=16, steps=150, info=info)
    assert info["kept"] == "fit" and info["kl_end"] < 0.8 * info["kl_init"], info
