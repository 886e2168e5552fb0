"""graphopt tvm-llvm (no tuning) vs ONNX Runtime FP32 on conv nets, 2 threads, timed interleaved.

    python -m bench.tvm_conv [--runs 20] [--size 224]

Models (torch, legacy exporter): a DBNet-like detector (opset 11, weights as Constant nodes,
depthwise conv, BatchNorm, Hardswish, Resize nearest + bilinear, ConvTranspose, pools) at 320x320,
an SVTR-like recognizer (conv stem + local/global attention over the feature map, opset 12) at
48x320, and a ResNet-ish basic block stack at ``--size``. Prints TVM ms, ORT ms, speed ratio (above 1:
TVM faster) and the max abs difference of the outputs.
"""

from __future__ import annotations

import argparse
import io
import os

os.environ.setdefault("TVM_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnx_ir as ir  # noqa: E402

from ._timing import interleaved_medians  # noqa: E402
from .tvm import THREADS, _ort_runner, _tvm_runner  # noqa: E402
from graphopt.backends import tvm as tvm_backend  # noqa: E402


def _dbnet():
    import torch.nn as nn  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415, N812
    import torch  # noqa: PLC0415

    class DB(nn.Module):
        def __init__(s):
            super().__init__()
            s.c1 = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
            s.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16), nn.Hardswish())
            s.c2 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
            s.c3 = nn.Sequential(nn.Conv2d(32, 64, 3, 2, 1), nn.BatchNorm2d(64), nn.ReLU())
            s.l3, s.l2, s.p = nn.Conv2d(64, 32, 1), nn.Conv2d(32, 32, 1), nn.Conv2d(64, 16, 3, 1, 1)
            s.up, s.head = nn.ConvTranspose2d(16, 8, 2, 2), nn.Conv2d(8, 1, 1)
            s.pool, s.avg = nn.MaxPool2d(3, 1, 1), nn.AdaptiveAvgPool2d(1)

        def forward(s, x):
            a = s.dw(s.c1(x))
            b = s.c2(a)
            c = s.c3(b)
            p3 = s.l3(c)
            p2 = s.l2(b) + F.interpolate(p3, scale_factor=2, mode="nearest")
            u = F.interpolate(p3, size=p2.shape[2:], mode="bilinear", align_corners=False)
            f = torch.cat([p2, u], 1)
            f = s.pool(f) * torch.sigmoid(s.avg(f))
            return torch.sigmoid(s.head(s.up(s.p(f))))

    return DB(), (1, 3, 320, 320), 11


def _svtr(height: int = 48, width: int = 320):
    """An SVTR-like text recognizer: conv stem, local attention (an additive window mask) and global
    attention over the feature map's tokens, a strided merge conv, pooling, a 1x1 conv and a CTC head."""
    import torch  # noqa: PLC0415
    import torch.nn as nn  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415, N812

    def local_mask(h, w, kh=7, kw=11):
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        rows, cols = rows.flatten(), cols.flatten()
        near = ((rows[:, None] - rows[None]).abs() <= kh // 2) & ((cols[:, None] - cols[None]).abs() <= kw // 2)
        return torch.where(near, 0.0, float("-inf"))

    class Block(nn.Module):
        def __init__(s, d, heads, mask=None):
            super().__init__()
            s.n1, s.n2, s.heads = nn.LayerNorm(d), nn.LayerNorm(d), heads
            s.qkv, s.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            s.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
            s.register_buffer("mask", mask if mask is not None else torch.zeros(1))

        def forward(s, x):
            b, n, d = x.shape
            q, k, v = s.qkv(s.n1(x)).reshape(b, n, 3, s.heads, d // s.heads).permute(2, 0, 3, 1, 4)
            scores = (q @ k.transpose(-2, -1)) * (d // s.heads) ** -0.5 + s.mask
            x = x + s.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d))
            return x + s.mlp(s.n2(x))

    class SVTR(nn.Module):
        def __init__(s):
            super().__init__()
            s.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.GELU(),
                                   nn.Conv2d(32, 64, 3, 2, 1), nn.BatchNorm2d(64), nn.GELU())
            s.pos = nn.Parameter(torch.randn(1, (height // 4) * (width // 4), 64) * 0.02)
            s.local, s.glob = Block(64, 2, local_mask(height // 4, width // 4)), Block(64, 2)
            s.merge, s.norm, s.glob2 = nn.Conv2d(64, 128, 3, (2, 1), 1), nn.LayerNorm(128), Block(128, 4)
            s.pool, s.last, s.head = nn.AdaptiveAvgPool2d((1, width // 8)), nn.Conv2d(128, 192, 1), nn.Linear(192, 97)

        def forward(s, x):
            x = s.stem(x)
            b, c, h, w = x.shape
            x = s.merge(s.glob(s.local(x.flatten(2).transpose(1, 2) + s.pos)).transpose(1, 2).reshape(b, c, h, w))
            b, c, h, w = x.shape
            x = s.pool(s.glob2(s.norm(x.flatten(2).transpose(1, 2))).transpose(1, 2).reshape(b, c, h, w))
            return s.head(F.hardswish(s.last(x)).squeeze(2).transpose(1, 2)).softmax(-1)

    return SVTR(), (1, 3, height, width), 12


def _resnet(size: int):
    import torch.nn as nn  # noqa: PLC0415

    class Block(nn.Module):
        def __init__(s, c):
            super().__init__()
            s.a = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c))

        def forward(s, x):
            return (s.a(x) + x).relu()

    stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
    return nn.Sequential(stem, Block(64), Block(64)), (1, 3, size, size), 17


def _export(module, shape, opset: int) -> onnx.ModelProto:
    import torch  # noqa: PLC0415

    torch.manual_seed(0)
    module.eval()
    buffer = io.BytesIO()
    torch.onnx.export(module, (torch.randn(*shape),), buffer, opset_version=opset, dynamo=False, input_names=["x"])
    return onnx.load_from_string(buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    feeds_rng = np.random.default_rng(0)
    print(f"{'model':<18}{'tvm ms':>10}{'ort ms':>10}{'speed':>8}{'max abs':>11}")
    models = {"dbnet-like 320": _dbnet(), "svtr-like 48x320": _svtr(), f"resnet-ish {args.size}": _resnet(args.size)}
    for name, (module, shape, opset) in models.items():
        proto = _export(module, shape, opset)
        feeds = {"x": feeds_rng.standard_normal(shape).astype(np.float32)}
        artifact = tvm_backend.compile(ir.serde.deserialize_model(proto), target="tvm-llvm", threads=THREADS, example_inputs=feeds)
        ort_run, session = _ort_runner(proto, feeds)
        diff = float(np.abs(artifact.run(feeds)[artifact.outputs[0].name] - session.run(None, feeds)[0]).max())
        medians = interleaved_medians({"tvm": _tvm_runner(artifact, feeds), "ort": ort_run}, runs=args.runs)
        tvm_ms, ort_ms = medians["tvm"], medians["ort"]
        print(f"{name:<18}{tvm_ms:>10.2f}{ort_ms:>10.2f}{ort_ms / tvm_ms:>7.2f}x{diff:>11.2e}", flush=True)


if __name__ == "__main__":
    main()
