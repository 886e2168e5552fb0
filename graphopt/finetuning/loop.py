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


LR_SCALES = ("relative", "absolute")


def parameter_groups(parameters: Sequence[torch.nn.Parameter], lr: float, lr_scale: str) -> list[dict]:
    """Adam's groups. ``absolute``: one learning rate. ``relative``: each tensor's rate is ``lr``
    times the RMS of its starting values, so ``lr`` is the relative change per step whatever the
    tensor's units: an int8 latent weight counts in quantization steps (RMS ~40), a requantization
    multiplier in 2^-k units (~10^4), a scale is ~10^-2, a float weight ~0.05; one absolute rate
    would freeze some and wreck others (measured: ivit digits ViT at 3e-4 absolute, top-1 0.98 -> 0.43).
    A tensor that starts at zero (a bias) takes the median RMS of the others."""
    if lr_scale == "absolute":
        return [{"params": list(parameters), "lr": lr}]
    rms = [float(p.detach().double().pow(2).mean().sqrt()) if p.numel() else 0.0 for p in parameters]
    nonzero = sorted(r for r in rms if r > 0)
    fallback = nonzero[len(nonzero) // 2] if nonzero else 1.0
    return [{"params": [p], "lr": lr * (r if r > 0 else fallback)} for p, r in zip(parameters, rms, strict=True)]


def train(module: torch.nn.Module, examples: Sequence[Example], loss_fn: Distillation, *, steps: int, lr: float, batch_size: int,
          seed: int, stacks: bool, world: World, input_names: dict[str, str], lr_scale: str = "relative",
          progress: Callable[[Iterable], Iterable] | None = None) -> list[float]:
    """Train ``module`` in place; return the loss of every step (before its update)."""
    parameters = [p for p in module.parameters() if p.requires_grad]
    model = module
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel  # noqa: PLC0415

        # find_unused_parameters: a scale read only by QuantizeLinear leaves the autograd graph at the integer cast
        model = DistributedDataParallel(module, find_unused_parameters=True)
    optimizer = torch.optim.Adam(parameter_groups(parameters, lr, lr_scale))
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
                feeds = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in example.feeds.items()}
                outputs = model(**{input_names[k]: v for k, v in feeds.items()})
                targets = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in example.targets.items()}
                loss = loss_fn(outputs, targets, feeds) / len(micro)
                loss.backward()
            total = total + loss.detach()
        losses.append(float(world.mean(total)))
        optimizer.step()
        if hasattr(bar, "set_postfix"):  # tqdm
            bar.set_postfix(loss=f"{losses[-1]:.4g}", refresh=False)
    return losses
