"""Build the C++ runner (``runner/graphopt_run.cc``) and run TVM artifacts with it.

    run_with_qemu(artifact, feeds)         aarch64 runner under qemu-aarch64 (what TvmArtifact.run uses
                                           for tvm-aarch64; natively when this machine is aarch64)
    run_with_host_runner(artifact, feeds)  the same runner built for this machine (host targets)

The runner takes its inputs as .npy files in the model's input order and writes output_<i>.npy;
the artifact's metadata gives the names back. Built runners are cached by a hash of their source,
compiler and runtime (``~/.cache/graphopt/aarch64/runners``).
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from graphopt.backends.tvm.edge.toolchain import aarch64_home, find_toolchain, host_runtime
from graphopt.errors import InternalError, ModelError, UnsupportedError

__all__ = [
    "RUNNER_SOURCE",
    "RunnerResult",
    "build_runner",
    "invoke_runner",
    "run_aarch64",
    "run_with_host_runner",
    "run_with_qemu",
]

RUNNER_SOURCE = Path(__file__).with_name("runner") / "graphopt_run.cc"
CXX_FLAGS = ["-std=c++17", "-O2"]
LINK_FLAGS = ["-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi"]  # keep libtvm_runtime: it registers the VM


@dataclasses.dataclass(frozen=True)
class RunnerResult:
    outputs: list[np.ndarray]  # in the order main returns them
    latency_ms: float | None  # median over --repeat calls, when asked for
    log: str  # the runner's stdout


def _native_aarch64() -> bool:
    return platform.machine().lower() in ("aarch64", "arm64")


def build_runner(kind: str = "aarch64") -> Path:
    """The runner executable for ``kind`` ("aarch64": cross-compiled; "host": this machine), built once."""
    if kind == "aarch64" and not _native_aarch64():
        toolchain = find_toolchain()
        cxx, include, lib_dirs = toolchain.cxx, toolchain.include_dir, [toolchain.lib_dir]
        rpath = ["$ORIGIN", "$ORIGIN/lib"]  # on a device: the libraries next to the runner
    elif kind in ("host", "aarch64"):
        cxx = shutil.which("g++") or shutil.which("c++")
        if cxx is None:
            raise UnsupportedError("building the graphopt runner needs a C++ compiler (apt-get install g++)")
        lib_dirs, include = host_runtime()
        rpath = [str(d) for d in lib_dirs]
    else:
        raise ValueError(f"unknown runner kind {kind!r} (aarch64 or host)")

    command = [cxx, *CXX_FLAGS, f"-I{include}", str(RUNNER_SOURCE), *(f"-L{d}" for d in lib_dirs), *LINK_FLAGS,
               "-Wl,-rpath," + ":".join(rpath)]
    versions = [f"{name}=={importlib.metadata.version(name)}" for name in ("apache-tvm", "apache-tvm-ffi")]  # the runtime's ABI
    key = hashlib.sha256("\0".join([RUNNER_SOURCE.read_text(), *command, *versions]).encode()).hexdigest()[:16]
    executable = aarch64_home() / "runners" / f"{kind}-{key}" / "graphopt_run"
    if executable.exists():
        return executable
    executable.parent.mkdir(parents=True, exist_ok=True)
    partial = executable.with_name(f"graphopt_run.{os.getpid()}.tmp")  # parallel test workers may race
    done = subprocess.run([*command, "-o", str(partial)], capture_output=True, text=True)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if "error" in line] or [_last_line(done.stderr)]
        raise InternalError(f"building the graphopt runner failed: {errors[0]}")
    partial.replace(executable)
    return executable


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def invoke_runner(
    command: Sequence[str],
    library: str | os.PathLike,
    inputs: Sequence[np.ndarray],
    *,
    env: Mapping[str, str] | None = None,
    threads: int = 0,
    repeat: int = 0,
    timeout: float | None = None,
) -> RunnerResult:
    """Run ``command`` (the runner, possibly behind qemu) on ``library`` with ``inputs`` in a scratch folder."""
    with tempfile.TemporaryDirectory(prefix="graphopt-run-") as work:
        paths = []
        for i, array in enumerate(inputs):
            paths.append(os.path.join(work, f"input_{i}.npy"))
            np.save(paths[-1], np.asarray(array, order="C"))  # ascontiguousarray would make 0-d arrays 1-d
        options = ["-o", work, *(["--threads", str(threads)] if threads else []), *(["--repeat", str(repeat)] if repeat else [])]
        try:
            done = subprocess.run([*command, str(library), *options, *paths], capture_output=True, text=True,
                                  env={**os.environ, **(env or {})}, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise InternalError(f"graphopt_run did not finish within {timeout:.0f} s ({library})") from None
        if done.returncode != 0:
            raise InternalError(f"graphopt_run failed (exit {done.returncode}) on {library}: {_last_line(done.stderr)}")
        count = len(re.findall(r"^output_\d+ ", done.stdout, flags=re.MULTILINE))
        outputs = [np.load(os.path.join(work, f"output_{i}.npy")) for i in range(count)]
    latency = re.search(r"latency_ms median=([0-9.]+)", done.stdout)
    return RunnerResult(outputs, float(latency.group(1)) if latency else None, done.stdout)


def _ordered_inputs(artifact, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    missing = [i.name for i in artifact.inputs if i.name not in feeds]
    if missing:
        raise ModelError(f"missing input(s) {missing}; the compiled model takes {[i.name for i in artifact.inputs]}")
    arrays = []
    for info in artifact.inputs:
        array = np.asarray(feeds[info.name], dtype=info.dtype, order="C")
        if tuple(array.shape) != tuple(info.shape):
            raise ModelError(f"input '{info.name}' has shape {array.shape}; the model was compiled for {info.shape}")
        arrays.append(array)
    return arrays


def _saved_library(artifact) -> str:
    """The artifact's exported library, saving it to a temporary folder when it has none yet."""
    if artifact.library_path is None or not os.path.exists(artifact.library_path):
        folder = tempfile.mkdtemp(prefix="graphopt-artifact-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        artifact.save(folder)
    return artifact.library_path


def _named(artifact, result: RunnerResult) -> dict[str, np.ndarray]:
    if len(result.outputs) != len(artifact.outputs):
        raise InternalError(f"the runner returned {len(result.outputs)} outputs; the artifact declares {len(artifact.outputs)}")
    return {info.name: value for info, value in zip(artifact.outputs, result.outputs)}


def run_with_qemu(artifact, feeds: Mapping[str, np.ndarray], *, timeout: float | None = None) -> dict[str, np.ndarray]:
    """Run an aarch64 ``TvmArtifact`` on ``feeds`` under qemu-aarch64; outputs by name."""
    return _named(artifact, run_aarch64(artifact, feeds, timeout=timeout))


def run_aarch64(artifact, feeds: Mapping[str, np.ndarray], *, repeat: int = 0, timeout: float | None = None) -> RunnerResult:
    """Like ``run_with_qemu`` but returns the raw ``RunnerResult`` (with ``repeat``: the median latency
    under qemu, which says nothing about the device's speed)."""
    inputs = _ordered_inputs(artifact, feeds)
    library = _saved_library(artifact)
    runner = build_runner("aarch64")
    if _native_aarch64():
        return invoke_runner([str(runner)], library, inputs, threads=artifact.threads, repeat=repeat, timeout=timeout)
    toolchain = find_toolchain()
    command = [toolchain.qemu, "-L", str(toolchain.sysroot), str(runner)]
    env = {"LD_LIBRARY_PATH": str(toolchain.lib_dir)}
    return invoke_runner(command, library, inputs, env=env, threads=artifact.threads, repeat=repeat, timeout=timeout)


def run_with_host_runner(artifact, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a host-target ``TvmArtifact`` with the C++ runner built for this machine (no Python VM)."""
    if not artifact.spec.runs_on_host:
        raise UnsupportedError(f"{artifact.target} code does not run on this machine; use run_with_qemu")
    runner = build_runner("host")
    inputs = _ordered_inputs(artifact, feeds)
    return _named(artifact, invoke_runner([str(runner)], _saved_library(artifact), inputs, threads=artifact.threads))
