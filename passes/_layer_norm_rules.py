"""LayerNorm pattern pieces, and the rules for ONNX's own expansion of LayerNormalization.

``variance`` spells the variance both ways exporters write it: E[(x - mean)²] and E[x²] - mean².
The ONNX function body of ``LayerNormalization(X, W, B, axis=a)`` (the ``*_expanded`` backend
test cases) computes in 2-D, in the stash type::

    XU = Cast(Flatten(X, axis=a));  Mean2D = ReduceMean(XU, [1])
    StdDev = Sqrt(ReduceMean(XU * XU, [1]) - Mean2D * Mean2D + eps)
    Y = Reshape(Cast(Div(XU - Mean2D, StdDev)) * Flatten(W, 0) + Flatten(B, 0), Shape(X))
    Mean = Reshape(Mean2D, ReducedShape);  InvStdDev = Reshape(Reciprocal(StdDev), ReducedShape)

``Expansion`` makes Y one ``LayerNormalization(X, W, B)``; ``Statistic`` then replaces each
Mean / InvStdDev computation by that node's optional output. The rewriter replaces one value per
match, so one node with three outputs takes these steps: ``Statistic`` grows the node's outputs
when it needs one (``RemoveUnusedNodes`` trims unused optional outputs after every rule). Both
rules keep the matched nodes (``remove_nodes=False``): a statistic reads them until it moves,
and the driver drops the dead ones after each rule.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt.passes._canonical_utils import (
    check_affine,
    check_float,
    check_opset,
    check_scalar,
    constant,
    get_scalar,
    reduced_axes,
    reshaped,
    trailing_axis,
)

__all__ = ["Expansion", "Statistic", "check_exponents", "stash_type", "variance"]


def stash_type(dtype: ir.DataType | None) -> int:
    """The stash type LayerNormalization computes ``dtype`` in: double stays double, the rest float."""
    return int(ir.DataType.DOUBLE if dtype == ir.DataType.DOUBLE else ir.DataType.FLOAT)


def _square(op, value, two):
    return pattern.OrValue([op.Pow(value, two), op.Mul(value, value)])


def variance(op, x, mean, dev, two, two_mean):
    """E[dev²] (tagged ``form="centered"``) or E[x²] - mean² (``"moments"``); ``dev`` is x - mean.

    Either way the outer ReduceMean (the second moment, central or raw) is named ``second``.
    """
    centered = op.ReduceMean(_square(op, dev, two), _allow_other_inputs=True, _outputs=["second"])
    raw = op.ReduceMean(_square(op, x, two), _allow_other_inputs=True, _outputs=["second"])
    moments = op.Sub(raw, _square(op, mean, two_mean))
    return pattern.OrValue([centered, moments], tag_var="form", tag_values=["centered", "moments"])


def check_exponents(result: pattern.MatchResult, two, two_mean, form: str | None, rank: int | None) -> bool:
    """Fail ``result`` unless each matched ``Pow`` of the variance squares (exponent 2)."""
    base = "x - mean" if form == "centered" else "x"
    pows = ((two, f"the exponent in Pow({base}, 2)"), (two_mean, "the exponent in Pow(mean, 2)"))
    return all(value is None or check_scalar(result, value, 2.0, what, 0.0, rank) for value, what in pows)


def _flattened_mean(op, x):
    """(XU, Mean2D): the optional stash Cast of Flatten(x), and its ReduceMean."""
    x2d = op.Flatten(x, _outputs=["x2d"])
    xu = pattern.OrValue([op.Cast(x2d, _outputs=["stash_cast"]), x2d])
    return xu, op.ReduceMean(xu, _allow_other_inputs=True, _outputs=["mean"])


def _deviation_and_std(op, xu, mean, two, two_mean, eps):
    dev = op.Sub(xu, mean, _outputs=["dev"])
    var = variance(op, xu, mean, dev, two, two_mean)
    return dev, op.Sqrt(pattern.OrValue([op.Add(var, eps), op.Add(eps, var)]), _outputs=["std"])


@dataclasses.dataclass(frozen=True)
class _Flat:
    axis: int  # LayerNormalization's axis on X, negative
    epsilon: float | None  # None when the match has no epsilon (the mean alone)
    stash: int

    def stat_dims(self, x: ir.Value) -> list:
        """The Mean / InvStdDev shape: x's leading dims, then ones over the normalized axes."""
        return list(x.shape)[: self.axis] + [1] * -self.axis


