"""The rewritten model keeps the original's interface: input and output names, order, types, shapes.

Passes and onnx_ir's own fix-ups may rename graph values that are inputs or outputs: removing
``y_copy = Identity(y)`` leaves one value for two outputs (which then get ``_alias`` names), and a
model returning its own input gets ``x_orig``. A deployed model is called by name, so after the
pipeline every interface value gets its original name back; an output that is a graph input or
repeats an earlier output is given its own ``Identity`` again.

A pass that declares ``changes_interface`` (``linear-attention-state``) may change the inputs and
outputs on purpose: ``InterfaceWatch`` checks after each pass that no other pass changed their
number, and records what the declared ones removed and added (``report.data["interface"]``).
"""

from __future__ import annotations

import onnx_ir as ir

from graphopt.errors import InternalError
from graphopt.pipeline import PROVENANCE_PASS

__all__ = ["InterfaceWatch", "interface_names", "restore_interface"]

def interface_names(model: ir.Model) -> tuple[list[str], list[str]]:
    return [v.name for v in model.graph.inputs], [v.name for v in model.graph.outputs]


class InterfaceWatch:
    """The pipeline's ``after_each`` check: a pass not declaring ``changes_interface`` must keep the
    number of graph inputs and outputs (names may change: onnx_ir's fix-ups, put back at the end)."""

    def __init__(self, original: ir.Model) -> None:
        self.original = interface_names(original)
        self.last = self.original
        self.changed_by: list[str] = []

    def __call__(self, pass_name: str, model: ir.Model) -> None:
        from graphopt import registry  # noqa: PLC0415

        now = interface_names(model)
        if getattr(registry.get_pass(pass_name).cls, "changes_interface", False):
            if now != self.last:
                self.changed_by.append(pass_name)
        elif (len(now[0]), len(now[1])) != (len(self.last[0]), len(self.last[1])):
            raise InternalError(
                f"pass '{pass_name}' changed the number of graph inputs/outputs ({len(self.last[0])}/{len(self.last[1])} -> "
                f"{len(now[0])}/{len(now[1])}) but does not declare changes_interface"
            )
        self.last = now

    def change(self, model: ir.Model) -> dict | None:
        """What the declared passes changed in ``model``, by name against the original; None when nothing."""
        if not self.changed_by:
            return None
        (inputs, outputs), (new_inputs, new_outputs) = self.original, interface_names(model)
        change = {"inputs_removed": [n for n in inputs if n not in new_inputs], "inputs_added": [n for n in new_inputs if n not in inputs],
                  "outputs_removed": [n for n in outputs if n not in new_outputs],
                  "outputs_added": [n for n in new_outputs if n not in outputs]}
        return {"changed_by": list(self.changed_by), **change} if any(change.values()) else None


def _free_name(taken: set[str], base: str) -> str:
    index = 1
    while f"{base}_{index}" in taken:
        index += 1
    taken.add(f"{base}_{index}")
    return f"{base}_{index}"


def _all_names(graph: ir.Graph) -> set[str]:
    names = {v.name for v in graph.inputs if v.name} | set(graph.initializers)
    names |= {v.name for node in ir.traversal.RecursiveGraphIterator(graph) for v in node.outputs if v.name}
    return names


def restore_interface(original: ir.Model, work: ir.Model) -> None:
    """Give ``work``'s graph inputs and outputs the names, types and shapes of ``original``'s."""
    before, after = original.graph, work.graph
    if len(before.inputs) != len(after.inputs) or len(before.outputs) != len(after.outputs):
        raise InternalError(
            f"the pipeline changed the number of graph inputs/outputs ({len(before.inputs)}/{len(before.outputs)} -> "
            f"{len(after.inputs)}/{len(after.outputs)})"
        )
    input_position = {v.name: k for k, v in enumerate(before.inputs)}
    used: set[int] = set()
    for j, wanted in enumerate(before.outputs):
        value = after.outputs[j]
        if wanted.name in input_position:  # the original returns its own input: the same value again
            after.outputs[j] = after.inputs[input_position[wanted.name]]
        elif value.is_graph_input() or id(value) in used or value.is_initializer():
            after.outputs[j] = _copy_of(after, value)
        used.add(id(after.outputs[j]))

    wanted_names = {v.name for v in before.inputs} | {v.name for v in before.outputs}
    interface = {id(v) for v in after.inputs} | {id(v) for v in after.outputs}
    taken = _all_names(after) | wanted_names
    for node in ir.traversal.RecursiveGraphIterator(after):  # inner values holding an interface name step aside
        for value in node.outputs:
            if value.name in wanted_names and id(value) not in interface:
                value.name = _free_name(taken, value.name)
    for value in after.initializers.values():
        if value.name in wanted_names and id(value) not in interface:
            after.initializers.pop(value.name)
            value.name = _free_name(taken, value.name)
            after.initializers.add(value)
    for target, source in [*zip(after.inputs, before.inputs), *zip(after.outputs, before.outputs)]:
        target.name = source.name
        target.type = source.type if source.type is not None else target.type
        target.shape = source.shape if source.shape is not None else target.shape


def _copy_of(graph: ir.Graph, value: ir.Value) -> ir.Value:
    node = ir.node("Identity", [value], name=None)
    node.metadata_props[PROVENANCE_PASS] = "interface"
    graph.append(node)
    copy = node.outputs[0]
    copy.type, copy.shape = value.type, value.shape
    return copy
