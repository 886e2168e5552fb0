"""TVM targets: the short names graphopt accepts, JSON dicts, and what each needs to build and run.

    tvm-llvm     the host CPU (LLVM, -mcpu of this machine, all its cores)
    tvm-aarch64  64-bit Arm Linux (cross-compiled with Debian's aarch64 g++; NEON + dot product)
    tvm-cuda     NVIDIA GPUs (CUDA C from TVM, compiled with nvcc; the host side is x86-64 LLVM)
    {...}        any TVM target as a JSON dict, e.g. {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from graphopt.errors import UnsupportedError, UsageError

__all__ = ["TargetSpec", "resolve"]

AARCH64_TRIPLE = "aarch64-linux-gnu"
# Cortex-A76 class (Raspberry Pi 5, Graviton 2, most 2020+ phones): NEON and the sdot/udot instructions.
AARCH64_TARGET = {"kind": "llvm", "mtriple": AARCH64_TRIPLE, "mattr": ["+neon", "+dotprod"]}
# sm_80 SASS plus compute_80 PTX: runs on Ampere and, through the driver's PTX JIT, on Hopper.
CUDA_TARGET = {"kind": "cuda", "arch": "sm_80", "max_num_threads": 1024, "thread_warp_size": 32}


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    """A resolved target: the graphopt name, the TVM target as a dict, and where it runs."""

    name: str  # "tvm-llvm", ..., or "tvm-<hash>" for a JSON dict
    config: dict
    host_config: dict | None = None

    @property
    def kind(self) -> str:
        return self.config["kind"]

    @property
    def is_cpu(self) -> bool:
        return self.kind in ("llvm", "c")

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    @property
    def triple(self) -> str:
        return self.config.get("mtriple", "") or _host_triple()

    @property
    def is_aarch64(self) -> bool:
        return self.is_cpu and self.triple.startswith("aarch64")

    @property
    def runs_on_host(self) -> bool:
        """Whether this machine can run the compiled code itself (no cross target, no GPU needed)."""
        return self.is_cpu and not self.config.get("mtriple")

    def tvm_target(self):
        import tvm  # noqa: PLC0415

        if self.host_config is not None:
            return tvm.target.Target(self.config, host=self.host_config)
        return tvm.target.Target(self.config)

    def as_dict(self) -> dict:
        return {"name": self.name, "config": self.config, "host": self.host_config}


def _host_triple() -> str:
    import tvm  # noqa: PLC0415

    return str(tvm.target.codegen.llvm_get_system_triple())


# LLVM feature -> the Linux /proc/cpuinfo flag of the same instructions: the SIMD features graphopt's
# kernels choose by (vector width, int8 instruction set).
CPUINFO_FLAGS = {
    "avx2": "avx2",
    "fma": "fma",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512vl": "avx512vl",
    "avx512vnni": "avx512_vnni",
    "avxvnni": "avx_vnni",
    "amx-int8": "amx_int8",
}


def _cpuinfo_flags() -> set[str] | None:
    """The x86 feature flags the kernel reports for this machine, or None where there is no /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        return None
    return None


def masked_host_features(cpu: str, flags: set[str] | None) -> list[str]:
    """``-feature`` for each SIMD feature that LLVM's model of ``cpu`` has but this machine does not report.

    LLVM names the host CPU from its family/model (``znver4``, ``icelake-server``) and assumes that
    model's features; a hypervisor can hide some of them (AVX-512 is often masked in VMs), and code
    built for the name alone would then stop on an illegal instruction.
    """
    if flags is None:
        return []
    import tvm  # noqa: PLC0415

    target = tvm.target.Target({"kind": "llvm", "mcpu": cpu})
    return [f"-{feature}" for feature, flag in CPUINFO_FLAGS.items()
            if flag not in flags and tvm.target.codegen.target_has_features(feature, target)]


def host_target_config() -> dict:
    import tvm  # noqa: PLC0415

    cpu = str(tvm.target.codegen.llvm_get_system_cpu())
    config = {"kind": "llvm", "mcpu": cpu, "num-cores": os.cpu_count() or 1}
    triple = str(tvm.target.codegen.llvm_get_system_triple())
    masked = masked_host_features(cpu, _cpuinfo_flags()) if triple.startswith("x86_64") else []
    return {**config, "mattr": masked} if masked else config


def resolve(target: str) -> TargetSpec:
    """The TargetSpec for a short name or a JSON dict; exit code 4 for a target TVM cannot build."""
    text = target.strip()
    if text == "tvm-llvm":
        return TargetSpec(text, host_target_config())
    if text == "tvm-aarch64":
        return TargetSpec(text, dict(AARCH64_TARGET))
    if text == "tvm-cuda":
        return TargetSpec(text, dict(CUDA_TARGET), host_target_config())
    if not text.startswith("{"):
        raise UsageError(f"unknown TVM target '{target}' (use tvm-llvm, tvm-aarch64, tvm-cuda or a JSON dict)")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"TVM target is not valid JSON ({e.msg} at column {e.colno}): {target}") from None
    if not isinstance(config, dict) or "kind" not in config:
        raise UsageError(f'a TVM target dict needs a "kind" (e.g. {{"kind": "llvm"}}), got: {target}')
    host = config.pop("host", None)
    if config["kind"] == "cuda" and host is None:
        host = host_target_config()
    spec = TargetSpec("tvm-" + hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8], config, host)
    _check_buildable(spec, target)
    return spec


def _check_buildable(spec: TargetSpec, text: str) -> None:
    import tvm  # noqa: PLC0415

    try:
        spec.tvm_target()
    except Exception as e:  # noqa: BLE001 — TVM raises several error types for a bad target
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsupportedError(f"TVM cannot build for target {text}: {first}") from None
    if spec.kind not in ("llvm", "c", "cuda"):
        raise UnsupportedError(f"target kind '{spec.kind}' is not supported by graphopt's TVM backend (llvm, c or cuda)")
    del tvm
