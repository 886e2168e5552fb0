"""The output folder: written whole or not at all, never over the user's own files.

A run stages everything in a hidden folder inside the output folder, then, holding a lock on the
output folder, checks every destination before it moves anything:

- a destination that is one of the run's inputs (the model, its external data, a calibration
  file: same path, a symlink to it or a hard link) is refused unless ``force``;
- a file already there that graphopt did not write (it is not in the folder's manifest,
  ``.graphopt-manifest.json``) is refused unless ``force``;
- a destination whose kind differs (a folder named ``report.json``) is refused always.

Then the files move in, the manifest is rewritten, and what the previous run wrote but this one
did not (a stale ``tvm-llvm/``) is removed. Two runs into one folder take turns (``flock`` on the
folder), so one run's files always appear together. Staging folders left by a killed process
(its pid in the name) are removed by the next run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator

from graphopt.errors import UsageError
from graphopt.storage import current_umask

__all__ = ["MANIFEST", "check_writable", "same_file", "staged_output"]

MANIFEST = ".graphopt-manifest.json"
HIDDEN_PREFIXES = (".graphopt-staging-", ".graphopt-tmp-", ".graphopt-old-")


def check_writable(path: str | os.PathLike) -> str:
    """Fail with a UsageError when ``path`` could not become a writable folder; create nothing."""
    path = os.path.abspath(os.fspath(path))
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if probe == path and not os.path.isdir(path):
        raise UsageError(f"output path {path} exists and is not a folder; choose another -o")
    if not os.path.isdir(probe):
        raise UsageError(f"cannot create output folder {path}: {probe} is not a folder; choose another -o")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"output folder {path} is not writable ({probe} is read-only for you); choose another -o")
    return path


def same_file(a: str, b: str) -> bool:
    """Whether two paths name one file (also through symlinks and hard links)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_abandoned(outdir: str) -> None:
    """Staging left by a process that no longer runs (SIGKILL, power loss)."""
    for name in os.listdir(outdir):
        if not name.startswith(HIDDEN_PREFIXES):
            continue
        parts = name.split("-")  # .graphopt-staging-<pid>-<random>
        pid = parts[2] if len(parts) > 3 else ""
        if pid.isdigit() and not _alive(int(pid)):
            path = os.path.join(outdir, name)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.unlink(path)


def _read_manifest(outdir: str) -> set[str]:
    try:
        with open(os.path.join(outdir, MANIFEST), encoding="utf-8") as f:
            return set(json.load(f)["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _check_destinations(outdir: str, names: list[str], staging: str, inputs: Iterable[str], force: bool) -> None:
    ours = _read_manifest(outdir)
    inputs = [p for p in inputs if p and os.path.exists(p)]
    for name in names:
        destination = os.path.join(outdir, name)
        if not os.path.lexists(destination):
            continue
        if os.path.isdir(os.path.join(staging, name)) != os.path.isdir(destination):
            kind = "folder" if os.path.isdir(destination) else "file"
            raise UsageError(f"{destination} is a {kind} graphopt cannot replace; move it or choose another -o")
        if force:
            continue
        clash = next((p for p in inputs if same_file(p, destination)), None)
        if clash is not None:
            raise UsageError(f"writing {destination} would overwrite this run's input {clash}; choose another -o (or --force to replace it)")
        if name not in ours:
            raise UsageError(f"{destination} exists and was not written by graphopt; choose another -o (or --force to replace it)")


def _commit(outdir: str, staging: str, inputs: Iterable[str], force: bool) -> None:
    names = sorted(os.listdir(staging))
    _check_destinations(outdir, names, staging, inputs, force)
    stale = _read_manifest(outdir) - set(names)
    for name in names:
        source, destination = os.path.join(staging, name), os.path.join(outdir, name)
        if os.path.isdir(source):
            os.chmod(source, 0o777 & ~current_umask())  # staged folders are private (mkdtemp); outputs follow the umask
            if os.path.isdir(destination):  # park the old folder, move the new one in, then delete the old
                parked = tempfile.mkdtemp(dir=outdir, prefix=f".graphopt-old-{os.getpid()}-")
                os.replace(destination, os.path.join(parked, name))
                os.replace(source, destination)
                shutil.rmtree(parked, ignore_errors=True)
                continue
        os.replace(source, destination)
    for name in stale:  # written by the previous run into this folder, not by this one
        path = os.path.join(outdir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)
    manifest = os.path.join(staging, MANIFEST)
    with open(manifest, "w", encoding="utf-8") as f:
        json.dump({"files": names}, f, indent=1)
    os.replace(manifest, os.path.join(outdir, MANIFEST))


@contextlib.contextmanager
def staged_output(outdir: str | os.PathLike, *, inputs: Iterable[str] = (), force: bool = False) -> Iterator[str]:
    """Yield a staging folder inside ``outdir``; on success move its entries into ``outdir``.

    On any exception (and on SIGTERM, which the CLI turns into SystemExit) the staging folder is
    deleted, ``outdir`` is left as it was, and a folder this call created is removed again.
    """
    outdir = check_writable(outdir)
    created = not os.path.isdir(outdir)
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create output folder {outdir}: {e.strerror or e}; choose another -o") from e
    staging = None
    try:
        _remove_abandoned(outdir)
        staging = tempfile.mkdtemp(dir=outdir, prefix=f".graphopt-staging-{os.getpid()}-")
        yield staging
        lock = os.open(outdir, os.O_RDONLY)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another run committing into this folder finishes first
            _commit(outdir, staging, inputs, force)
        finally:
            os.close(lock)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
            staging = None
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(outdir)  # only when empty
        raise
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
