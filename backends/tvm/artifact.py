"""The runnable result of a TVM target: a compiled library plus the metadata to call it again.

Saved as ``<folder>/model.so`` (``export_library``; cross-compiled with aarch64 g++ for Arm targets,
linked with nvcc's help for CUDA), ``<folder>/metadata.json`` (target, input/output names, dtypes and
shapes) and, for CUDA, ``<folder>/kernels.cu`` (the generated CUDA source, for review and reuse).
``TvmArtifact.load(folder)`` gives back an artifact that runs (on this machine when the target is
the host, through qemu-aarch64 for aarch64, on a GPU for CUDA).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from collections.abc import Mapping

import numpy as np

from graphopt.backends.tvm._log import without_scope_log
from graphopt.backends.tvm.targets import TargetSpec
from graphopt.data import feed_dict
from graphopt.errors import ModelError, UnsupportedError

__all__ = ["TensorInfo", "TvmArtifact"]

LIBRARY = "model.so"
METADATA = "metadata.json"
CUDA_SOURCE = "kernels.cu"
TUNING = "tuning"  # MetaSchedule database folder, reusable with tune_database=


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclasses.dataclass
class TvmArtifact:
    spec: TargetSpec
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    executable: object = None  # tvm.relax.VMExecutable (None when loaded for a foreign target)
    library_path: str | None = None  # where the exported library lives, once saved or loaded
    threads: int = 2
    details: dict = dataclasses.field(default_factory=dict)  # compile time, tuning, ...
    tuning_dir: str | None = None  # MetaSchedule records this build applied (saved as <folder>/tuning)
    kernel_rules: dict = dataclasses.field(default_factory=dict)  # kernel -> schedule rule (this build only)
    _vm: object = dataclasses.field(default=None, repr=False)

    @property
    def target(self) -> str:
        return self.spec.name

    # ---- running -------------------------------------------------------------------------
    def _device(self):
        import tvm  # noqa: PLC0415

        if self.spec.is_cuda:
            device = tvm.cuda(0)
            if not device.exist:
                raise UnsupportedError("target tvm-cuda needs an NVIDIA GPU to run; this machine has none (compiling works)")
            from graphopt.backends.tvm.cuda.nvcc import prepare_jit  # noqa: PLC0415

            prepare_jit()
            return device
        return tvm.cpu(0)

    @property
    def vm(self):
        if self._vm is None:
            import tvm  # noqa: PLC0415

            if not (self.spec.runs_on_host or self.spec.is_cuda):
                raise UnsupportedError(f"{self.target} code cannot run in this process; use run() (qemu) or copy it to the device")
            _set_threads(self.threads)
            device = self._device()  # first: loading a CUDA library needs the CUDA runtime
            with without_scope_log():
                executable = self.executable if self.executable is not None else tvm.runtime.load_module(self.library_path)
                self._vm = tvm.relax.VirtualMachine(executable, device)
        return self._vm

    def _arguments(self, feeds: Mapping[str, np.ndarray]) -> list:
        import tvm  # noqa: PLC0415

        missing = [i.name for i in self.inputs if i.name not in feeds]
        if missing:
            raise ModelError(f"missing input(s) {missing}; the compiled model takes {[i.name for i in self.inputs]}")
        device = self._device()
        arguments = []
        for info in self.inputs:
            array = np.asarray(feeds[info.name], dtype=info.dtype, order="C")  # keeps 0-d inputs 0-d
            if tuple(array.shape) != tuple(info.shape):
                raise ModelError(f"input '{info.name}' has shape {array.shape}; the model was compiled for {info.shape}")
            arguments.append(tvm.runtime.tensor(array, device))
        return arguments

    def _collect(self, result) -> dict[str, np.ndarray]:
        values = list(result) if not hasattr(result, "numpy") else [result]
        return {info.name: value.numpy() for info, value in zip(self.outputs, values)}

    def run(self, feeds: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        """Run once: ``feeds`` is a dict of input name -> array (a one-input model also takes the bare array)."""
        feeds = feed_dict(feeds, [i.name for i in self.inputs], "TvmArtifact.run()")
        if self.spec.is_aarch64 and not self.spec.runs_on_host:
            from graphopt.backends.tvm.edge import run_with_qemu  # noqa: PLC0415

            return run_with_qemu(self, feeds)
        return self._collect(self.vm["main"](*self._arguments(feeds)))

    @property
    def can_time(self) -> bool:
        """Whether latency measured here means anything: host code, or CUDA with a GPU present (not qemu)."""
        if self.spec.runs_on_host:
            return True
        if self.spec.is_cuda:
            import tvm  # noqa: PLC0415

            return bool(tvm.cuda(0).exist)
        return False

    def time(self, feeds: Mapping[str, np.ndarray], runs: int = 20, warmup: int = 3):
        """Median latency of ``main`` on this machine (host or GPU targets)."""
        from graphopt.backends.ort import Timing  # noqa: PLC0415

        arguments = self._arguments(feeds)
        main, device = self.vm["main"], self._device()
        for _ in range(warmup):
            main(*arguments)
        device.sync()
        samples = []
        for _ in range(max(runs, 1)):
            start = time.perf_counter()
            main(*arguments)
            device.sync()
            samples.append((time.perf_counter() - start) * 1e3)
        deciles = statistics.quantiles(samples, n=10) if len(samples) >= 2 else [samples[0]] * 9
        return Timing(statistics.median(samples), deciles[0], deciles[-1], len(samples), self.threads)

    # ---- saving and loading --------------------------------------------------------------
    def save(self, folder: str) -> list[str]:
        from graphopt.backends.tvm.export import export_library  # noqa: PLC0415

        os.makedirs(folder, exist_ok=True)
        written = export_library(self, folder)
        self.library_path = os.path.join(folder, LIBRARY)
        if self.tuning_dir is not None and os.path.abspath(self.tuning_dir) != os.path.abspath(os.path.join(folder, TUNING)):
            from graphopt.backends.tvm.tune import copy_database  # noqa: PLC0415

            written += copy_database(self.tuning_dir, os.path.join(folder, TUNING))
        path = os.path.join(folder, METADATA)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.metadata(), f, indent=2, sort_keys=True)
        return [*written, path]

    def metadata(self) -> dict:
        return {
            "format": "graphopt-tvm/1",
            "target": self.spec.as_dict(),
            "inputs": [dataclasses.asdict(i) for i in self.inputs],
            "outputs": [dataclasses.asdict(o) for o in self.outputs],
            "library": LIBRARY,
            "details": self.details,
        }

    @classmethod
    def load(cls, folder: str, threads: int = 2) -> TvmArtifact:
        path = os.path.join(folder, METADATA)
        try:
            with open(path, encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ModelError(f"not a graphopt TVM artifact folder ({path}: {e})") from None
        target = meta["target"]
        spec = TargetSpec(target["name"], target["config"], target.get("host"))

        def infos(key):
            return [TensorInfo(i["name"], i["dtype"], tuple(i["shape"])) for i in meta[key]]

        tuning = os.path.join(folder, TUNING)
        return cls(spec, infos("inputs"), infos("outputs"), library_path=os.path.join(folder, meta["library"]),
                   threads=threads, details=meta.get("details", {}), tuning_dir=tuning if os.path.isdir(tuning) else None)


def _set_threads(threads: int) -> None:
    import tvm  # noqa: PLC0415

    configure = tvm.get_global_func("runtime.config_threadpool", allow_missing=True)
    if configure is not None:
        configure(0, int(threads))  # 0: default affinity; the pool is resized to ``threads`` workers
