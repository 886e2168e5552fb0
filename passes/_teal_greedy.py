"""TEAL's block-wise greedy allocation of per-projection sparsities (``teal(greedy=true)``).

TEAL (``greedyopt.py``): per block, start every projection at sparsity 0; repeatedly try one step
more on each projection, keep the step whose output error is smallest, until the block's
parameter-weighted sparsity reaches the target. Here:

- a *block* is a sublayer: the thresholded linear layers downstream of one normalization (the
  earliest LayerNormalization/RMSNormalization their input is computed from; attention's q/k/v/o
  share one, the MLP's gate/up/down the next). TEAL's block is a whole decoder layer (attention and
  MLP trade sparsity between them); a sublayer is what a graph shows without knowing the model.
  Linear layers with no normalization upstream form one block.
- a *step* adds the same parameter-weighted sparsity to the block (``step / n`` for n
  projections: projection p's sparsity grows by ``step/n · W/w_p``, TEAL's "0.05/param-weight"),
  the last one shrunk to land on the target exactly.
- the *error* is the model's outputs against the dense model's on the calibration samples (sum
  over float outputs of ‖y - y_dense‖² / ‖y_dense‖²), with the other blocks dense, as TEAL
  measures each block on its own (TEAL reads the block's output; a graph's block has no single
  output tensor to read).
- a projection's threshold at sparsity s is the s-quantile of its dense input's |x|; the pass
  recalibrates the chosen sparsities twice afterwards (``calibrated_thresholds``).

Deterministic: ORT single-threaded with graph optimizations off, ties go to the first projection in
graph order; nothing is random.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from graphopt.ops.threshold import SITE_KEY
from graphopt.passes._threshold_rules import is_threshold, producers_upstream

__all__ = ["blocks", "greedy_sparsities"]

_NORMS = ("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization")
_MAX = 0.99  # ThresholdOptions' sparsity range


def _earliest_norm(value: ir.Value, order: Mapping[int, int], depth: int = 40) -> int | None:
    """Graph index of the earliest normalization ``value`` is computed from (not through shape computations)."""
    found = [order[id(node)] for node in producers_upstream(value, depth, lambda node: node.op_type not in _NORMS)
             if node.op_type in _NORMS]
    return min(found) if found else None


def blocks(graph: ir.Graph, inputs: Mapping[str, ir.Value]) -> list[list[str]]:
    """Sites (``inputs``: site -> the thresholded value) grouped by their earliest upstream normalization, in graph order."""
    order = {id(node): i for i, node in enumerate(graph)}
    groups: dict[int, list[str]] = {}
    for site, value in inputs.items():
        norm = _earliest_norm(value, order)
        groups.setdefault(-1 if norm is None else norm, []).append(site)
    return [groups[key] for key in sorted(groups)]


class _Evaluator:
    """The model with each threshold's T a graph input: outputs' relative error for any thresholds, one session."""

    def __init__(self, probe: ir.Model, samples: Sequence[Mapping[str, np.ndarray]]) -> None:
        from graphopt.backends import ort as ort_backend  # noqa: PLC0415 — ORT only when calibrating, as the engine does

        self.feeds: dict[str, tuple[str, np.dtype]] = {}
        for i, node in enumerate(n for n in probe.graph if is_threshold(n)):
            dtype = node.inputs[0].dtype
            t = ir.Value(name=f"teal_greedy_t_{i}", type=ir.TensorType(dtype), shape=ir.Shape([]))
            probe.graph.inputs.append(t)
            node.replace_input_with(1, t)
            self.feeds[node.metadata_props[SITE_KEY]] = (t.name, dtype.numpy())
        self.run = lambda feeds: ort_backend.run(self.session, feeds)
        self.session = ort_backend.make_session(probe, optimization="disable", threads=1)
        self.samples = list(samples)
        self.dense = [self._outputs(sample, {}) for sample in self.samples]

    def _outputs(self, sample, thresholds: Mapping[str, float]) -> dict[str, np.ndarray]:
        feeds = dict(sample)
        for site, (name, dtype) in self.feeds.items():
            feeds[name] = np.asarray(thresholds.get(site, 0.0), dtype=dtype)
        return {k: np.asarray(v, np.float64) for k, v in self.run(feeds).items() if np.asarray(v).dtype.kind == "f"}

    def error(self, thresholds: Mapping[str, float]) -> float:
        total = 0.0
        for sample, dense in zip(self.samples, self.dense):
            got = self._outputs(sample, thresholds)
            total += sum(float(np.sum((got[k] - ref) ** 2) / max(np.sum(ref * ref), 1e-30)) for k, ref in dense.items())
        return total


def _greedy_block(error: Callable[[Mapping[str, float]], float], block: list[str], weights: Mapping[str, int],
                  target: float, step: float) -> dict[str, float]:
    """One block's sparsities (site -> s), TEAL's greedy search (the module docstring)."""
    total, sparsity, reached = sum(weights[p] for p in block), dict.fromkeys(block, 0.0), 0.0
    while reached < target - 1e-9:
        gain, best = min(step / len(block), target - reached), None
        for p in block:
            grow = min(gain * total / weights[p], _MAX - sparsity[p])
            if grow <= 1e-12:
                continue
            err = error({**sparsity, p: sparsity[p] + grow})
            if best is None or err < best[0]:
                best = (err, p, grow)
        if best is None:  # every projection at the maximum
            break
        _, p, grow = best
        sparsity[p] += grow
        reached += grow * weights[p] / total
    return {p: round(s, 6) for p, s in sparsity.items()}  # the stamped targets: no float noise


def greedy_sparsities(graph: ir.Graph, probe: ir.Model, samples: Sequence[Mapping[str, np.ndarray]], inputs: Mapping[str, ir.Value],
                      absolute: Mapping[str, np.ndarray], weights: Mapping[str, int], target: float,
                      step: float = 0.05) -> dict[str, float]:
    """Per-site sparsity, block by block. ``graph``: the original; ``probe``: it thresholded at every site (it is changed);
    ``inputs``: site -> thresholded value of the original graph; ``absolute``: site -> its dense input's
    |values| (the thresholds a trial uses); ``weights``: site -> the linear layer's parameters."""
    evaluator = _Evaluator(probe, samples)
    result = {}
    for block in blocks(graph, inputs):
        def error(sparsity, block=block):
            return evaluator.error({p: float(np.quantile(absolute[p], s)) if s > 0 else 0.0 for p, s in sparsity.items()})
        result.update(_greedy_block(error, block, weights, target, step))
    return result
