"""What the activation-sparsity passes (``cats``, ``teal``) share: options, calibrated thresholds,
and the one way a threshold is inserted.

A threshold for value x at target sparsity s is the s-quantile of |x| over the calibration
samples (``Calibration.quantile``, numpy's exact quantile, not a histogram: CATS reads it off a
histogram only because its tensors are too big to sort), so that ``P(|x| <= t) ≈ s`` on data like
the samples. s = 0 gives t = 0: the op is then the identity, not "drop the smallest value seen".

The rewrite inserts ``pkg.graphopt.ActivationThreshold(x, t)`` with t a ``Constant`` of x's type
(works inside functions too; ``cleanup`` lifts it) and stamps the target on the node
(``TARGET_KEY``), which is how ``graphopt.sparsity`` finds what each threshold was meant to do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np
import onnx_ir as ir

from graphopt import ops, registry, rewrite
from graphopt.calibrate import Calibration, Scales
from graphopt.ops.threshold import OP_NAME, SITE_KEY, TARGET_KEY
from graphopt.pass_base import RulePass
from graphopt.passes._canonical_utils import is_dequantized_constant

__all__ = [
    "LINEAR_OPS",
    "CalibratedThresholdPass",
    "Plan",
    "Threshold",
    "ThresholdOptions",
    "calibrated_thresholds",
    "float_value",
    "insert_threshold",
    "is_threshold",
    "is_thresholded",
    "linear_weight_shape",
    "plan_thresholds",
    "producers_upstream",
    "quantile_plan",
    "readers",
    "same_node",
]

LINEAR_OPS = ("MatMul", "Gemm")
_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)


@dataclasses.dataclass(frozen=True)
class ThresholdOptions:
    """``sparsity``: the fraction of each thresholded tensor's entries to zero, on data like the samples.

    Not ``CalibrationOptions``: those pick a quantization range (min/max, percentile, bits), and a
    threshold has no range; it is the ``sparsity``-quantile of |x|."""

    sparsity: float = dataclasses.field(default=0.5, metadata={"range": (0.0, 0.99)})

    def __post_init__(self) -> None:
        registry.check_options(self)


@dataclasses.dataclass(frozen=True)
class Threshold:
    value: float | tuple[float, ...]  # t, as stored (rounded to the tensor's float type); a tuple: one per channel
    target: float | None  # the sparsity t was calibrated for (None: no target, relufy's FATReLU)


Plan = Callable[[Calibration, Mapping[str, str]], Scales[Threshold]]


def _stored(t, dtype: ir.DataType) -> float | tuple[float, ...]:
    """t as the tensor's float type will hold it (a scalar, or a tuple per channel)."""
    stored = np.asarray(t, dtype=dtype.numpy())
    return float(stored) if stored.ndim == 0 else tuple(float(v) for v in stored)


def quantile_plan(dtypes: Mapping[str, ir.DataType], sparsity: float | Mapping[str, float]) -> Plan:
    """The per-tensor plan: key k's threshold is the ``sparsity``-quantile (one for all keys, or
    one per key) of |the value reaching k| (``reaching``: key -> captured name); why a key got none."""
    def plan(calibration: Calibration, reaching: Mapping[str, str]) -> Scales[Threshold]:
        found, reasons = {}, {}
        for key, name in reaching.items():
            s = sparsity[key] if isinstance(sparsity, Mapping) else sparsity
            quantile = calibration.quantile(name, s, absolute=True)
            if quantile is None:  # not captured, or no finite value (the engine leaves those out)
                reasons[key] = f"no calibration statistics for {name}"
                continue
            found[key] = Threshold(_stored(0.0 if s == 0.0 else quantile, dtypes[key]), s)
        return Scales(found, reasons)
    return plan


def plan_thresholds(calibration: Calibration, names: Iterable[str], dtypes: dict[str, ir.DataType],
                    sparsity: float) -> Scales[Threshold]:
    """Each value's threshold (the ``sparsity``-quantile of its |values|), and why a value got none."""
    return quantile_plan(dtypes, sparsity)(calibration, {name: name for name in names})


def _all_zero(thresholds: Scales[Threshold]) -> bool:
    return all(not np.any(np.asarray(t.value)) for t in thresholds.found.values())


def calibrated_thresholds(the_pass, model: ir.Model, values: dict[str, ir.DataType],
                          rules_for: Callable[[Scales[Threshold]], list], key_of: Callable[[ir.Node], str],
                          plan: Plan | None = None, extra: Iterable[str] = (),
                          sources: Mapping[str, str] | None = None) -> Scales[Threshold]:
    """Thresholds for ``values`` (name -> float type), calibrated twice.

    Calibrated on the dense model alone, a threshold misses its target on the sparsified one: the
    thresholds upstream shrink what reaches it (on tiny-llama, o_proj's and down_proj's inputs
    came out 2-6 points sparser). So the thresholds of the first run are applied to a copy
    (``rules_for(thresholds)``) and each is recalibrated on what reaches it there; ``key_of`` says
    which of ``values`` a threshold node of the copy stands for. One refinement: the upstream
    thresholds it sees are the first run's, which are already close. ``plan`` turns statistics
    into thresholds (default: ``quantile_plan`` at the pass's ``sparsity``); ``extra``: other
    values it reads (captured in both runs; they must keep their names in the copy). ``sources``:
    the value each key of ``values`` thresholds, when a key is not itself a value's name (``teal``
    keys by site, one per projection).
    """
    sources, extra = {key: (sources or {}).get(key, key) for key in values}, list(extra)
    plan = plan or quantile_plan(values, the_pass.options.sparsity)
    first = plan(the_pass.calibrate(model, sorted({*sources.values(), *extra})), sources)
    if not first.found or _all_zero(first):
        return first
    probe = model.clone()
    rewrite.apply_rules(probe, rules_for(first), explain=False, skip=rewrite.skipped_sites(the_pass.pass_name))
    reaching = {key_of(node): node.inputs[0].name for node in probe.graph if is_threshold(node)}
    reaching = {key: name for key, name in reaching.items() if key in first.found}
    second = plan(the_pass.calibrate(probe, sorted({*reaching.values(), *extra})), reaching)
    return Scales({**first.found, **second.found}, first.reasons)