def _flat_plan(result, x, x2d, mean, second, eps, two, two_mean, form, stash_cast) -> _Flat | None:
    """What a match of the flattened statistics computes, or None after failing ``result``."""
    if x.shape is None:
        result.fail(f"the rank of {x.name} is unknown", x)
        return None
    rank, axis = len(x.shape), x2d.producer().attributes.get_int("axis", 1)
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank:
        result.fail(f"Flatten axis {axis} leaves no axis of {x.name} to normalize", x2d)
        return None
    for reduce in filter(None, (mean, second)):
        axes, reason = reduced_axes(reduce.producer())
        last, reason = trailing_axis(axes, 2) if reason is None else (None, reason)
        if reason or last != -1:
            result.fail(reason or f"{reduce.name} reduces axes {axes} of the 2-D input, not 1", reduce)
            return None
    if not check_exponents(result, two, two_mean, form, 2):
        return None
    epsilon = None if eps is None else get_scalar(result, eps, "epsilon", 2)
    if eps is not None and epsilon is None:
        return None
    stash = stash_cast.producer().attributes.get_int("to") if stash_cast is not None else stash_type(x.dtype)
    return _Flat(axis - rank, epsilon, stash)


def _names_dims(shape: ir.Value, dims: list) -> bool:
    """``shape`` is a constant of ``dims``, with -1 for at most one of them (cleanup's form)."""
    target = constant(shape)
    if target is None or target.ndim != 1 or len(target) != len(dims) or list(target).count(-1) > 1:
        return False
    return all(t == -1 or (isinstance(d, int) and t == d) for t, d in zip(target.tolist(), dims))


def _is_shape_of(shape: ir.Value, x: ir.Value) -> bool:
    node = shape.producer()
    if node is not None and node.op_type == "Shape" and node.inputs[0] is x and not node.attributes:
        return True
    return _names_dims(shape, list(x.shape))


