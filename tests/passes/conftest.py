"""Shared fixtures for pass tests: run a pipeline, check the three things, export torch modules.

Every rewrite test asserts structure (the exact op-type list after the pass), numerics (outputs vs
the original through ONNX Runtime with its optimizations off, on seeded inputs) and validity
(``onnx.checker`` full check, graphopt function bodies attached). A case that must not fire
asserts ``modified`` is False, the graph is unchanged and the decline reason is reported.
"""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest

from graphopt import testing
from graphopt.pipeline import PassRecord, run_pipeline


@dataclasses.dataclass
class Rewritten:
    original: onnx.ModelProto
    model: ir.Model
    records: list[PassRecord]

    @property
    def last(self) -> PassRecord:
        return self.records[-1]

    @property
    def ops(self) -> list[str]:
        return testing.op_types(self.model)


class PassChecker:
    """Runs pipelines on ONNX text / protos and asserts structure, numerics and validity."""

    @staticmethod
    def proto(source: str | onnx.ModelProto) -> onnx.ModelProto:
        return source if isinstance(source, onnx.ModelProto) else onnx.parser.parse_model(source)

    def run(self, source: str | onnx.ModelProto, pipeline: str) -> Rewritten:
        original = self.proto(source)
        model = ir.serde.deserialize_model(original)
        model = ir.serde.deserialize_model(ir.to_proto(model))  # its own tensors, not the proto's
        return Rewritten(original, model, run_pipeline(model, pipeline))

    @staticmethod
    def feeds(proto: onnx.ModelProto, dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
        """Seeded N(0, 1) inputs; symbolic dims take their size from ``dims`` (default 3)."""
        rng = np.random.default_rng(testing.SEED)
        feeds = {}
        for value in proto.graph.input:
            tensor = value.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else (dims or {}).get(d.dim_param, 3) for d in tensor.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        return feeds

    def fires(
        self,
        source: str | onnx.ModelProto,
        pipeline: str,
        expected_ops: list[str] | None,
        *,
        rtol: float = 1e-5,
        atol: float = 1e-6,
        feeds: dict[str, np.ndarray] | None = None,
    ) -> Rewritten:
        """The last pass of ``pipeline`` rewrites: ops (when given), validity, numerics."""
        result = self.run(source, pipeline)
        assert result.last.modified, f"{result.last.name} did not fire; declines: {result.last.declines}"
        if expected_ops is not None:
            assert result.ops == expected_ops
        testing.assert_valid(result.model)
        feeds = feeds if feeds is not None else self.feeds(result.original)
        testing.assert_numerically_equal(result.original, result.model, feeds, rtol=rtol, atol=atol)
        return result

    def declines(self, source: str | onnx.ModelProto, pipeline: str, reason: str) -> Rewritten:
        """The last pass leaves the graph alone and reports ``reason`` among its declines."""
        result = self.run(source, pipeline)
        before = testing.op_types(result.original)
        assert not result.last.modified
        assert result.ops == before
        assert any(reason in d for d in result.last.declines), result.last.declines
        return result


@pytest.fixture(scope="session")
def check() -> PassChecker:
    return PassChecker()


@pytest.fixture(scope="session")
def export_torch():
    """export(module, args, exporter, opset) -> ModelProto, with "dynamo" or "legacy" (TorchScript)."""
    torch = pytest.importorskip("torch")

    def export(module, args: tuple, exporter: str, opset: int) -> onnx.ModelProto:
        module = module.eval()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                return torch.onnx.export(module, args, dynamo=True, opset_version=opset, verbose=False).model_proto
            buffer = io.BytesIO()
            torch.onnx.export(module, args, buffer, dynamo=False, opset_version=opset)
            return onnx.load_from_string(buffer.getvalue())

    return export
