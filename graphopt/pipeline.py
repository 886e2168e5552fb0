"""Pipeline strings: parse, expand presets, run passes, record what each pass did.

Grammar (BRIEF §3)::

    pipeline := step ("," step)*
    step     := NAME [ "(" [ key "=" value ("," key "=" value)* ] ")" ]
    value    := a bare word (no , ( ) =) | a quoted string | list items joined with "|"

``canonicalize,ivit,cats(sparsity=0.5)`` is a pipeline. Presets expand to their own pipeline.
``str(Pipeline)`` prints the normalized string, which parses back to the same pipeline.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable

import onnx_ir as ir

from graphopt import registry
from graphopt.shapes import infer_shapes
from graphopt.errors import GraphoptError, PassFailedError, UsageError

__all__ = ["PassRecord", "Pipeline", "Step", "parse_pipeline", "run_pipeline"]

logger = logging.getLogger(__name__)

PROVENANCE_PASS = "pkg.graphopt.pass"
PROVENANCE_OPTIONS = "pkg.graphopt.options"
_MAX_FIXED_POINT_STEPS = 8
_SEEN = "graphopt.existed_before_pass"


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    options: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        if not self.options:
            return self.name
        return f"{self.name}({','.join(f'{k}={_quote(v)}' for k, v in self.options)})"


@dataclasses.dataclass(frozen=True)
class Pipeline:
    steps: tuple[Step, ...]

    def __str__(self) -> str:
        return ",".join(str(s) for s in self.steps)

    def expand(self) -> list[tuple[registry.PassSpec, object]]:
        """Resolve presets recursively; build each pass's options (validating every key)."""
        resolved = []
        for step in self.steps:
            entry = registry.get_pass(step.name)
            if isinstance(entry, registry.Preset):
                if step.options:
                    raise UsageError(f"preset '{step.name}' takes no options; give them to its passes ({entry.pipeline})")
                resolved.extend(parse_pipeline(entry.pipeline).expand())
            else:
                resolved.append((entry, entry.make_options(dict(step.options))))
        return resolved


@dataclasses.dataclass
class PassRecord:
    """What one pass did; becomes a row of the report."""

    name: str
    options: dict
    modified: bool
    seconds: float
    rewrites: dict[str, int]
    declines: list[str]
    notes: list[str]
    nodes_before: int
    nodes_after: int


def _quote(value: str) -> str:
    return value if value and not any(c in value for c in ",()=\"' ") else json.dumps(value)


def parse_pipeline(text: str | Pipeline) -> Pipeline:
    """Parse a pipeline string; a syntax error is a UsageError that points at the column."""
    if isinstance(text, Pipeline):
        return text
    if not isinstance(text, str):
        text = ",".join(text)
    parser = _Parser(text)
    steps = parser.parse()
    if not steps:
        raise UsageError("empty pipeline: name at least one pass, e.g. --passes canonicalize")
    return Pipeline(tuple(steps))


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, what: str) -> UsageError:
        return UsageError(f"bad pipeline {self.text!r} at column {self.pos + 1}: {what}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_space()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def word(self, what: str) -> str:
        self.skip_space()
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in ",()=\"'" and not self.text[self.pos].isspace():
            self.pos += 1
        if start == self.pos:
            raise self.error(f"expected {what}")
        return self.text[start:self.pos]

    def value(self) -> str:
        quote = self.peek()
        if quote in "\"'" and quote:
            end = self.text.find(quote, self.pos + 1)
            if end < 0:
                raise self.error("unterminated quoted value")
            value = self.text[self.pos + 1:end]
            self.pos = end + 1
            return value
        return self.word("an option value")

    def parse(self) -> list[Step]:
        steps = []
        while self.peek():
            name = self.word("a pass name")
            options: list[tuple[str, str]] = []
            if self.peek() == "(":
                self.pos += 1
                while self.peek() != ")":
                    if not self.peek():
                        raise self.error("missing ')'")
                    key = self.word("an option name")
                    if self.peek() != "=":
                        raise self.error(f"expected '=' after option '{key}'")
                    self.pos += 1
                    options.append((key, self.value()))
                    if self.peek() == ",":
                        self.pos += 1
                self.pos += 1
            steps.append(Step(name, tuple(options)))
            if self.peek() == ",":
                self.pos += 1
            elif self.peek():
                raise self.error(f"unexpected {self.peek()!r}")
        return steps


def _all_nodes(model: ir.Model) -> list[ir.Node]:
    nodes = list(ir.traversal.RecursiveGraphIterator(model.graph))
    for function in model.functions.values():
        nodes.extend(ir.traversal.RecursiveGraphIterator(function))
    return nodes


def _options_dict(options: object) -> dict:
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}


