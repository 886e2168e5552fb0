"""torchrun support: a process group when ``WORLD_SIZE`` > 1 (gloo: CPUs, and GPUs too).

Every rank draws the same global batches (same seed) and takes an equal, contiguous shard of each;
DistributedDataParallel averages the gradients over ranks, so each step is one process's step on
the global batch. Rank 0 validates and writes; the others only train.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator

import torch

from graphopt.errors import UsageError

__all__ = ["World", "world"]


@dataclasses.dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: list[int]) -> list[int]:
        if len(batch) % self.size:
            raise UsageError(f"batch size {len(batch)} does not split evenly over {self.size} processes: "
                             f"choose a multiple of {self.size}")
        per = len(batch) // self.size
        return batch[self.rank * per:(self.rank + 1) * per]

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` averaged over ranks (the logged loss: the global batch's)."""
        if self.size == 1:
            return value
        value = value.detach().clone()
        torch.distributed.all_reduce(value)
        return value / self.size


@contextlib.contextmanager
def world() -> Iterator[World]:
    """The process group torchrun asks for (``WORLD_SIZE``/``RANK`` in the environment), made here
    unless the caller made one, and torn down again if made here."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        yield World()
        return
    import torch.distributed as dist  # noqa: PLC0415

    made = not dist.is_initialized()
    if made:
        dist.init_process_group("gloo")
    try:
        yield World(dist.get_rank(), dist.get_world_size())
    finally:
        if made:
            dist.destroy_process_group()
