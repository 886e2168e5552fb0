"""A tiny ViT trained on scikit-learn's 8x8 digits: the model with a real accuracy metric.

Input ``pixels`` float32 ``(batch, 1, 8, 8)`` scaled to [0, 1]; output ``logits`` ``(batch, 10)``;
the batch dimension is dynamic in the export. Architecture: 2x2 patch embedding (a stride-2 Conv,
16 patches), a CLS token and learned position embeddings, pre-LN encoder layers (LayerNorm,
softmax attention written out as MatMul/Softmax/MatMul, erf-GELU MLP), a final LayerNorm and a
Linear head on the CLS token.

The trained weights (seed 0, test top-1 0.982) ship in ``data/digits_vit.npz`` (0.26 MB).
``train()`` reproduces them: deterministic, one thread, about 20 s of CPU; ``module()`` retrains and
saves them when the file is missing. Split: ``train_test_split(test_size=0.25, random_state=0,
stratify=y)``; ``accuracy()`` measures top-1 of any runner on it.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx

from graphopt.models import _export

__all__ = ["ARCH", "WEIGHTS", "accuracy", "build", "dataset", "example_inputs", "module", "train"]

logger = logging.getLogger(__name__)

WEIGHTS = Path(__file__).with_name("data") / "digits_vit.npz"
ARCH = {"dim": 64, "depth": 2, "heads": 4, "mlp": 128, "patch": 2}
INPUT, OUTPUT = "pixels", "logits"
DYNAMIC = {INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}
CONFIG = ("exporter", "opset")  # build()'s keys, accepted and ignored by module()/example_inputs()


def dataset() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test); x float32 (n, 1, 8, 8) in [0, 1], y int64 (fresh copies)."""
    return tuple(a.copy() for a in _split())


@functools.lru_cache(maxsize=1)
def _split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return x_tr, y_tr, x_te, y_te


def _net():
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, dim: int, heads: int, mlp: int):
            super().__init__()
            self.heads = heads
            self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

        def forward(self, x):
            b, n, c = x.shape
            q, k, v = self.qkv(self.ln1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            att = torch.softmax((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5, dim=-1)
            x = x + self.proj((att @ v).transpose(1, 2).reshape(b, n, c))
            return x + self.mlp(self.ln2(x))

    class DigitsViT(nn.Module):
        def __init__(self, dim: int, depth: int, heads: int, mlp: int, patch: int):
            super().__init__()
            self.embed = nn.Conv2d(1, dim, patch, stride=patch)
            self.cls = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos = nn.Parameter(torch.randn(1, (8 // patch) ** 2 + 1, dim) * 0.02)
            self.blocks = nn.ModuleList(Block(dim, heads, mlp) for _ in range(depth))
            self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

        def forward(self, pixels):
            x = self.embed(pixels).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
            for blk in self.blocks:
                x = blk(x)
            return self.head(self.norm(x)[:, 0])

    return DigitsViT(**ARCH)


def train(seed: int = 0, epochs: int = 40, batch: int = 128, lr: float = 5e-3, save: bool = True):
    """Train from scratch (deterministic for a given seed); save to ``WEIGHTS`` when ``save``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is faster, and makes the result machine-independent
    try:
        return _train(seed, epochs, batch, lr, save)
    finally:
        torch.set_num_threads(threads)


def _train(seed: int, epochs: int, batch: int, lr: float, save: bool):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x_tr, y_tr, _, _ = _split()
    net = _net()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * math.ceil(len(x_tr) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    net.train()
    for _ in range(epochs):
        order = rng.permutation(len(x_tr))
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            loss = F.cross_entropy(net(torch.from_numpy(x_tr[idx])), torch.from_numpy(y_tr[idx]), label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    if save:
        try:
            WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(WEIGHTS, **{k: v.numpy() for k, v in net.state_dict().items()})
        except OSError as e:  # an installed, read-only package: keep the weights in memory
            logger.warning("could not save %s: %s", WEIGHTS, e)
    return net


def module(seed: int = 0, **config):
    """The trained torch module in eval mode: the shipped weights for seed 0, else trained now."""
    import torch

    _export.check_keys(config, CONFIG, "digits_vit.module")
    if seed != 0 or not WEIGHTS.exists():
        return train(seed, save=seed == 0)
    net = _net()
    with np.load(WEIGHTS) as w:
        net.load_state_dict({k: torch.from_numpy(w[k]) for k in w.files})
    return net.eval()


def example_inputs(seed: int = 0, batch: int = 4, **config) -> dict[str, np.ndarray]:
    """``batch`` test-set images chosen with ``seed``."""
    _export.check_keys(config, CONFIG, "digits_vit.example_inputs")
    _, _, x_te, _ = _split()
    idx = np.random.default_rng(seed).choice(len(x_te), size=batch, replace=False)
    return {INPUT: x_te[np.sort(idx)]}


def build(exporter: str = "dynamo", opset: int = 18) -> onnx.ModelProto:
    """Export the trained ViT; batch is dynamic."""
    return _export.cached(
        "digits-vit",
        {"exporter": exporter, "opset": opset},
        lambda: _export.export(
            module(), example_inputs(batch=2), [OUTPUT], exporter=exporter, opset=opset, dynamic=DYNAMIC
        ),
        files=[__file__, WEIGHTS],
    )


def accuracy(run_fn: Callable[[Mapping[str, np.ndarray]], np.ndarray], split: str = "test", batch: int = 256) -> float:
    """Top-1 accuracy of ``run_fn`` ({"pixels": x} -> logits) on the train or test split."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; choose train or test")
    x_tr, y_tr, x_te, y_te = _split()
    x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    pred = np.concatenate([np.asarray(run_fn({INPUT: x[i : i + batch]})).argmax(-1) for i in range(0, len(x), batch)])
    return float((pred == y).mean())
