"""`graphopt compile` runs a pass that declares ``changes_interface`` (linear-attention-state) and no other
that changes the number of inputs/outputs; the report lists the change and says what was compared.

On the few-node decoder of tests/passes/test_linear_attention_state.py: the CLI turns a decode graph's
KV cache into the recurrent state (no numerical comparison: its inputs changed); a prefill graph keeps
its inputs, so its kept output is compared with the original's; the compiled prefill and decode
models chain (numerics vs the linear prefill of the whole sequence); a pass changing the interface
without declaring it is refused (exit 5, one line), the same pass declaring it goes through.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import graphopt
from graphopt import cli, registry, testing
from graphopt.metrics import Tolerances
from graphopt.pass_base import GraphoptPass
from graphopt.pipeline import run_pipeline
from tests.core.test_report_schema import SCHEMA
from tests.passes.test_linear_attention_state import DECODE, DIM, HEADS, PROMPT, _prefill

DECODE_PASSES = "attention,linear-attention(feature_map=elu),linear-attention-state"
PREFILL_PASSES = "attention,linear-attention(feature_map=elu,causal=always),linear-attention-state"
STATE_INPUTS = ["Q", "k", "v", "past_sequence_length", "past_state_S_0", "past_state_z_0"]
STATE_OUTPUTS = ["Y", "present_state_S_0", "present_state_z_0"]


def _compile_cli(tmp_path, source: str, passes: str, capsys) -> tuple[int, str, str]:
    onnx.save(onnx.parser.parse_model(source), tmp_path / "in.onnx")
    code = cli.main(["compile", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out"), "--passes", passes])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_compiles_a_decode_graph_into_the_recurrent_state(tmp_path, capsys):
    import jsonschema  # noqa: PLC0415

    code, out, err = _compile_cli(tmp_path, DECODE, DECODE_PASSES, capsys)
    assert code == 0, err
    model = onnx.load(tmp_path / "out" / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == STATE_INPUTS
    assert [o.name for o in model.graph.output] == STATE_OUTPUTS
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    jsonschema.validate(report, SCHEMA)
    assert report["data"]["interface"] == {
        "changed_by": ["linear-attention-state"],
        "inputs_removed": ["past_key", "past_value"], "inputs_added": ["past_sequence_length", "past_state_S_0", "past_state_z_0"],
        "outputs_removed": ["present_key", "present_value"], "outputs_added": ["present_state_S_0", "present_state_z_0"],
        "compared": "none: the inputs changed, so the original's samples do not feed the rewritten model",
    }
    assert report["accuracy"] == {} and report["layers"] == [] and report["ok"]  # nothing compared, nothing claimed
    assert any(w.startswith("interface changed by linear-attention-state: inputs changed, outputs not compared")
               for w in report["warnings"])
    assert "interface changed by linear-attention-state" in out and "past_state_S_0" in out
    page = (tmp_path / "out" / "report.html").read_text()
    assert '<section id="interface">' in page and "past_state_z_0" in page


def test_prefill_compares_the_output_it_kept(tmp_path):
    source = onnx.parser.parse_model(_prefill(PROMPT))
    result = graphopt.compile(source, PREFILL_PASSES, tolerances=Tolerances(min_cosine=0.0))
    change = result.report.data["interface"]
    assert change["inputs_removed"] == change["inputs_added"] == []
    assert change["outputs_removed"] == ["present_key", "present_value"]
    assert change["outputs_added"] == ["present_state_S_0", "present_state_z_0"]
    assert change["compared"] == "the outputs kept, on the same inputs"
    assert list(result.report.accuracy) == ["Y"]  # linear vs softmax attention: compared, not assumed equal
    assert result.report.ok


def test_compiled_prefill_and_decode_chain_like_the_linear_prefill_of_the_whole_sequence():
    prefill = graphopt.compile(onnx.parser.parse_model(_prefill(PROMPT)), PREFILL_PASSES, validate=False).model
    decode = graphopt.compile(onnx.parser.parse_model(DECODE), DECODE_PASSES, validate=False).model
    full = ir.serde.deserialize_model(onnx.parser.parse_model(_prefill(PROMPT + 1)))
    run_pipeline(full, "attention,linear-attention(feature_map=elu,causal=always)")
    rng = np.random.default_rng(testing.SEED)
    q, k, v = (rng.standard_normal((1, HEADS, PROMPT + 1, DIM)).astype(np.float32) for _ in range(3))
    expected = testing.run_ort(full, {"Q": q, "K": k, "V": v})[0][:, :, PROMPT:]
    _, s, z = testing.run_ort(prefill, {"Q": q[:, :, :PROMPT], "K": k[:, :, :PROMPT], "V": v[:, :, :PROMPT]})
    step = testing.run_ort(decode, {"Q": q[:, :, PROMPT:], "k": k[:, :, PROMPT:], "v": v[:, :, PROMPT:],
                                    "past_sequence_length": np.array([PROMPT], np.int64), "past_state_S_0": s, "past_state_z_0": z})
    np.testing.assert_allclose(step[0], expected, rtol=1e-5, atol=1e-5)


class _TestDropsOutputPass(GraphoptPass):
    """Test only: removes the graph's last output, as a buggy pass might."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        model.graph.outputs.pop()
        return ir.passes.PassResult(model, modified=True)


class _TestDropsOutputDeclaredPass(_TestDropsOutputPass):
    """Test only: the same, declaring that it changes the interface."""

    changes_interface = True


@pytest.fixture
def dropping_passes():
    registry.register_pass("test-drops-output")(_TestDropsOutputPass)
    registry.register_pass("test-drops-output-declared")(_TestDropsOutputDeclaredPass)
    yield
    registry._PASSES.pop("test-drops-output")
    registry._PASSES.pop("test-drops-output-declared")


def test_a_pass_that_does_not_declare_the_change_is_refused(tmp_path, capsys, dropping_passes):
    code, _, err = _compile_cli(tmp_path, DECODE, "test-drops-output", capsys)
    assert code == 5, err
    assert "pass 'test-drops-output' changed the number of graph inputs/outputs (5/3 -> 5/2) but does not declare " \
           "changes_interface" in err and "Traceback" not in err
    code, _, err = _compile_cli(tmp_path, DECODE, "test-drops-output-declared", capsys)
    assert code == 0, err
    change = json.loads((tmp_path / "out" / "report.json").read_text())["data"]["interface"]
    assert (change["outputs_removed"], change["compared"]) == (["present_value"], "the outputs kept, on the same inputs")


@pytest.mark.slow
def test_stdlib_llama_decode_export_compiles_into_the_recurrent_state():
    from graphopt.models import stdlib_llama  # noqa: PLC0415

    result = graphopt.compile(stdlib_llama.build(graph="decode"), "canonicalize,linear-attention(feature_map=elu),linear-attention-state",
                              synthetic_samples=1)
    change = result.report.data["interface"]
    assert change["inputs_removed"] == [f"past_{kv}_{i}" for i in range(4) for kv in ("key", "value")]
    assert change["inputs_added"][0] == "past_sequence_length"
    assert change["outputs_added"] == [f"present_state_{sz}_{i}" for i in range(4) for sz in "Sz"]
    assert result.report.accuracy == {} and result.report.ok
    testing.assert_valid(result.model)
