"""The machine a run measured on: CPU model, the ISA features that change which kernels run, threads,
and the versions of graphopt and the libraries that computed the numbers (for ``report.json``)."""

from __future__ import annotations

import functools
import os
import platform
from importlib import metadata

__all__ = ["describe_host", "library_versions"]

# Features that decide kernels and speed ratios (x86: int8 paths; Arm: dot product, i8mm).
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "sve", "sve2")
LIBRARIES = ("onnx", "onnxruntime", "onnx-ir", "onnxscript", "numpy", "apache-tvm", "apache-tvm-ffi", "torch", "transformers")


@functools.cache
def describe_host() -> dict:
    """CPU model, architecture, the ISA features in ``ISA_FLAGS`` it has, and its logical cores."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware") and model in ("unknown", "", platform.machine()):
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"cpu": model, "machine": platform.machine(), "isa": [f for f in ISA_FLAGS if f in flags], "cores": os.cpu_count()}


@functools.cache
def library_versions() -> dict[str, str]:
    """Installed versions of graphopt and the libraries behind its numbers (read without importing them)."""
    versions = {}
    for name in ("graphopt", *LIBRARIES):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
