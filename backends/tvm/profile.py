"""Per-kernel profile of a compiled model: where the time goes, and which schedule rule each kernel got.

The Relax VM calls an instrument before and after every call instruction (a compiled kernel or a
runtime builtin such as ``vm.builtin.alloc_tensor``); timing between the two, over a few runs,
gives each kernel's share of a run. Kernels that fell to the ``Fallback`` rule, or that no rule
scheduled, are the ones to look at first: ``fallback_share`` sums their time.

    profile = kernel_profile(artifact, feeds, runs=5)
    profile.rows[0]  # KernelTime(kernel='fused_conv2d_add_relu', calls=1, ms=1.9, share=0.21, rule='WindowReduction')
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Mapping

import numpy as np

from graphopt.backends.tvm.cpu.pipeline import UNSCHEDULED

__all__ = ["FALLBACK_RULES", "KernelProfile", "KernelTime", "kernel_profile"]

FALLBACK_RULES = ("Fallback", UNSCHEDULED)
RUNTIME = "runtime"  # VM builtins: allocation, shape checks


@dataclasses.dataclass(frozen=True)
class KernelTime:
    kernel: str
    calls: int  # per run
    ms: float  # per run, all calls
    share: float  # of the instrumented run time
    rule: str


@dataclasses.dataclass(frozen=True)
class KernelProfile:
    rows: list[KernelTime]  # slowest first
    total_ms: float  # per run, instrumented (slightly above the uninstrumented latency)
    runs: int

    @property
    def fallback_share(self) -> float:
        return sum(row.share for row in self.rows if row.rule in FALLBACK_RULES)

    def as_dict(self, top: int = 20) -> dict:
        fallback = [dataclasses.asdict(r) for r in self.rows if r.rule in FALLBACK_RULES]
        return {"total_ms": round(self.total_ms, 4), "runs": self.runs, "fallback_share": round(self.fallback_share, 4),
                "kernels": [_rounded(dataclasses.asdict(r)) for r in self.rows[:top]],
                "fallback_kernels": [_rounded(r) for r in fallback]}


def _rounded(row: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}


def kernel_profile(artifact, feeds: Mapping[str, np.ndarray], runs: int = 5) -> KernelProfile:
    """Time every VM call of ``artifact`` (a host or GPU ``TvmArtifact``) over ``runs`` runs."""
    arguments = artifact._arguments(feeds)
    device = artifact._device()
    vm = _fresh_vm(artifact, device)
    main = vm["main"]
    main(*arguments)  # warm-up, uninstrumented
    totals: dict[str, float] = collections.defaultdict(float)
    calls: dict[str, int] = collections.defaultdict(int)
    started: dict[str, float] = {}

    def instrument(_func, symbol, before_run, _ret, *_args):
        if before_run:
            started[symbol] = time.perf_counter()
        else:
            device.sync()
            totals[symbol] += time.perf_counter() - started.pop(symbol)
            calls[symbol] += 1
        return 0  # VMInstrumentReturnKind.NO_OP: go on

    vm.set_instrument(instrument)
    runs = max(runs, 1)
    for _ in range(runs):
        main(*arguments)
    device.sync()
    total = sum(totals.values())
    rows = [
        KernelTime(name, calls[name] // runs, seconds * 1e3 / runs, seconds / total if total else 0.0, _rule(artifact, name))
        for name, seconds in sorted(totals.items(), key=lambda item: -item[1])
    ]
    return KernelProfile(rows, total * 1e3 / runs, runs)


def _fresh_vm(artifact, device):
    """A VM of its own: the instrument must not slow the artifact's VM that latency is timed on."""
    import tvm  # noqa: PLC0415

    executable = artifact.executable if artifact.executable is not None else tvm.runtime.load_module(artifact.library_path)
    artifact.vm  # noqa: B018 — sets the thread count the artifact runs with
    return tvm.relax.VirtualMachine(executable, device)


def _rule(artifact, name: str) -> str:
    if name.startswith("vm."):
        return RUNTIME
    return artifact.kernel_rules.get(name, "")
