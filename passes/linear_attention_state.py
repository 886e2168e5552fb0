"""Linear attention with a recurrent state: a decoder's KV cache becomes the state (S, z) of each layer.

Runs after ``linear-attention`` (prefill with ``causal=always`` where the causal mask is computed at
run time, decode with ``causal=auto``), on each of the two graphs of a decoder.

Decode graph (each layer i: one query over ``Concat(past_key_i, k)`` as the non-causal form):

    K = Concat(past_key_i, k) -> present_key_i        V = Concat(past_value_i, v) -> present_value_i
    Kf = φ(GQA(K)) [· w_j];  Y = LinearizedAttention(Qf, Kf, GQA(V), decay)                  O(context)
      ==>
    kf = φ(GQA(k)) [· w_last];  Y, S', z' = LinearAttentionStep(Qf, kf, GQA(v), S_i, z_i, decay)  O(1)

    inputs  past_key_i, past_value_i     ==>  past_state_S_i [.., H, F, Dv], past_state_z_i [.., H, 1, F]
                                             (+ past_sequence_length int64 [1], the cached tokens)
    outputs present_key_i, present_value_i ==>  present_state_S_i, present_state_z_i

The per-key chain from the Concat to Kf and to V (the feature map's elementwise ops, Softmax or
MatMul on the last axis, GQA's Unsqueeze/Expand/Reshape, the key-padding weight) is cloned on the
new token's row alone: Expand/Reshape targets get 1 on the key axis, other operands of the chain
that run along the keys (a mask's weights) are sliced to their last row. What read the cache's
shape (RoPE positions, the mask's length) reads it from ``past_sequence_length`` and the other
inputs' dims instead.

Prefill graph (causal LinearizedAttention over the prompt):

    Y = LinearizedAttention(Qf, Kf, V, decay, causal=1)
      ==>  Y as before;  present_state_S_i = Kfᵀ·V,  present_state_z_i = ReduceSum(Kf, axis -2)
    (the graph's present_key_i / present_value_i outputs, if any, are dropped)

so prefill -> decode -> decode ... chains through ``present_state_* -> past_state_*`` and decode's
logits equal the prefill's over the whole sequence at the last position (fp32 rounding).

Not a rewrite rule: it changes the graph's inputs and outputs, which a pattern cannot, and a decode
graph is converted whole or not at all. Declined, with the reason: feature maps that are not
recurrent as built (``cosformer``: positions relative to the current key length M; ``performer``:
its key stabilizer is a max over all keys); a decay other than 1 in a prefill (its state would need
the decay weights); a chain op not known to act per key row (or an operand of unknown rank); a cache
input read by anything but its Concat and Shape; a dim of the cache not found elsewhere in the inputs;
a cache of static length (the graph is specialized to one context: positions may be constants, as in
the zoo's static decode exports); softmax attention left in the graph (run ``linear-attention`` first); and an attention that is
neither a causal prefill nor one query over a KV cache (an encoder). Layers are numbered in graph
order. GQA states are kept per query head (the chain repeats the KV heads before φ).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx_ir as ir

from graphopt import ops, rewrite
from graphopt.ops.linear_attention import CHOICES_KEY, FEATURE_MAP_KEY, OP_NAME
from graphopt.ops.linear_attention_step import OP_NAME as STEP_OP
from graphopt.pass_base import GraphoptPass
from graphopt.registry import register_pass

__all__ = ["LinearAttentionStateOptions", "LinearAttentionStatePass", "NOT_RECURRENT"]

NOT_RECURRENT = {
    "cosformer": "cosformer's features depend on the key length M (its positions' angle is πp/2M), so the "
                 "cached keys' features change as the context grows: no fixed state",
    "performer": "performer's key features subtract a stabilizer that is a max over all keys: it changes as "
                 "keys arrive, so the summed state would need rescaling",
}
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Elu", "Relu", "Exp", "Neg", "Sigmoid", "Tanh", "Cast", "CastLike", "Max",
               "Min", "Pow", "Sqrt", "Abs", "Softplus", "Where", "Identity", "LeakyRelu", "Celu", "Selu", "Erf"}
COMPARISONS = {"Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal", "Not", "And", "Or", "Xor", "IsInf", "IsNaN"}
LAST_AXIS = {"Softmax", "LogSoftmax", "Concat"}  # act along the features: fine per key row if axis is -1
INT_MAX = np.iinfo(np.int64).max


@dataclasses.dataclass(frozen=True)
class LinearAttentionStateOptions:
    length_input: str = "past_sequence_length"  # the decode graph's new input: tokens already in the state


class _Declined(Exception):
    pass


def _const(nodes: list, array) -> ir.Value:
    node = ir.node("Constant", [], attributes={"value": ir.tensor(np.asarray(array))})
    nodes.append(node)
    return node.outputs[0]


def _downstream(sources: set[ir.Value]) -> set[ir.Value]:
    """Every value computed from ``sources`` (the cache Concats' outputs), themselves included."""
    seen, todo = set(sources), list(sources)
    while todo:
        for user, _ in todo.pop().uses():
            for out in user.outputs:
                if out not in seen:
                    seen.add(out)
                    todo.append(out)
    return seen


def _is_cache_concat(node: ir.Node) -> bool:
    """``Concat(past, new)`` on the key axis (-2) whose first operand is a graph input."""
    if node.op_type != "Concat" or node.domain != "" or len(node.inputs) != 2 or node.inputs[0] is None:
        return False
    rank = _rank(node.outputs[0])
    return node.inputs[0].is_graph_input() and rank is not None and node.attributes.get_int("axis", 0) in (-2, rank - 2)


def _cache_concat(value: ir.Value, limit: int = 4096) -> ir.Node | None:
    """The one cache Concat that ``value`` is computed from, found walking back and stopping at the
    first such Concat on each path (an earlier layer's is behind this layer's); None when not one."""
    found, seen, todo = set(), {value}, [value]
    while todo and len(seen) < limit:
        node = todo.pop().producer()
        if node is None:
            continue
        if _is_cache_concat(node):
            found.add(node)
            continue
        for i in node.inputs:
            if i is not None and i not in seen:
                seen.add(i)
                todo.append(i)
    return found.pop() if len(found) == 1 else None


def _rank(value: ir.Value) -> int | None:
    return len(value.shape) if value.shape is not None else None


def _axes(node: ir.Node) -> list[int] | None:
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        array = node.inputs[1].const_value
        return None if array is None else [int(a) for a in np.asarray(array.numpy()).reshape(-1)]
    attr = node.attributes.get("axes")
    return None if attr is None else [int(a) for a in attr.as_ints()]


class _RowClone:
    """Clones the per-key chain from the cache Concats to a value, on the new token's row alone."""

    def __init__(self, concats: dict[ir.Value, ir.Value]):
        self.map: dict[ir.Value, ir.Value] = dict(concats)  # Concat output -> the new row
        self.chain = _downstream(set(concats))
        self.nodes: list[ir.Node] = []
        self.cut: dict = {}  # (value, axis) -> its last entry on that axis

    def _last_row(self, value: ir.Value, axis: int = -2, depth: int = 0) -> ir.Value:
        """An operand off the chain (a mask's key weights), cut to its last entry on ``axis`` (negative).
        The cut is pushed up through elementwise ops, Transpose, Unsqueeze, Slice, Expand and a unit-step
        Range, so a mask computed from the cache length costs O(1) too; elsewhere the value is sliced."""
        rank = _rank(value)
        if rank is None:
            raise _Declined(f"the rank of {value.name}, an operand of the per-key chain, is unknown")
        if rank < -axis or value.shape[axis] == 1:
            return value  # no such axis (broadcast) or already one entry
        key = (value, axis)
        if key in self.cut:
            return self.cut[key]
        node, at = value.producer(), axis + rank
        inputs = list(node.inputs) if node is not None else []
        new_inputs, cut = None, None
        if node is None or node.domain != "" or len(node.outputs) != 1 or depth > 32:
            pass
        elif node.op_type in ELEMENTWISE | COMPARISONS:
            new_inputs = [None if i is None else self._last_row(i, axis, depth + 1) for i in inputs]
        elif node.op_type == "Transpose":
            perm = list(node.attributes.get_ints("perm", list(reversed(range(rank)))))
            new_inputs = [self._last_row(inputs[0], perm[at] - rank, depth + 1)]
        elif node.op_type == "Unsqueeze" and (axes := _axes(node)) is not None:
            axes = sorted(x % rank for x in axes)
            new_inputs = [self._last_row(inputs[0], at - sum(x < at for x in axes) - (rank - len(axes)), depth + 1),
                          *inputs[1:]]
        elif node.op_type == "Slice" and len(inputs) >= 4 and inputs[3] is not None and inputs[3].const_value is not None:
            sliced = {int(x) % rank for x in inputs[3].const_value.numpy().reshape(-1)}
            if at not in sliced:
                new_inputs = [self._last_row(inputs[0], axis, depth + 1), *inputs[1:]]
        elif node.op_type == "Expand" and inputs[1].shape is not None and list(inputs[1].shape) == [rank]:
            new_inputs = [self._last_row(inputs[0], axis, depth + 1), self._one_at(inputs[1], at)]
        elif (node.op_type == "Range" and inputs[2].const_value is not None
              and inputs[2].const_value.numpy().reshape(-1).tolist() == [1]):  # positions: the last is limit - 1
            one = _const(self.nodes, inputs[2].const_value.numpy())
            before = ir.node("Sub", [inputs[1], one])
            last = ir.node("Max", [before.outputs[0], inputs[0]])
            # [1] by Reshape, not Range(last, limit): a static length (TVM cannot expand a runtime-length tensor)
            cut = ir.node("Reshape", [last.outputs[0], _const(self.nodes, np.array([1], np.int64))])
            self.nodes += [before, last]
        if cut is None and new_inputs is None:
            nodes = self.nodes
            cut = ir.node("Slice", [value, _const(nodes, np.array([-1], np.int64)),
                                    _const(nodes, np.array([INT_MAX], np.int64)), _const(nodes, np.array([axis], np.int64))])
        elif cut is None:
            cut = ir.Node(node.domain, node.op_type, new_inputs, attributes=list(node.attributes.values()))
        cut.outputs[0].dtype = value.dtype
        self.nodes.append(cut)
        self.cut[key] = cut.outputs[0]
        return cut.outputs[0]

    def _one_at(self, shape: ir.Value, at: int) -> ir.Value:
        """The shape vector with 1 at position ``at``. A Concat of one-element parts (what exporters
        build) is rebuilt without the part at ``at``, so that the cache length (now an input's value)
        drops out and a backend can fold the shape from the static input shapes."""
        nodes = self.nodes
        one = _const(nodes, np.array([1], np.int64))
        parts = shape.producer()
        if (parts is not None and parts.op_type == "Concat" and parts.domain == "" and parts.attributes.get_int("axis", 0) == 0
                and all(i is not None and i.shape is not None and list(i.shape) == [1] for i in parts.inputs)
                and len(parts.inputs) > at):
            joined = ir.node("Concat", [*parts.inputs[:at], one, *parts.inputs[at + 1:]], attributes={"axis": 0})
            nodes.append(joined)
            return joined.outputs[0]
        zero = _const(nodes, np.array([0], np.int64))
        head = ir.node("Slice", [shape, zero, _const(nodes, np.array([at], np.int64)), zero])
        tail = ir.node("Slice", [shape, _const(nodes, np.array([at + 1], np.int64)), _const(nodes, np.array([INT_MAX], np.int64)), zero])
        joined = ir.node("Concat", [head.outputs[0], one, tail.outputs[0]], attributes={"axis": 0})
        nodes += [head, tail, joined]
        return joined.outputs[0]

    def clone(self, value: ir.Value) -> ir.Value:
        if value in self.map:
            return self.map[value]
        if value not in self.chain:
            return self._last_row(value)
        node = value.producer()
        if node.domain != "" or len(node.outputs) != 1:
            raise _Declined(f"{node.op_type} ({node.name}) on the keys' chain is not known to act per key row")
        op, inputs = node.op_type, list(node.inputs)
        out_rank = _rank(value)
        if out_rank is None or out_rank < 2:
            raise _Declined(f"the rank of {value.name} on the keys' chain is unknown")
        if op in ELEMENTWISE:
            new_inputs = [None if i is None else self.clone(i) for i in inputs]
        elif op in LAST_AXIS:
            axis = node.attributes.get_int("axis", -1)
            if axis not in (-1, out_rank - 1):
                raise _Declined(f"{op} ({node.name}) on the keys' chain acts on axis {axis}, not the features")
            new_inputs = [self.clone(i) for i in inputs]
        elif op == "MatMul":
            if inputs[1] in self.chain:
                raise _Declined(f"MatMul ({node.name}) multiplies two values of the keys' chain")
            new_inputs = [self.clone(inputs[0]), inputs[1]]
        elif op == "Transpose" and list(node.attributes.get_ints("perm", []))[-2:] == [out_rank - 2, out_rank - 1]:
            new_inputs = [self.clone(inputs[0])]  # leading axes only (heads, batch): rows stay rows
        elif op == "Unsqueeze":
            axes = _axes(node)
            if axes is None or any(a % out_rank >= out_rank - 2 for a in axes):
                raise _Declined(f"Unsqueeze ({node.name}) on the keys' chain inserts an axis among the last two")
            new_inputs = [self.clone(inputs[0]), *inputs[1:]]
        elif op in ("Expand", "Reshape"):
            source = inputs[0]
            if inputs[1] in self.chain:
                raise _Declined(f"{op} ({node.name}) on the keys' chain takes its shape from the keys")
            if inputs[1].shape is None or list(inputs[1].shape) != [out_rank]:
                raise _Declined(f"{op} ({node.name}) on the keys' chain has a target shape of unknown length")
            if op == "Reshape" and (source.shape is None or list(source.shape)[-2:] != list(value.shape)[-2:]):
                raise _Declined(f"Reshape ({node.name}) on the keys' chain does not keep the last two axes")
            new_inputs = [self.clone(source), self._one_at(inputs[1], out_rank - 2)]
        else:
            raise _Declined(f"{op} ({node.name}) on the keys' chain is not known to act per key row")
        copy = ir.Node(node.domain, op, new_inputs, attributes=list(node.attributes.values()))
        copy.outputs[0].dtype = value.dtype
        self.nodes.append(copy)
        self.map[value] = copy.outputs[0]
        return copy.outputs[0]


@register_pass("linear-attention-state", options=LinearAttentionStateOptions, category="rewrite")
class LinearAttentionStatePass(GraphoptPass):
    """Turn a decoder's linear attention into a recurrent state: decode graphs carry (S, z) per layer instead of the KV cache; prefill graphs emit them."""

    changes_interface = True  # past_key/value -> past_state_S/z (+ past_sequence_length); present_* likewise

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        for node in graph:
            if node.domain == ops.DOMAIN and node.op_type == "DotProductAttention":
                self._decline(node, "softmax attention: run linear-attention first (a softmax KV cache has no "
                                    "fixed-size state)")
        sites = [n for n in graph if n.domain == ops.DOMAIN and n.op_type == OP_NAME]
        if not sites:
            return ir.passes.PassResult(model, modified=False)
        for node in sites:  # every map must be recurrent, in both graphs alike
            feature_map = node.metadata_props.get(FEATURE_MAP_KEY, "")
            if feature_map in NOT_RECURRENT:
                self._decline(node, NOT_RECURRENT[feature_map])
                return ir.passes.PassResult(model, modified=False)
        causal = {n.attributes.get_int("causal", 0) for n in sites}
        try:
            if causal == {1}:
                self._prefill(graph, sites)
            elif causal == {0}:
                self._decode(model, sites)
            else:
                raise _Declined("causal and non-causal LinearizedAttention in one graph: neither a prefill nor a decode step")
        except _Declined as why:
            self._decline(sites[0], str(why))
            return ir.passes.PassResult(model, modified=False)
        ops.attach_functions(model)
        return ir.passes.PassResult(model, modified=True)

    def _decline(self, node: ir.Node, reason: str) -> None:
        self.declines.append(rewrite.Decline(self.pass_name, node.name or node.outputs[0].name or "?", reason))

    # --- prefill: emit the states ------------------------------------------------------------------

    def _prefill(self, graph: ir.Graph, sites: list[ir.Node]) -> None:
        for node in sites:
            decay = node.inputs[3].const_value if len(node.inputs) > 3 and node.inputs[3] is not None else None
            if decay is None or not np.all(decay.numpy() == 1):
                raise _Declined(f"{node.name}: a decay other than a constant 1 (the prefill state is built undecayed)")
            if _rank(node.inputs[1]) is None:
                raise _Declined(f"{node.name}: the rank of Kf is unknown")
        dropped = set()
        for layer, node in enumerate(sites):
            qf, kf, v = node.inputs[:3]
            rank = _rank(kf)
            nodes: list[ir.Node] = []
            kt = ir.node("Transpose", [kf], attributes={"perm": [*range(rank - 2), rank - 1, rank - 2]})
            s = ir.node("MatMul", [kt.outputs[0], v])
            z = ir.node("ReduceSum", [kf, _const(nodes, np.array([-2], np.int64))],
                        attributes={"keepdims": 1})
            nodes += [kt, s, z]
            graph.insert_after(node, nodes)
            for value, name in ((s.outputs[0], f"present_state_S_{layer}"), (z.outputs[0], f"present_state_z_{layer}")):
                value.name, value.dtype = name, kf.dtype
                graph.outputs.append(value)
            self.rewrites[f"{self.pass_name}-prefill"] += 1
            for value in (kf, v):  # the chain's first operands back to the cache outputs (present_key/value)
                dropped |= self._cache_outputs(value, graph)
        for value in dropped:
            graph.outputs.remove(value)
            self.notes.append(f"dropped output {value.name}: the KV cache is replaced by the state")

    @staticmethod
    def _cache_outputs(value: ir.Value, graph: ir.Graph) -> set[ir.Value]:
        for _ in range(64):
            if value is None:
                break
            if value.is_graph_output():
                return {value}
            copies = {u.outputs[0] for u, _ in value.uses() if u.op_type == "Identity" and u.outputs[0].is_graph_output()}
            if copies:
                return copies
            node = value.producer()
            if node is None or not node.inputs:
                break
            value = node.inputs[0]
        return set()

    # --- decode: the cache becomes the state -----------------------------------------------------

    def _decode(self, model: ir.Model, sites: list[ir.Node]) -> None:
        graph = model.graph
        plans = []
        for node in sites:
            qf, kf, v = node.inputs[:3]
            if qf.shape is None or len(qf.shape) < 2 or qf.shape[-2] != 1:
                raise _Declined(f"{node.name} is neither causal (a prefill) nor one query over a KV cache (a decode step; "
                                f"Qf is {qf.shape}): an encoder has no state to carry")
            concats = [_cache_concat(kf), _cache_concat(v)]
            if None in concats:
                raise _Declined(f"{node.name}: Kf or V does not come from a Concat(past, new) of a graph input")
            plans.append((node, concats))
        caches = {c.inputs[0] for _, concats in plans for c in concats}
        for past in caches:
            if past.shape is not None and len(past.shape) >= 2 and isinstance(past.shape[-2], int):
                raise _Declined(f"the cache input {past.name} has a static length ({past.shape[-2]}): the graph is "
                                "specialized to that context (positions and masks may be folded to constants), so a "
                                "state carried past it would be read at the wrong positions; export with a dynamic cache length")
        shape_readers = []
        for past in caches:
            for user, _ in past.uses():
                if user.op_type == "Shape" and user.domain == "":
                    shape_readers.append(user)
                elif not (user.op_type == "Concat" and any(user in c for _, c in plans)):
                    raise _Declined(f"the cache input {past.name} is read by {user.op_type} ({user.name})")
        dims = {past: self._cache_dims(past, graph, caches) for past in caches}
        clones = []
        for node, concats in plans:
            rows = _RowClone({c.outputs[0]: c.inputs[1] for c in concats})
            kf_row, v_row = rows.clone(node.inputs[1]), rows.clone(node.inputs[2])
            clones.append((rows, kf_row, v_row))
        dropped = {o for _, concats in plans for c in concats for o in self._copies(c.outputs[0])}
        live = self._live(graph, dropped, {n: [n.inputs[0], *n.inputs[3:]] for n, _ in plans},
                          [i for rows, _, _ in clones for n in rows.nodes for i in n.inputs])
        for _, concats in plans:
            for concat in concats:
                if concat.outputs[0] in live:
                    raise _Declined(f"the cache {concat.outputs[0].name} is read by more than its attention and the "
                                    "cache output")
        # every check passed: change the graph
        length = ir.val(self.options.length_input, ir.DataType.INT64, ir.Shape([1]))
        graph.inputs.append(length)
        for layer, ((node, concats), (rows, kf_row, v_row)) in enumerate(zip(plans, clones)):
            qf, kf, v = node.inputs[:3]
            decay = node.inputs[3] if len(node.inputs) > 3 else None
            lead = list(qf.shape)[:-2]
            f, dv = kf.shape[-1], v.shape[-1]
            s_in = ir.val(f"past_state_S_{layer}", kf.dtype, ir.Shape([*lead, f, dv]))
            z_in = ir.val(f"past_state_z_{layer}", kf.dtype, ir.Shape([*lead, 1, f]))
            graph.inputs.extend([s_in, z_in])
            step = ir.node(STEP_OP, [qf, kf_row, v_row, s_in, z_in, decay], domain=ops.DOMAIN, num_outputs=3,
                           attributes={"eps": node.attributes.get_float("eps", 1e-6)})
            step.metadata_props.update(node.metadata_props)
            choices = json.loads(node.metadata_props.get(CHOICES_KEY, "{}"))
            step.metadata_props[CHOICES_KEY] = json.dumps({**choices, "recurrent": True}, sort_keys=True)
            graph.insert_before(node, [*rows.nodes, step])
            y, s_out, z_out = step.outputs
            old, old_name = node.outputs[0], node.outputs[0].name
            old.name = None
            y.name, y.dtype, y.shape = old_name, old.dtype, old.shape
            ir.convenience.replace_all_uses_with(old, y, replace_graph_outputs=True)
            for value, name, shape in ((s_out, f"present_state_S_{layer}", s_in.shape),
                                       (z_out, f"present_state_z_{layer}", z_in.shape)):
                value.name, value.dtype, value.shape = name, kf.dtype, shape
                graph.outputs.append(value)
            graph.remove(node, safe=True)
            self.rewrites[f"{self.pass_name}-decode"] += 1
        for out in sorted(dropped, key=graph.outputs.index):
            graph.outputs.remove(out)
            self.notes.append(f"dropped output {out.name}: the KV cache is replaced by the state")
        for reader in shape_readers:
            self._read_shape_elsewhere(graph, reader, dims[reader.inputs[0]], length)
        from onnx_ir.passes.common import RemoveUnusedNodesPass  # noqa: PLC0415

        RemoveUnusedNodesPass()(model)  # the old chains over the cache, its Concats
        for past in caches:
            if past.uses():
                raise RuntimeError(f"{past.name} is still read after the rewrite")  # the checks above rule this out
            graph.inputs.remove(past)

    @staticmethod
    def _copies(value: ir.Value) -> set[ir.Value]:
        """The graph outputs that are ``value`` or an Identity of it (the present_* cache outputs)."""
        found = {value} if value.is_graph_output() else set()
        return found | {u.outputs[0] for u, _ in value.uses() if u.op_type == "Identity" and u.outputs[0].is_graph_output()}

    @staticmethod
    def _live(graph: ir.Graph, dropped: set, replaced: dict, extra: list) -> set[ir.Value]:
        """The values the graph still computes after the rewrite: ancestors of the outputs it keeps,
        with each replaced attention reading only ``replaced[node]`` and the new nodes ``extra``."""
        todo = [o for o in graph.outputs if o not in dropped] + [i for i in extra if i is not None]
        todo += [i for inputs in replaced.values() for i in inputs if i is not None]
        live = set()
        while todo:
            value = todo.pop()
            if value in live:
                continue
            live.add(value)
            node = value.producer()
            if node is not None:
                todo.extend(i for i in replaced.get(node, node.inputs) if i is not None)
        return live

    @staticmethod
    def _cache_dims(past: ir.Value, graph: ir.Graph, caches: set) -> list:
        """Where each dim of the cache input comes from once it is gone: an int, (input, axis) of
        another graph input with the same symbolic dim, or "length" (the key axis)."""
        if past.shape is None or len(past.shape) < 2:
            raise _Declined(f"the rank of the cache input {past.name} is unknown")
        rank = len(past.shape)
        found = []
        for axis, dim in enumerate(past.shape):
            if axis == rank - 2:
                found.append("length")
            elif isinstance(dim, int):
                found.append(dim)
            else:
                source = next(((i, a) for i in graph.inputs if i not in caches and i.shape is not None
                               for a, d in enumerate(i.shape) if not isinstance(d, int) and d == dim), None)
                if source is None:
                    raise _Declined(f"dim {axis} ({dim}) of the cache input {past.name} is in no other input: "
                                    "the graph could not read it without the cache")
                found.append(source)
        return found

    @staticmethod
    def _read_shape_elsewhere(graph: ir.Graph, reader: ir.Node, dims: list, length: ir.Value) -> None:
        """``Shape(past, start, end)`` ==> the same dims, from constants, other inputs and the length
        (only the dims it reads: the others then fold to constants once input shapes are static)."""
        nodes: list[ir.Node] = []
        end = reader.attributes.get("end")
        picked = range(len(dims))[slice(reader.attributes.get_int("start", 0), end.as_int() if end is not None else None)]
        parts = []
        for axis in picked:
            dim = dims[axis]
            if dim == "length":
                parts.append(length)
            elif isinstance(dim, int):
                parts.append(_const(nodes, np.array([dim], np.int64)))
            else:
                source, source_axis = dim
                shape = ir.node("Shape", [source], attributes={"start": source_axis, "end": source_axis + 1})
                nodes.append(shape)
                parts.append(shape.outputs[0])
        cut = ir.node("Concat", parts or [_const(nodes, np.zeros(0, np.int64))], attributes={"axis": 0})
        nodes.append(cut)
        graph.insert_before(reader, nodes)
        out = cut.outputs[0]
        out.dtype, out.shape = ir.DataType.INT64, reader.outputs[0].shape
        old = reader.outputs[0]
        old_name = old.name
        ir.convenience.replace_all_uses_with(old, out)
        if old.is_graph_output():
            graph.outputs[graph.outputs.index(old)] = out
        old.name = None
        out.name = old_name
        graph.remove(reader, safe=True)
