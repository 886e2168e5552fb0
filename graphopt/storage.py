"""Atomic writes: a failed run never leaves a partial model or report in the output folder.

Everything is written to a temporary name in the destination folder and renamed into place
only once complete. Models whose weights exceed ``EXTERNAL_DATA_THRESHOLD`` are saved with their
tensors in ``<name>.data`` next to the ``.onnx`` file (protobuf cannot hold more than 2 GB).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

import onnx_ir as ir

from graphopt import ops
from graphopt.errors import UsageError

__all__ = ["EXTERNAL_DATA_THRESHOLD", "atomic_write_text", "ensure_writable_dir", "save_model", "staged_dir"]

EXTERNAL_DATA_THRESHOLD = 1 << 30  # bytes of initializers above which weights go to a .data file


def ensure_writable_dir(path: str | os.PathLike) -> str:
    """Create ``path`` if needed; fail with a UsageError when it cannot be written."""
    path = os.fspath(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create output folder {path}: {e.strerror or e}; choose another -o") from e
    if not os.path.isdir(path):
        raise UsageError(f"output path {path} exists and is not a folder; choose another -o")
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".graphopt-probe-"):
            pass
    except OSError as e:
        raise UsageError(f"output folder {path} is not writable ({e.strerror or e}); choose another -o") from e
    return path


def _weights_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def _has_external_tensors(model: ir.Model) -> bool:
    return any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())


def save_model(model: ir.Model, path: str | os.PathLike, *, external_data: bool | None = None) -> list[str]:
    """Save ``model`` to ``path`` atomically; return the files written.

    ``external_data=None`` decides by size; weights then go to ``<file name>.data``.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    ops.attach_functions(model)  # a saved model always carries its graphopt ops' bodies
    if external_data is None:
        # A model read with external data keeps it: saved as-is, its tensors would still point
        # at a .data file next to the input, which is not next to ``path``.
        external_data = _weights_bytes(model) > EXTERNAL_DATA_THRESHOLD or _has_external_tensors(model)
    elif not external_data and _has_external_tensors(model):
        ir.external_data.load_to_model(model)  # inline what was external
    data_name = os.path.basename(path) + ".data"
    with tempfile.TemporaryDirectory(dir=folder, prefix=".graphopt-tmp-") as staging:
        staged = os.path.join(staging, os.path.basename(path))
        ir.save(model, staged, external_data=data_name if external_data else None)
        written = [path]
        if external_data:
            os.replace(os.path.join(staging, data_name), os.path.join(folder, data_name))
            written.append(os.path.join(folder, data_name))
        os.replace(staged, path)
    return written


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".graphopt-tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def staged_dir(outdir: str | os.PathLike) -> Iterator[str]:
    """Yield a staging folder inside ``outdir``; on success move its files into ``outdir``.

    On any exception the staging folder is deleted and ``outdir`` is left as it was.
    """
    outdir = ensure_writable_dir(outdir)
    staging = tempfile.mkdtemp(dir=outdir, prefix=".graphopt-staging-")
    try:
        yield staging
        for name in sorted(os.listdir(staging)):
            destination = os.path.join(outdir, name)
            if os.path.isdir(os.path.join(staging, name)) and os.path.isdir(destination):
                # a folder (a target's artifact) replaces the old one: park the old, move, then delete
                parked = tempfile.mkdtemp(dir=outdir, prefix=".graphopt-old-")
                os.replace(destination, os.path.join(parked, name))
                os.replace(os.path.join(staging, name), destination)
                shutil.rmtree(parked, ignore_errors=True)
                continue
            os.replace(os.path.join(staging, name), destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
