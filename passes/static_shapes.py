"""Pin the model's input shapes to static sizes; forget the exporter's intermediate shapes.

    input x: [batch, seq]           ->  input x: [1, 128]          (the sizes given in ``shapes``)
    intermediate values' shapes     ->  none (re-inferred from the static inputs by the pipeline)

Exporters write symbolic dims (``batch``, ``s0``) on intermediate values; once the inputs are
static those names would shadow what the static inputs imply, so they are dropped and shape
inference starts over. Graph outputs keep their declared shapes (the model's interface).

Not applied: an input not named in ``shapes`` keeps its shape, and the pass notes it when that
shape is dynamic. A name the model has no input of, or a rank that differs from the input's,
is a usage error.

Why: TVM compiles static shapes, and the folding passes after it (``cleanup``,
``fold-static-values``) fold shape arithmetic only once the dims are numbers. The TVM backend
runs it first in its preparation (``graphopt.backends.tvm.importer.prepare``).
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from graphopt import data
from graphopt.pass_base import GraphoptPass
from graphopt.registry import register_pass

__all__ = ["StaticShapesPass", "StaticShapesOptions", "format_shapes"]


@dataclasses.dataclass(frozen=True)
class StaticShapesOptions:
    shapes: str = ""  # "input_ids:1,128;attention_mask:1,128" (an --input-shape per input, ';' between)


def format_shapes(shapes) -> str:
    """``{"x": [1, 128]}`` -> ``"x:1,128"``, the ``shapes`` option's form."""
    return ";".join(f"{name}:{','.join(str(d) for d in dims)}" for name, dims in shapes.items())


@register_pass("static-shapes", options=StaticShapesOptions, category="backend")
class StaticShapesPass(GraphoptPass):
    """Fix input shapes to static sizes and drop the exporter's symbolic intermediate shapes."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        items = [item for item in self.options.shapes.split(";") if item.strip()]
        shapes = data.parse_shape_overrides(items, smallest=0, what="static-shapes entry")  # real inputs may be empty
        before = [(v.name, v.shape) for v in model.graph.inputs]
        data.apply_input_shapes(model, shapes)
        for value in model.graph.inputs:
            if value.name not in shapes and (value.shape is None or not all(isinstance(d, int) for d in value.shape)):
                self.notes.append(f"input '{value.name}' keeps its dynamic shape {value.shape}: give its sizes in shapes=")
        dropped = 0
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            for value in node.outputs:
                if value.shape is not None and not value.is_graph_output():
                    value.shape = None
                    dropped += 1
        changed = before != [(v.name, v.shape) for v in model.graph.inputs]
        if changed:
            self.rewrites["inputs-pinned"] = sum(1 for (_, a), v in zip(before, model.graph.inputs) if a != v.shape)
        return ir.passes.PassResult(model, modified=changed or dropped > 0)
