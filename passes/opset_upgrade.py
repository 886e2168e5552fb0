"""Upgrade the model's default-domain opset so canonical ops (Gelu-20, RMSNormalization-23) exist.

    opset_import {"": 14}  ->  opset_import {"": 23}, nodes converted by onnx's version converter
    (ReduceMean axes attribute -> input, Split/Pad/... adapters)

Skipped (with a note, the model untouched) when the model already has this opset or newer, or
when onnx's converter cannot convert one of the model's ops; canonical rules that need a newer
opset then decline and say so.
"""

from __future__ import annotations

import dataclasses

import onnx
import onnx.version_converter
import onnx_ir as ir

from graphopt import validity
from graphopt.pass_base import GraphoptPass
from graphopt.registry import register_pass

__all__ = ["OpsetUpgradePass", "OpsetUpgradeOptions"]

@dataclasses.dataclass(frozen=True)
class OpsetUpgradeOptions:
    opset: int = 23
    qdq_opset: int = 20  # the target for models holding QuantizeLinear nodes (QDQ models): see _target


def _signature(model: ir.Model) -> list:
    values = [*model.graph.inputs, *model.graph.outputs]
    return [(v.name, v.dtype, None if v.shape is None else tuple(str(d) for d in v.shape)) for v in values]


def default_opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))


@register_pass("opset-upgrade", options=OpsetUpgradeOptions, category="cleanup")
class OpsetUpgradePass(GraphoptPass):
    """Convert the default-domain opset up to `opset` (onnx version converter) when it is older."""

    rebuilds_nodes = True  # the converter remakes every node: none of them is this pass's own (provenance)

    def _target(self, model: ir.Model) -> int:
        """``opset``, or ``qdq_opset`` for a model with QuantizeLinear nodes: ONNX Runtime 1.32's QDQ
        optimizer (level extended/all) writes an invalid QuantizeLinear into opset >= 21 QDQ models
        ("output_dtype INT8 does not match y_zero_point type UINT8"), so such a model would load with
        optimizations off only; opset 20 still has Gelu."""
        target = self.options.opset
        qdq = any(n.op_type == "QuantizeLinear" and n.domain in ("", "ai.onnx") for n in model.graph)
        if qdq and target > self.options.qdq_opset:
            self.notes.append(f"QDQ model: upgraded to opset {self.options.qdq_opset}, not {target} (ONNX Runtime's QDQ "
                              "optimizer breaks QuantizeLinear at opset >= 21); qdq_opset=23 overrides")
            target = self.options.qdq_opset
        return target

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        current = default_opset(model)
        target = self._target(model)
        if current >= target:
            return ir.passes.PassResult(model, modified=False)

        def convert(proto: onnx.ModelProto) -> onnx.ModelProto:
            converted = onnx.version_converter.convert_version(proto, target)
            onnx.checker.check_model(converted)
            return converted

        try:
            # Weights are swapped for inputs while converting: the converter copies the whole
            # proto, and a 1.3 GB model would need several GB (and fail past protobuf's 2 GB).
            converted = validity.call_without_weights(convert, model)
        except Exception as e:  # the converter raises bare RuntimeErrors from C++
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            self.notes.append(f"kept opset {current}: version converter failed ({reason[:200]})")
            return ir.passes.PassResult(model, modified=False)
        new = ir.serde.deserialize_model(converted)
        _restore_weights(new, model)
        if _signature(new) != _signature(model):
            # onnx's Scan-8 adapter, for one, rewrites the graph's input shapes: refuse such results.
            self.notes.append(f"kept opset {current}: the version converter changed the model's inputs/outputs")
            return ir.passes.PassResult(model, modified=False)
        model.graph = new.graph  # the converted graph carries the new opset imports
        model.ir_version = max(model.ir_version, new.ir_version)
        self.rewrites[f"opset-{current}-to-{target}"] = 1
        return ir.passes.PassResult(model, modified=True)


def _restore_weights(new: ir.Model, original: ir.Model) -> None:
    """Turn the inputs that stood in for weights back into initializers holding the same tensors."""
    weights = {name: v.const_value for name, v in original.graph.initializers.items()}
    original_inputs = {v.name for v in original.graph.inputs}
    for value in list(new.graph.inputs):
        if value.name not in weights:
            continue
        if value.name not in original_inputs:
            new.graph.inputs.remove(value)
        if value.name not in new.graph.initializers:
            value.const_value = weights[value.name]
            new.graph.register_initializer(value)