def run_pipeline(
    model: ir.Model,
    pipeline: str | Pipeline,
    *,
    after_each: Callable[[str, ir.Model], None] | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
    samples: list[dict] | None = None,
) -> list[PassRecord]:
    """Run ``pipeline`` on ``model`` in place; return one record per pass.

    A pass that raises is reported as ``PassFailedError`` naming the pass and the passes before it.
    ``after_each(name, model)`` runs after every pass (used for per-pass validation).
    ``samples`` (feed dicts) are what calibrating passes compute their statistics on; without
    them such a pass calibrates on seeded synthetic inputs and says so in its notes.
    """
    resolved = parse_pipeline(pipeline).expand()
    records: list[PassRecord] = []
    infer_shapes(model)
    for spec, options in progress(resolved) if progress else resolved:
        records.append(_run_step(model, spec, options, samples, ran=[r.name for r in records]))
        if after_each is not None:
            after_each(spec.name, model)
    return records


def _run_step(model: ir.Model, spec: registry.PassSpec, options: object, samples: list[dict] | None, ran: list[str]) -> PassRecord:
    """Run one pass in place: stamp what it made with its name, and return its record."""
    before_nodes = _all_nodes(model)
    for node in before_nodes:  # meta survives node clones, so copied nodes don't count as new
        node.meta[_SEEN] = True
    the_pass = spec.cls(options)
    if getattr(the_pass, "needs_calibration", False):
        the_pass.samples = samples or _synthetic_samples(model, the_pass)
    start = time.perf_counter()
    try:
        modified = _run_one(the_pass, model, spec.fixed_point)
    except GraphoptError:
        raise
    except Exception as e:
        raise PassFailedError(f"pass '{spec.name}' failed after {ran}: {type(e).__name__}: {e}") from e
    if modified:
        infer_shapes(model)  # the next pass's checks read shapes and dtypes
    seconds = time.perf_counter() - start
    after_nodes = _all_nodes(model)
    if not getattr(the_pass, "rebuilds_nodes", False):  # a pass that only rebuilds the nodes (opset-upgrade) stamps none
        _stamp_provenance(after_nodes, spec.name, json.dumps(_options_dict(options), sort_keys=True, default=str))
    record = PassRecord(
        name=spec.name,
        options=_options_dict(options),
        modified=modified,
        seconds=seconds,
        rewrites=dict(the_pass.rewrites) if hasattr(the_pass, "rewrites") else {},
        declines=[str(d) for d in getattr(the_pass, "declines", [])],
        notes=list(getattr(the_pass, "notes", [])),
        nodes_before=len(before_nodes),
        nodes_after=len(after_nodes),
    )
    logger.info("%s: modified=%s rewrites=%s (%.2fs)", spec.name, modified, record.rewrites, seconds)
    return record


def _stamp_provenance(nodes: list[ir.Node], pass_name: str, options_tag: str) -> None:
    """A node this pass made carries its name, even where the rewriter copied the matched nodes'
    metadata onto it."""
    for node in nodes:
        if not node.meta.get(_SEEN):
            node.metadata_props[PROVENANCE_PASS] = pass_name
            node.metadata_props[PROVENANCE_OPTIONS] = options_tag


def _synthetic_samples(model: ir.Model, the_pass) -> list[dict]:
    from graphopt import data  # noqa: PLC0415

    the_pass.notes.append("calibrated on synthetic random inputs (no calibration data given): accuracy will suffer")
    logger.warning("pass %s calibrates on synthetic inputs; pass calibration data", the_pass.pass_name)
    return [data.synthetic_inputs(model, seed) for seed in range(4)]


def _run_one(the_pass, model: ir.Model, fixed_point: bool) -> bool:
    """Run the pass (until nothing changes, for a fixed-point pass); its record sums every run."""
    modified = False
    rewrites, declines, notes = collections.Counter(), [], list(getattr(the_pass, "notes", []))  # notes the pipeline set
    for _ in range(_MAX_FIXED_POINT_STEPS if fixed_point else 1):
        result = the_pass(model)
        rewrites.update(getattr(the_pass, "rewrites", {}))
        declines += getattr(the_pass, "declines", [])
        notes += getattr(the_pass, "notes", [])
        if result.model is not model:
            raise PassFailedError(f"pass '{the_pass.pass_name}' must rewrite the model in place")
        if not result.modified:
            break
        modified = True
    if hasattr(the_pass, "rewrites"):
        the_pass.rewrites, the_pass.declines, the_pass.notes = rewrites, declines, notes
    return modified
