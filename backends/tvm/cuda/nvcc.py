"""Compile TVM's generated CUDA C with nvcc, here on the build machine, GPU or not.

TVM 0.27 on a machine without a CUDA driver keeps the kernels as CUDA *source* in the library and
JIT-compiles them when the library is loaded on a GPU (through ``tvm_callback_cuda_compile``). So a
kernel nvcc rejects would surface only on the device. ``compile_source`` runs nvcc on the source
now (a fatbin for the target's arch: SASS plus PTX), which is how the tests and the artifact check
that every generated kernel really compiles.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from graphopt.errors import UnsupportedError

__all__ = ["NVCC", "compile_source", "nvcc_path", "prepare_jit"]

NVCC = "nvcc"
DEFAULT_NVCC = "/usr/local/bin/nvcc"


def nvcc_path() -> str | None:
    """The nvcc to use: ``$GRAPHOPT_NVCC``, nvcc on PATH, then /usr/local/bin/nvcc (None: not installed)."""
    for candidate in (os.environ.get("GRAPHOPT_NVCC"), shutil.which(NVCC), DEFAULT_NVCC):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def compile_source(source: str, arch: str = "sm_80", timeout_s: float = 1800) -> bytes:
    """The fatbin (``arch`` SASS + its PTX) nvcc makes of ``source``; UnsupportedError with nvcc's message on failure."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise UnsupportedError("compiling CUDA kernels needs nvcc (install the CUDA toolkit or set GRAPHOPT_NVCC)")
    number = arch.removeprefix("sm_")
    with tempfile.TemporaryDirectory(prefix="graphopt-nvcc-") as folder:
        source_path, output_path = os.path.join(folder, "kernels.cu"), os.path.join(folder, "kernels.fatbin")
        with open(source_path, "w", encoding="utf-8") as f:
            f.write(source)
        command = [nvcc, "--fatbin", "-O3", f"-gencode=arch=compute_{number},code=[sm_{number},compute_{number}]",
                   "-o", output_path, source_path]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        if result.returncode != 0:
            message = (result.stderr or result.stdout).strip().splitlines()
            raise UnsupportedError(f"nvcc failed on the generated kernels: {' / '.join(message[:3])}")
        with open(output_path, "rb") as f:
            return f.read()


def prepare_jit() -> None:
    """Make TVM able to JIT-compile the kernels a CUDA library carries as source (on a GPU machine).

    TVM's ``tvm_callback_cuda_compile`` is registered by importing ``tvm.support.nvcc`` and uses
    NVRTC (the ``cuda-bindings`` package) unless ``TVM_CUDA_COMPILE_MODE=nvcc``; without that
    package, fall back to the nvcc found by ``nvcc_path`` rather than fail on the device.
    """
    import importlib.util  # noqa: PLC0415

    import tvm.support.nvcc  # noqa: F401, PLC0415 — registers tvm_callback_cuda_compile

    if importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None:
        os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")
        nvcc = nvcc_path()
        if nvcc and shutil.which(NVCC) is None:
            os.environ["PATH"] = os.path.dirname(nvcc) + os.pathsep + os.environ.get("PATH", "")
