"""graphopt.attention_fidelity: per replaced attention block, cosine and relative error vs the softmax
attention it replaced, found by the site each softmax-replacing pass stamps."""

from __future__ import annotations

import numpy as np
import onnx.parser
import onnx_ir as ir
import pytest

from graphopt import testing
from graphopt.attention_fidelity import attention_fidelity, replaced_blocks
from graphopt.ops.linear_attention import SITE_KEY
from graphopt.pipeline import run_pipeline

TWO_BLOCKS = """<ir_version: 10, opset_import: ["": 18]>
attn (float[2,3,5,4] Q, float[2,3,5,4] K, float[2,3,5,4] V) => (float[2,3,5,4] Y) {
    kt = Transpose <perm = [0, 1, 3, 2]> (K)
    s = MatMul (Q, kt)
    p = Softmax <axis = -1> (s)
    A = MatMul (p, V)
    s2 = MatMul (A, kt)
    p2 = Softmax <axis = -1> (s2)
    Y = MatMul (p2, V)
}"""


@pytest.mark.parametrize("pipeline", ["linear-attention", "linear-attention(feature_map=performer, features=4096)",
                                      "sigmoid-attention", "softplus-attention"])
def test_every_replaced_block_is_compared_with_its_softmax_original(pipeline):
    original = ir.serde.deserialize_model(onnx.parser.parse_model(TWO_BLOCKS))
    rewritten = original.clone()
    run_pipeline(rewritten, f"attention,{pipeline}")
    assert len(replaced_blocks(rewritten)) == 2
    assert {n.metadata_props[SITE_KEY] for n in replaced_blocks(rewritten)} == {"A", "Y"}  # the original's names
    rng = np.random.default_rng(testing.SEED)
    samples = [{n: rng.standard_normal((2, 3, 5, 4)).astype(np.float32) * 0.3 for n in "QKV"} for _ in range(2)]
    blocks = attention_fidelity(original, rewritten, samples)
    assert [b.site for b in blocks] == ["A", "Y"]
    assert all(-1 <= b.cosine <= 1 and b.relative_error >= 0 and b.made_by == pipeline.split("(")[0] for b in blocks)
    if "performer" in pipeline:  # many random features approximate the softmax kernel closely on small scores
        assert blocks[0].cosine > 0.99 and blocks[0].feature_map == "performer"


def test_nothing_replaced_nothing_measured():
    model = ir.serde.deserialize_model(onnx.parser.parse_model(TWO_BLOCKS))
    assert attention_fidelity(model, model.clone(), [{n: np.ones((2, 3, 5, 4), np.float32) for n in "QKV"}]) == []


def test_the_compile_report_has_a_row_per_replaced_block(capsys):
    import graphopt  # noqa: PLC0415
    from graphopt import report  # noqa: PLC0415

    proto = onnx.parser.parse_model(TWO_BLOCKS)
    rng = np.random.default_rng(testing.SEED)
    data = [{n: rng.standard_normal((2, 3, 5, 4)).astype(np.float32) for n in "QKV"} for _ in range(2)]
    result = graphopt.compile(proto, "canonicalize,linear-attention(feature_map=relu)", calib=data, bench_runs=0)
    rows = result.report.data["attention"]
    assert [r["site"] for r in rows] == ["A", "Y"] and all(r["feature_map"] == "relu" for r in rows)
    report.render(result.report)
    assert "replaced attention blocks vs softmax" in capsys.readouterr().out


def test_the_report_with_attention_rows_validates_against_the_schema():
    import json  # noqa: PLC0415
    import pathlib  # noqa: PLC0415

    import jsonschema  # noqa: PLC0415

    import graphopt  # noqa: PLC0415

    schema = json.loads((pathlib.Path(__file__).parents[2] / "docs" / "report.schema.json").read_text())
    rng = np.random.default_rng(testing.SEED)
    data = [{n: rng.standard_normal((2, 3, 5, 4)).astype(np.float32) for n in "QKV"} for _ in range(2)]
    result = graphopt.compile(onnx.parser.parse_model(TWO_BLOCKS), "canonicalize,sigmoid-attention", calib=data, bench_runs=0)
    report = json.loads(json.dumps(result.report.as_dict()))
    assert [r["made_by"] for r in report["data"]["attention"]] == ["sigmoid-attention"] * 2
    jsonschema.validate(report, schema)
    attention = schema["properties"]["data"]["properties"]["attention"]
    jsonschema.validate(report["data"]["attention"], attention)
