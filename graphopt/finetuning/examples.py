"""Training examples: the data cut into rows, split into train and held-out, paired with the
teacher's outputs, and dealt into global batches.

A sample (one feed dict, as ``graphopt.data.load_samples`` gives) is cut along axis 0 into rows
when every input and every teacher output has the same leading size: an ``.npz`` of 1,000 images
(or 1,000 token windows) is 1,000 examples, whatever way it was stacked. Otherwise the sample is
one example. Rows are concatenated back into a batch when the student takes any leading size
(axis 0 dynamic on every input) and the rows agree in shape; otherwise each example of a batch is
its own forward pass (gradients accumulate: the same mean).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence

import numpy as np
import onnx_ir as ir

from graphopt.errors import UsageError

__all__ = ["Example", "batch_order", "cut_rows", "split_held_out", "stackable", "stack"]


@dataclasses.dataclass(frozen=True)
class Example:
    feeds: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]  # the teacher's outputs on these feeds


def cut_rows(feeds: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> list[Example]:
    leading = {np.shape(a)[0] if np.ndim(a) else None for a in (*feeds.values(), *targets.values())}
    if len(leading) != 1 or None in leading or leading == {0}:
        return [Example(feeds, targets)]
    (n,) = leading
    return [Example({k: v[i:i + 1] for k, v in feeds.items()}, {k: v[i:i + 1] for k, v in targets.items()}) for i in range(n)]


def split_held_out(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A seeded shuffle, then the first ``fraction`` (at least one example) held out."""
    if not 0 < fraction < 1:
        raise UsageError(f"holdout must be a fraction between 0 and 1, got {fraction}")
    if len(examples) < 2:
        raise UsageError(f"the data holds {len(examples)} example(s): fine-tuning needs at least 2 (some to train on, one held out), "
                         "or held-out data of its own (--eval)")
    order = np.random.default_rng(seed).permutation(len(examples))
    held = max(1, math.floor(fraction * len(examples)))
    return [examples[i] for i in order[held:]], [examples[i] for i in order[:held]]


def stackable(student: ir.Model, examples: Sequence[Example]) -> bool:
    """Whether rows concatenate into one forward: axis 0 of every input dynamic, row shapes equal."""
    for value in student.graph.inputs:
        if value.shape is None or not len(value.shape) or isinstance(value.shape[0], int):
            return False
    first = examples[0]
    shapes = {k: np.shape(v) for k, v in {**first.feeds, **first.targets}.items()}
    return all(all(np.shape(v) == shapes[k] for k, v in {**e.feeds, **e.targets}.items()) for e in examples)


def stack(examples: Sequence[Example]) -> Example:
    first = examples[0]
    return Example({k: np.concatenate([e.feeds[k] for e in examples]) for k in first.feeds},
                   {k: np.concatenate([e.targets[k] for e in examples]) for k in first.targets})


def batch_order(count: int, batch_size: int, steps: int, seed: int) -> Iterator[list[int]]:
    """Indices of each step's global batch: seeded permutations of the examples, one after the
    other (an epoch ends mid-batch, the next permutation fills it), the same on every rank."""
    rng = np.random.default_rng(seed)
    pending: list[int] = []
    for _ in range(steps):
        while len(pending) < batch_size:
            pending.extend(int(i) for i in rng.permutation(count))
        yield pending[:batch_size]
        pending = pending[batch_size:]
