"""Measured activation sparsity of a thresholded model: what each ``ActivationThreshold`` achieves.

    measure_sparsity(model, samples) -> SparsityReport

Contract:

- ``model``: an ``ir.Model`` (or ``onnx.ModelProto``) rewritten by ``cats`` / ``teal`` / ``chess`` /
  ``relufy`` (any pass that inserts ``pkg.graphopt.ActivationThreshold``, or stamps ``SITE_KEY`` on a
  node whose output carries its zeros: ``relufy``'s ``Relu``). It is not changed.
- ``samples``: feed dicts, run once each through ONNX Runtime with graph optimizations off (the
  calibration engine's ``Calibrator``, which captures each threshold's output).
- One ``ThresholdedTensor`` per threshold node (an ``ActivationThreshold``, or any node stamped
  with ``SITE_KEY``), in graph order:
  ``site``: the thresholded tensor as the original graph named it (``cats``: the activation
  output; ``teal``: ``"x -> linear node"``), the output value name when the node has none;
  ``node``: the threshold node's name; ``target``: the stamped target sparsity (None when the node
  has none: ``relufy``); ``achieved``: the fraction of exact zeros in the threshold's output over all samples
  (what a sparse kernel skips; natural zeros count too; None when the output could not be
  captured); ``weight``: the parameters of the linear
  layers whose work those zeros let a kernel skip, read off the graph: every linear layer
  (MatMul/Gemm with a constant 2-D weight) that reads the output (directly or through a Reshape),
  and, when the output is a factor of an elementwise Mul (a gated MLP's gate), the linear layers reading the product
  (W_down's columns) and the one making the other factor (W_up's rows).
- ``SparsityReport.model_wide``: achieved sparsity averaged with those weights (TEAL's
  "model-wide sparsity"; thresholds without a measurement left out), ``target_model_wide`` the same for the targets; None when no threshold
  has a weight. ``as_dict()`` is JSON-ready (floats rounded to 6 digits).
- A model without thresholds gives an empty report (``tensors == ()``, figures None); no samples is
  a ``UsageError``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from graphopt import ops
from graphopt.calibrate import Calibrator
from graphopt.errors import UsageError
from graphopt.ops.threshold import OP_NAME, SITE_KEY, TARGET_KEY

__all__ = ["SparsityReport", "ThresholdedTensor", "measure_sparsity", "thresholded_nodes"]

_LINEAR = ("MatMul", "Gemm")


@dataclasses.dataclass(frozen=True)
class ThresholdedTensor:
    site: str
    node: str
    target: float | None
    achieved: float | None  # None: the output could not be captured (no inferred type)
    weight: int

    def as_dict(self) -> dict:
        return {"site": self.site, "node": self.node, "target": self.target,
                "achieved": None if self.achieved is None else round(self.achieved, 6), "weight": self.weight}


@dataclasses.dataclass(frozen=True)
class SparsityReport:
    tensors: tuple[ThresholdedTensor, ...]

    @property
    def model_wide(self) -> float | None:
        return _weighted([(t.achieved, t.weight) for t in self.tensors if t.achieved is not None])

    @property
    def target_model_wide(self) -> float | None:
        if any(t.target is None for t in self.tensors):
            return None
        return _weighted([(t.target, t.weight) for t in self.tensors])

    def as_dict(self) -> dict:
        def rounded(x):
            return None if x is None else round(x, 6)
        return {"tensors": [t.as_dict() for t in self.tensors], "model_wide": rounded(self.model_wide),
                "target_model_wide": rounded(self.target_model_wide),
                "weight": sum(t.weight for t in self.tensors)}


def _weighted(pairs: list[tuple[float, int]]) -> float | None:
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def _from_constants(value: ir.Value | None, depth: int = 3) -> bool:
    """Whether ``value`` is a constant or computed from constants alone within ``depth`` nodes
    (weights stored as int8 and dequantized in the graph: DequantizeLinear, Cast + Mul)."""
    if value is None or value.is_graph_input():
        return False
    if ir.convenience.get_const_tensor(value) is not None:
        return True
    producer = value.producer()
    return (depth > 0 and producer is not None and bool(producer.inputs)
            and all(v is None or _from_constants(v, depth - 1) for v in producer.inputs))


def _weight_size(node: ir.Node) -> int:
    """Parameters of a linear layer (MatMul/Gemm) whose weight is a constant 2-D matrix, else 0."""
    if node.op_type not in _LINEAR or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
        return 0
    weight = node.inputs[1]
    if not _from_constants(weight):
        return 0
    shape = weight.const_value.shape if weight.const_value is not None else weight.shape
    if shape is None or len(shape) != 2 or not shape.is_static():
        return 0
    return int(np.prod(tuple(shape)))


def _readers(value: ir.Value) -> list[ir.Node]:
    """The nodes reading ``value``, looking through a Reshape (exporters flatten to 2-D before a Gemm)."""
    direct = list(value.consumers())
    return direct + [n for r in direct if r.op_type == "Reshape" and r.outputs for n in r.outputs[0].consumers()]


def skipped_weight(value: ir.Value) -> int:
    """The parameters a kernel could skip where ``value`` is zero (see the module docstring)."""
    total = 0
    for consumer in _readers(value):
        total += _weight_size(consumer)
        if consumer.op_type == "Mul" and consumer.domain in ("", "ai.onnx"):
            total += sum(_weight_size(reader) for reader in _readers(consumer.outputs[0]))
            others = [v for v in consumer.inputs if v is not value and v is not None and v.producer() is not None]
            total += sum(_weight_size(v.producer()) for v in others)
    return total


def thresholded_nodes(model: ir.Model) -> list[ir.Node]:
    """Every ActivationThreshold, and every node a pass stamped with a site (relufy's ReLU)."""
    return [node for node in model.graph
            if (node.op_type == OP_NAME and node.domain == ops.DOMAIN) or SITE_KEY in node.metadata_props]


def measure_sparsity(model: ir.Model | onnx.ModelProto, samples: Sequence[Mapping[str, np.ndarray]]) -> SparsityReport:
    """Run ``model`` on ``samples`` and measure each threshold's zeros (the module docstring's contract)."""
    if not samples:
        raise UsageError("measuring sparsity needs samples (feed dicts) and got none")
    model = ir.serde.deserialize_model(model) if isinstance(model, onnx.ModelProto) else model.clone()
    nodes = thresholded_nodes(model)
    if not nodes:
        return SparsityReport(())
    names = [node.outputs[0].name for node in nodes]
    ops.attach_functions(model)  # shape inference types the thresholds' outputs through their bodies
    captured = Calibrator(model, samples).capture(names)
    tensors = []
    for node, name in zip(nodes, names):
        arrays = captured.get(name) or []
        zeros = sum(int(np.count_nonzero(a == 0)) for a in arrays)
        size = sum(int(a.size) for a in arrays)
        target = node.metadata_props.get(TARGET_KEY)
        tensors.append(ThresholdedTensor(
            site=node.metadata_props.get(SITE_KEY, name), node=node.name or name,
            target=float(target) if target is not None else None,
            achieved=zeros / size if size else None, weight=skipped_weight(node.outputs[0])))
    return SparsityReport(tuple(tensors))