class CalibratedThresholdPass(RulePass):
    """A pass whose rules read the thresholds its ``call`` calibrates: ``_rules(thresholds)`` builds
    them (for the run, and for ``calibrated_thresholds``' probe copy); ``calibrate_thresholds`` fills them."""

    needs_calibration = True

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self._thresholds: Scales[Threshold] = Scales()

    def rules(self):
        return self._rules(self._thresholds)

    def _rules(self, thresholds: Scales[Threshold]) -> list:
        raise NotImplementedError

    def calibrate_thresholds(self, model: ir.Model, values: dict[str, ir.DataType], **options) -> None:
        """``calibrated_thresholds`` for ``values`` (none: no thresholds), keyed by each threshold node's site."""
        self._thresholds = (calibrated_thresholds(self, model, values, self._rules,
                                                  key_of=lambda node: node.metadata_props[SITE_KEY], **options)
                            if values else Scales())


def producers_upstream(value: ir.Value | None, depth: int, walks_past: Callable[[ir.Node], bool]) -> Iterator[ir.Node]:
    """Each node ``value`` is computed from within ``depth`` nodes, once, never through a shape
    computation; the walk goes on past a node only where ``walks_past(node)``."""
    seen, frontier = set(), [(value, 0)]
    while frontier:
        v, d = frontier.pop()
        node = v.producer() if v is not None else None
        if node is None or id(node) in seen or d > depth or node.op_type in ("Shape", "Size"):
            continue
        seen.add(id(node))
        yield node
        if walks_past(node):
            frontier += [(i, d + 1) for i in node.inputs]


def float_value(value: ir.Value | None) -> bool:
    return value is not None and value.dtype in _FLOATS


def insert_threshold(op, x: ir.Value, threshold: Threshold, like: ir.Value, site: str) -> ir.Value:
    """``ActivationThreshold(x, t)``, t a constant of x's type, with the target and the site (what
    the original graph called the thresholded tensor; the rewrite's own values are fresh) stamped
    on the new node (no target stamped when ``threshold.target`` is None). ``like``: the original value x stands for, whose type and shape x and the
    output share (a value the rewrite just made has none yet)."""
    t = op.Constant(value=ir.tensor(np.asarray(threshold.value, dtype=like.dtype.numpy())))
    y = op.ActivationThreshold(x, t, _domain=ops.DOMAIN, _version=ops.OPSET_VERSION)
    for value in (x, y):
        value.type = value.type or like.type
        value.shape = value.shape or like.shape
    if threshold.target is not None:
        y.producer().metadata_props[TARGET_KEY] = repr(threshold.target)
    y.producer().metadata_props[SITE_KEY] = site
    return y


def same_node(op, node: ir.Node, first: ir.Value) -> ir.Value:
    """``node`` again (op, domain, attributes, other inputs) with ``first`` as its first input: a
    matched node rebuilt around a threshold (the rewrite removes the matched nodes)."""
    attributes = {name: attr.value for name, attr in node.attributes.items()}
    return getattr(op, node.op_type)(first, *node.inputs[1:], _domain=node.domain, **attributes)


def is_threshold(node: ir.Node) -> bool:
    return node.op_type == OP_NAME and node.domain == ops.DOMAIN


def is_thresholded(value: ir.Value | None) -> bool:
    producer = value.producer() if value is not None else None
    return producer is not None and is_threshold(producer)


def readers(value: ir.Value) -> list[ir.Node]:
    """The nodes reading ``value``, looking through a Reshape (exporters flatten to 2-D before a Gemm)."""
    direct = list(value.consumers())
    return direct + [n for r in direct if r.op_type == "Reshape" and r.outputs for n in r.outputs[0].consumers()]


def linear_weight_shape(node: ir.Node) -> tuple[int, int] | None:
    """The (in, out)-like 2-D shape of a linear layer's constant weight (``MatMul(x, W)``, ``Gemm(x, W, ...)``;
    W an initializer, a Constant, or integers dequantized in the graph), else None."""
    if node.op_type not in LINEAR_OPS or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
        return None
    weight = node.inputs[1]
    if weight is None or weight.is_graph_input():  # a graph input can be fed at run time: not a constant
        return None
    tensor = ir.convenience.get_const_tensor(weight)
    if tensor is not None:
        shape = tuple(tensor.shape)
    elif is_dequantized_constant(weight) and weight.shape is not None and weight.shape.is_static():
        shape = tuple(weight.shape)
    else:
        return None
    return shape if len(shape) == 2 else None
