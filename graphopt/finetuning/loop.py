"""The training loop: Adam on the chosen parameters, one global batch per step, seeded.

Each step draws its global batch (``examples.batch_order``), takes this rank's shard, and runs it
as one forward pass when the rows stack, else one pass per example with gradients accumulated (in
``no_sync`` under DDP, so the ranks exchange gradients once per step). The loss logged is the global
batch's mean, the same number whatever the world size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from graphopt.finetuning.distributed import World
from graphopt.finetuning.examples import Example, batch_order, stack
from graphopt.finetuning.loss import Distillation

__all__ = ["train"]


def train(module: torch.nn.Module, examples: Sequence[Example], loss_fn: Distillation, *, steps: int, lr: float, batch_size: int,
          seed: int, stacks: bool, world: World, input_names: dict[str, str],
          progress: Callable[[Iterable], Iterable] | None = None) -> list[float]:
    """Train ``module`` in place; return the loss of every step (before its update)."""
    parameters = [p for p in module.parameters() if p.requires_grad]
    model = module
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel  # noqa: PLC0415

        # find_unused_parameters: a scale read only by QuantizeLinear leaves the autograd graph at the integer cast
        model = DistributedDataParallel(module, find_unused_parameters=True)
    optimizer = torch.optim.Adam(parameters, lr=lr)
    module.train()
    losses = []
    order = batch_order(len(examples), batch_size, steps, seed)
    bar = progress(range(steps)) if progress else range(steps)
    for _ in bar:
        shard = [examples[i] for i in world.shard(next(order))]
        micro = [stack(shard)] if stacks else shard
        optimizer.zero_grad(set_to_none=True)
        total = torch.zeros(())
        for index, example in enumerate(micro):
            last = index == len(micro) - 1
            sync = contextlib.nullcontext() if last or world.size == 1 else model.no_sync()
            with sync:
                outputs = model(**{input_names[k]: torch.from_numpy(np.ascontiguousarray(v)) for k, v in example.feeds.items()})
                targets = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in example.targets.items()}
                loss = loss_fn(outputs, targets) / len(micro)
                loss.backward()
            total = total + loss.detach()
        losses.append(float(world.mean(total)))
        optimizer.step()
        if hasattr(bar, "set_postfix"):  # tqdm
            bar.set_postfix(loss=f"{losses[-1]:.4g}", refresh=False)
    return losses
