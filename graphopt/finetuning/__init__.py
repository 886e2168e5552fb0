"""Fine-tuning a rewritten model by distillation from the original (issue 18, item 2; docs/finetune.md).

``graphopt.finetune`` is the function (``run.finetune``); this package is not named ``finetune`` so that
importing it never shadows the function on the ``graphopt`` module. Importing the package loads
nothing heavy (``command`` is the CLI's, which starts on the standard library alone).

    run.py           graphopt.finetune(): load, teacher targets, train, write back, validate; FinetuneResult
    examples.py      data cut into rows, held-out split, seeded global batches
    loss.py          the distillation losses (variance-normalized MSE, softmax KL)
    loop.py          the training loop (Adam; DDP under torchrun)
    distributed.py   the torchrun process group and each rank's shard
    write_back.py    trained parameters -> initializers in their own element types
    plot.py          loss.png
    command.py       `graphopt finetune`
"""

from __future__ import annotations

__all__ = ["FinetuneResult", "finetune"]


def __getattr__(name: str):
    if name in __all__:
        from graphopt.finetuning import run  # noqa: PLC0415

        return getattr(run, name)
    raise AttributeError(f"module 'graphopt.finetuning' has no attribute {name!r}")
