"""Base classes for graphopt passes: every pass is an ``onnx_ir`` in-place pass with stats.

``GraphoptPass`` holds the pass's options and what it did (rewrites per rule, declined
candidates with reasons), which the pipeline runner copies into the report. ``RulePass`` is a
pass made only of rewrite rules: it declares ``rules()`` and the shared driver does the rest.
"""

from __future__ import annotations

import abc
import collections
import math
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import pattern

from graphopt import registry, rewrite

__all__ = ["GraphoptPass", "RulePass"]


class GraphoptPass(ir.passes.InPlacePass):
    """A registered pass: constructed from its options dataclass, records what it did.

    A pass that needs statistics sets ``needs_calibration = True`` and calls ``self.stats(model,
    value_names)``: the pipeline hands it the run's samples (the user's calibration data, or
    seeded synthetic inputs with a loud note when there are none).
    """

    pass_name = "unregistered"
    needs_calibration = False

    def __init__(self, options=None) -> None:
        super().__init__()
        if options is None:
            spec = registry.get_pass(self.pass_name)
            options = spec.options()
        self.options = options
        self.rewrites: collections.Counter = collections.Counter()
        self.declines: list[rewrite.Decline] = []
        self.notes: list[str] = []
        self.samples: list[dict] | None = None

    def __call__(self, model: ir.Model) -> ir.passes.PassResult:
        """Run once: what ``rewrites``, ``declines`` and ``notes`` hold afterwards is this run's alone."""
        self.rewrites, self.declines, self.notes = collections.Counter(), [], []
        return super().__call__(model)

    def stats(self, model: ir.Model, names, **kwargs) -> dict:
        """Statistics of intermediate values of ``model`` (as it is now) over the run's samples."""
        from graphopt.calibrate import Calibrator  # noqa: PLC0415 — ORT only for passes that calibrate

        if not self.samples:
            raise ValueError(f"pass '{self.pass_name}' needs calibration samples and got none")
        return Calibrator(model, self.samples).stats(list(names), **kwargs)

    def symmetric_scales(self, model: ir.Model, names, calibration: str, percentile: float,
                         bits: int) -> tuple[dict[str, float], dict[str, str]]:
        """Per-tensor symmetric scales ``range / (2^(bits-1) - 1)`` of ``names`` (float32-representable),
        the range from min/max or the ``percentile`` percentiles; and why a name got none."""
        at = percentile if calibration == "percentile" else None
        stats = self.stats(model, names, **({"percentiles": (100.0 - percentile, percentile)} if at is not None else {}))
        qmax = 2 ** (bits - 1) - 1
        scales, reasons = {}, {}
        for name in names:
            st = stats.get(name)
            if st is None:
                reasons[name] = f"no calibration statistics for {name}"
                continue
            bound = st.symmetric_range(at)
            if not math.isfinite(bound) or bound <= 0.0:
                reasons[name] = f"calibrated range of {name} is {bound!r}; cannot pick a scale"
                continue
            scales[name] = float(np.float32(bound / qmax))
        return scales, reasons

    def record(self, outcome: rewrite.RuleOutcome) -> bool:
        self.rewrites.update(outcome.rewrites)
        self.declines.extend(outcome.declines)
        return outcome.total > 0


class RulePass(GraphoptPass):
    """A pass that is a list of rewrite rules applied by the one driver."""

    @abc.abstractmethod
    def rules(self) -> Sequence[pattern.RewriteRule]:
        """The rules, in the order they are tried."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = self.record(rewrite.apply_rules(model, self.rules()))
        if modified:  # what the replaced subgraphs read (constants, shape chains) is now dead
            common_passes.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified=modified)
