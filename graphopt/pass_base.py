"""Base classes for graphopt passes: every pass is an ``onnx_ir`` in-place pass with stats.

``GraphoptPass`` holds the pass's options and what it did (rewrites per rule, declined
candidates with reasons), which the pipeline runner copies into the report. ``RulePass`` is a
pass made only of rewrite rules: it declares ``rules()`` and the shared driver does the rest.
"""

from __future__ import annotations

import abc
import collections
from collections.abc import Sequence

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import pattern

from graphopt import calibrate, registry, rewrite

__all__ = ["GraphoptPass", "RulePass"]


class GraphoptPass(ir.passes.InPlacePass):
    """A registered pass: constructed from its options dataclass, records what it did.

    A pass that needs statistics sets ``needs_calibration = True``, inherits its options from
    ``calibrate.CalibrationOptions`` and calls ``self.calibrate(model, value_names)``: the pipeline
    hands it the run's samples (the user's calibration data, or seeded synthetic inputs with a loud
    note when there are none).

    A pass whose job is to change the model's inputs or outputs (``linear-attention-state``: a KV
    cache becomes a recurrent state) sets ``changes_interface = True``; ``graphopt compile`` refuses
    any other pass that changes their number, and reports the change (``graphopt.interface``).
    """

    pass_name = "unregistered"
    needs_calibration = False
    changes_interface = False

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

    def calibrate(self, model: ir.Model, names, **kwargs) -> calibrate.Calibration:
        """One run of ``model`` (as it is now) over the run's samples, capturing ``names``: ranges,
        scales, quantiles and histograms are read off the result (``graphopt.calibrate``)."""
        return calibrate.calibrate(model, self.samples, names, pass_name=self.pass_name, **kwargs)

    def stats(self, model: ir.Model, names, **kwargs) -> dict:
        """Statistics (``TensorStats``) of intermediate values of ``model`` over the run's samples."""
        return self.calibrate(model, names).stats(**kwargs)

    def apply_rules(self, model: ir.Model, rules, *, explain: bool = True) -> rewrite.RuleOutcome:
        """The one driver on ``rules``, leaving alone the sites the numeric budget's bisection rolled
        back (``rewrite.site_filter``, ``graphopt.budget``) and telling it where this pass rewrote."""
        outcome = rewrite.apply_rules(model, rules, explain=explain, skip=rewrite.skipped_sites(self.pass_name))
        rewrite.note_sites(self.pass_name, outcome)
        return outcome

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
        modified = self.record(self.apply_rules(model, self.rules()))
        if modified:  # what the replaced subgraphs read (constants, shape chains) is now dead
            common_passes.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified=modified)