class Expansion(pattern.RewriteRuleClassBase):
    """Y of the expansion -> LayerNormalization(X, W[, B], axis, epsilon, stash_type).

    ``root``: "reshape" (``Y = Reshape(..., Shape(X))``, the bias optional) or "add" (no Reshape:
    a 2-D X flattened at axis 1 keeps its shape, so cleanup dropped it; the bias present).
    """

    def __init__(self, name: str, root: str) -> None:
        super().__init__(name, remove_nodes=False)  # Mean2D / StdDev may outlive Y; see Statistic
        self.root = root

    def pattern(self, op, x, two, two_mean, eps, scale, bias, shape):
        xu, mean = _flattened_mean(op, x)
        dev, std = _deviation_and_std(op, xu, mean, two, two_mean, eps)
        normalized = op.Div(dev, std, _outputs=["normalized"])
        normalized = pattern.OrValue([op.Cast(normalized, _outputs=["cast_back"]), normalized])
        scaled = op.Mul(normalized, op.Flatten(scale, axis=0), _outputs=["scaled"])
        biased = op.Add(scaled, op.Flatten(bias, axis=0), _outputs=["biased"])
        return biased if self.root == "add" else op.Reshape(pattern.OrValue([biased, scaled]), shape)

    def check(self, context, x, x2d, mean, second, eps, scale, dev, normalized, scaled, two=None,
              two_mean=None, form=None, stash_cast=None, cast_back=None, bias=None, biased=None, shape=None,
              **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        plan = _flat_plan(result, x, x2d, mean, second, eps, two, two_mean, form, stash_cast)
        if plan is None or not check_float(result, x, "LayerNormalization"):
            return result
        if not check_opset(context, result, "LayerNormalization", 17):
            return result
        if cast_back is not None and cast_back.producer().attributes.get_int("to") != x.dtype:
            return result.fail(f"the result is cast to {cast_back.dtype}, not back to {x.dtype}", cast_back)
        if self.root == "add" and (len(x.shape) != 2 or plan.axis != -1):
            return result.fail(f"the 2-D result is not reshaped back to the shape of {x.name}", biased)
        if shape is not None and not _is_shape_of(shape, x):
            return result.fail(f"the result is reshaped to {shape.name}, not to the shape of {x.name}", shape)
        reshapes = []
        for what, param in (("scale", scale), ("bias", bias)):
            ok, reshape = check_affine(result, what, param, x, plan.axis) if param is not None else (True, None)
            if not ok:
                return result
            reshapes.append(reshape)
        inside = set(context.nodes)  # Mean2D and StdDev may be used outside: Statistic moves them
        for value in (dev, normalized, cast_back, scaled, biased if shape is not None else None):
            if value is not None and (value.is_graph_output() or any(u.node not in inside for u in value.uses())):
                return result.fail(f"{value.name} is also used outside the LayerNorm", value)
        self._plan = (plan, reshapes)
        return result

    def rewrite(self, op, x, scale, bias=None, **_):
        plan, (scale_shape, bias_shape) = self._plan
        inputs = [x, reshaped(op, scale, scale_shape)] + ([reshaped(op, bias, bias_shape)] if bias is not None else [])
        return op.LayerNormalization(*inputs, axis=plan.axis, epsilon=plan.epsilon, stash_type=plan.stash)


def _fused_norm(graph, x: ir.Value, plan: _Flat, index: int) -> ir.Node | None:
    """A LayerNormalization of ``x`` in ``graph`` whose output ``index`` is the statistic ``plan``."""
    rank = len(x.shape)
    for use in x.uses():
        node, attributes = use.node, use.node.attributes
        if (node.op_type, node.domain, use.idx, node.graph) != ("LayerNormalization", "", 0, graph):
            continue
        axis = attributes.get_int("axis", -1)
        if (axis - rank if axis >= 0 else axis, attributes.get_int("stash_type", 1)) != (plan.axis, plan.stash):
            continue
        if index == 1 or np.float32(attributes.get_float("epsilon", 1e-5)) == np.float32(plan.epsilon):
            return node
    return None


class Statistic(pattern.RewriteRuleClassBase):
    """Mean2D or Reciprocal(StdDev) of the expansion -> that output of LayerNormalization(X).

    ``statistic``: "mean" or "inv_std"; ``reshaped``: the value is reshaped (to ReducedShape).
    The statistics of X do not depend on W and B, so any LayerNormalization of X with the same
    axis, epsilon and stash type will do. Apply "inv_std" first: it reads Mean2D.
    """

    def __init__(self, name: str, statistic: str, reshaped: bool) -> None:
        super().__init__(name, remove_nodes=False)  # the statistics share nodes until both move
        self.statistic, self.reshaped = statistic, reshaped

    def pattern(self, op, x, two, two_mean, eps, shape):
        xu, stat = _flattened_mean(op, x)
        if self.statistic == "inv_std":
            stat = op.Reciprocal(_deviation_and_std(op, xu, stat, two, two_mean, eps)[1])
        return op.Reshape(stat, shape) if self.reshaped else stat

    def check(self, context, x, x2d, mean, second=None, eps=None, two=None, two_mean=None, form=None,
              stash_cast=None, shape=None, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        plan = _flat_plan(result, x, x2d, mean, second, eps, two, two_mean, form, stash_cast)
        if plan is None:
            return result
        index, what = (1, "Mean") if self.statistic == "mean" else (2, "InvStdDev")
        graph, value = context.graph_or_function, context.output_values[0]
        norm = _fused_norm(graph.graph if isinstance(graph, ir.Function) else graph, x, plan, index)
        if norm is None:
            return result.fail(f"no LayerNormalization of {x.name} (axis {plan.axis}) outputs this {what}", value)
        dims, dtype = plan.stat_dims(x), ir.DataType(plan.stash)
        if value.dtype is not None and value.dtype != dtype:
            return result.fail(f"{value.name} is {value.dtype.name}, the fused {what} {dtype.name}", value)
        same = _names_dims(shape, dims) if self.reshaped else value.shape is not None and list(value.shape) == dims
        if not same and not self.reshaped:
            return result.fail(f"{value.name} has shape {value.shape}, LayerNormalization's {what} {dims}", value)
        nodes = list(graph)
        later = set(nodes[nodes.index(norm) + 1 :])
        if not same and context.root not in later or any(use.node not in later for use in value.uses()):
            return result.fail(f"{value.name} is used before the fused LayerNormalization", value)
        if same and value.is_graph_output() and index < len(norm.outputs) and norm.outputs[index].is_graph_output():
            return result.fail(f"{value.name} and LayerNormalization's {what} are both graph outputs", value)
        self._plan = (norm, index, None if same else context.root.attributes.get_int("allowzero", 0))
        return result

    def rewrite(self, op, shape=None, **_):
        norm, index, allowzero = self._plan
        if len(norm.outputs) <= index:
            norm.resize_outputs(index + 1)  # the optional output, trimmed while unused
        output = norm.outputs[index]
        # A reshaped output keeps no name of its own, and RemoveUnusedNodes trims unnamed outputs
        output.name = output.name or f"{norm.outputs[0].name}_{('mean', 'inv_std_dev')[index - 1]}"
        return output if allowzero is None else op.Reshape(output, shape, allowzero=allowzero)
