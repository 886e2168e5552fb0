"""CHESS (He et al., EMNLP 2024): channel-wise thresholds on each MLP's gate, selective attention thresholds.

    Mul(act(g), u)                 gated MLP (SwiGLU, GeGLU)
      ->  Mul(pkg.graphopt.ActivationThreshold(act(g), t[C]), u)       one t per channel of act's last axis
    MatMul(act(h), W)              plain MLP (BERT/ViT; Gemm, behind a Reshape: as ``cats``)
      ->  MatMul(pkg.graphopt.ActivationThreshold(act(h), t[C]), W)
    q_proj(x), k_proj(x), v_proj(x)  ->  q_proj(pkg.graphopt.ActivationThreshold(x, t_q)), k_proj(x), v_proj(x)
    o_proj(attn)                     ->  o_proj(pkg.graphopt.ActivationThreshold(attn, t_o))

The MLP rules are ``cats``' (named ``chess-*``); the attention rules are ``teal``'s linear-input rule
restricted to the two projections CHESS sparsifies. Run ``canonicalize`` first.

Gate thresholds (CHESS's channel-wise thresholding): channel i's importance for an entry is
``a_g,i² · E[a_u,i²]`` (a_g the activation, a_u the Mul's other factor, E over the calibration
tokens); τ is the ``sparsity``-quantile of the importance over all entries of the layer, and
``t_i = √(τ / E[a_u,i²])``, so ``|a_g,i| > t_i`` keeps what matters most to the product. A plain
MLP has no a_u (E[a_u²] = 1): every channel gets √τ, the ``sparsity``-quantile of |a| (CATS's t).

Attention ("selective" sparsification): only q_proj's input is thresholded (k_proj and v_proj read
the same x densely) and o_proj's input; each t the ``sparsity``-quantile of |x| (keyed by site, teal's). q_proj is the
linear layer that reaches the attention node's Q (through reshapes, RoPE, scaling) and neither K
nor V; o_proj the one reading the attention output through layout ops (Transpose/Reshape).
Calibrated twice, like ``cats``/``teal`` (``_threshold_rules.calibrated_thresholds``).

Declined, with the reason: what ``cats``' and ``teal``'s rules decline; a linear layer that is not
an attention's q or o projection (k/v named as such; a fused projection that makes Q and K or V).

Why: CHESS reports lower degradation than CATS at the same sparsity, activating fewer parameters,
and up to 1.27x end-to-end on CPU with its (unreleased) kernels; zeros on the gate skip W_up rows
and W_down columns, zeros on q_proj's and o_proj's inputs their weight rows.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt import ops
from graphopt.calibrate import Calibration, Scales
from graphopt.passes._threshold_rules import (
    LINEAR_OPS,
    CalibratedThresholdPass,
    Plan,
    Threshold,
    ThresholdOptions,
    float_value,
    linear_weight_shape,
    producers_upstream,
    quantile_plan,
)
from graphopt.passes.cats import cats_rules, is_activation
from graphopt.passes.teal import _OWN_THRESHOLD, TealOptions, _LinearInputRule, site
from graphopt.registry import register_pass

__all__ = ["ChessPass", "attention_projections", "channel_thresholds"]

_ATTENTION = (("DotProductAttention", ops.DOMAIN), ("Attention", ""))
_LAYOUT = ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze")
_NOT_SELECTED = "not an attention's q or o projection: CHESS thresholds those and the MLP gate only"


def _is_attention(node: ir.Node) -> bool:
    domain = "" if node.domain == "ai.onnx" else node.domain
    return (node.op_type, domain) in _ATTENTION


def _upstream_linears(value: ir.Value | None, depth: int = 12) -> set[str]:
    """Output names of the linear layers (constant weight) that ``value`` is computed from, within
    ``depth`` nodes, not looking past a linear layer, an attention, or a shape computation."""
    nodes = producers_upstream(value, depth, lambda node: not linear_weight_shape(node) and not _is_attention(node))
    return {node.outputs[0].name for node in nodes if linear_weight_shape(node)}


def _downstream_linears(value: ir.Value, depth: int = 4) -> set[str]:
    """Output names of the linear layers reading ``value`` as their input through layout ops only."""
    found, frontier = set(), [(value, 0)]
    while frontier:
        v, d = frontier.pop()
        for node in v.consumers():
            if linear_weight_shape(node) and node.inputs[0] is v:
                found.add(node.outputs[0].name)
            elif node.op_type in _LAYOUT and d < depth and node.inputs[0] is v:
                frontier.append((node.outputs[0], d + 1))
    return found


def attention_projections(graph: ir.Graph) -> tuple[frozenset[str], dict[str, str]]:
    """(the q and o projections' output names, why each other projection of an attention is left dense)."""
    selected, reasons = set(), {}
    for node in graph:
        if not _is_attention(node) or len(node.inputs) < 3:
            continue
        q, k, v = (_upstream_linears(node.inputs[i]) for i in range(3))
        for name in (k | v) - q:
            reasons[name] = f"{name} makes attention's K or V: CHESS keeps k_proj and v_proj dense"
        for name in q & (k | v):
            reasons[name] = f"{name} makes attention's Q and K or V (a fused projection): CHESS keeps k/v dense"
        selected |= (q - k - v) | _downstream_linears(node.outputs[0])
    return frozenset(selected), reasons


class _SelectedLinearRule(_LinearInputRule):
    """teal's linear(x, W) -> linear(ActivationThreshold(x, t), W), for attention's q and o projections only."""

    def __init__(self, name: str, thresholds: Scales[Threshold], options: TealOptions, linear: str,
                 selected: frozenset[str], reasons: Mapping[str, str]) -> None:
        super().__init__(name, thresholds, options, linear)
        self.selected, self.reasons = selected, reasons

    def check(self, context, x, out, **kwargs) -> pattern.MatchResult:
        if out.name not in self.selected:
            return pattern.MatchResult().fail(self.reasons.get(out.name, _NOT_SELECTED), out)
        return super().check(context, x, out, **kwargs)


def _channels(calibration: Calibration, name: str) -> np.ndarray | None:
    """``name``'s captured values as (entries, channels of the last axis), rows with a non-finite value left out."""
    arrays = [np.asarray(a, np.float64) for a in calibration.arrays.get(name) or []]
    if not arrays or any(a.ndim == 0 for a in arrays) or len({a.shape[-1] for a in arrays}) != 1:
        return None
    rows = np.concatenate([a.reshape(-1, a.shape[-1]) for a in arrays])
    rows = rows[np.isfinite(rows).all(axis=1)]
    return rows if rows.size else None


def channel_thresholds(gate: np.ndarray, up: np.ndarray | None, sparsity: float) -> np.ndarray:
    """CHESS's per-channel t (``gate``, ``up``: (entries, C); ``up`` None: a plain MLP, E[a_u²] = 1)."""
    energy = np.ones(gate.shape[1]) if up is None else np.mean(up * up, axis=0)
    if sparsity == 0.0:
        return np.zeros(gate.shape[1])
    energy = np.maximum(energy, np.finfo(np.float32).tiny)
    tau = np.quantile(gate * gate * energy, sparsity)
    return np.sqrt(tau / energy)


def _chess_plan(dtypes: Mapping[str, ir.DataType], sparsity: float, ups: Mapping[str, str | None]) -> Plan:
    """Per-channel thresholds for the gates (keys in ``ups``: gate -> the Mul's other factor), per-tensor for the rest."""
    scalar = quantile_plan(dtypes, sparsity)

    def plan(calibration: Calibration, reaching: Mapping[str, str]) -> Scales[Threshold]:
        rest = scalar(calibration, {k: n for k, n in reaching.items() if k not in ups})
        found, reasons = dict(rest.found), dict(rest.reasons)
        for key, name in reaching.items():
            if key not in ups:
                continue
            gate = _channels(calibration, name)
            up = _channels(calibration, ups[key]) if ups[key] is not None else None
            if gate is None or (ups[key] is not None and (up is None or up.shape[1] != gate.shape[1])):
                reasons[key] = f"no per-channel calibration statistics for {name}"
                continue
            t = np.asarray(channel_thresholds(gate, up, sparsity), dtype=dtypes[key].numpy())
            found[key] = Threshold(tuple(float(v) for v in t), sparsity)
        return Scales(found, reasons)
    return plan


def _up_factor(gate: ir.Value) -> str | None:
    """The other factor of the Mul that reads the gate (a gated MLP's a_u), None for a plain MLP
    (or when that factor is a constant: nothing to calibrate, the gate's own statistics decide)."""
    for consumer in gate.consumers():
        if consumer.op_type == "Mul" and consumer.domain in ("", "ai.onnx"):
            others = [v for v in consumer.inputs if v is not gate and v is not None]
            if len(others) == 1 and ir.convenience.get_const_tensor(others[0]) is None:
                return others[0].name
    return None


@register_pass("chess", options=ThresholdOptions, category="rewrite")
class ChessPass(CalibratedThresholdPass):
    """CHESS: per-channel thresholds on each MLP gate (importance a_g²·E[a_u²]), thresholds on q_proj's and o_proj's inputs."""

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self._selected: frozenset[str] = frozenset()
        self._reasons: dict[str, str] = {}

    def _rules(self, thresholds: Scales[Threshold]) -> list:
        options = TealOptions(sparsity=self.options.sparsity)
        linear = tuple(_SelectedLinearRule.rule(f"chess-attention-{op.lower()}", thresholds, options, op, self._selected, self._reasons)
                       for op in LINEAR_OPS)
        return [*cats_rules(thresholds, prefix="chess"), linear]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Find the q/o projections, calibrate gates (per channel) and their inputs (``calibrated_thresholds``), run the rules."""
        graph = model.graph
        self._selected, self._reasons = attention_projections(graph)
        gates = {n.outputs[0].name: n.outputs[0] for n in graph if is_activation(n) and float_value(n.outputs[0])}
        ups = {name: _up_factor(value) for name, value in gates.items()}
        inputs = {site(n.inputs[0], n.outputs[0]): n.inputs[0] for n in graph
                  if n.outputs and n.outputs[0].name in self._selected and float_value(n.inputs[0])}
        values = {**{name: value.dtype for name, value in gates.items()}, **{key: x.dtype for key, x in inputs.items()}}
        plan = _chess_plan(values, self.options.sparsity, ups)
        self.calibrate_thresholds(model, values, plan=plan, extra=[u for u in ups.values() if u is not None],
                                  sources={key: x.name for key, x in inputs.items()})
        result = super().call(model)
        # every other linear layer, and the threshold nodes this run made (they match again)
        self.declines = [d for d in self.declines if d.reason not in (_NOT_SELECTED, _OWN_THRESHOLD)]
        return result

