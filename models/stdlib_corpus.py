"""The text the stdlib-llama decoder learns: the running Python's standard library source, as bytes.

Files: every ``*.py`` under ``sysconfig.get_paths()["stdlib"]``, minus ``site-packages`` and test
folders (``test``, ``tests``, ``idle_test``: huge, repetitive fixtures), in sorted relative-path
order. Split by file, fixed across machines: a file is held out when the first byte of the SHA-256
of its relative POSIX path is divisible by ``HELD_OUT_MODULUS`` (about 10% of the files).

Tokens are bytes (ids 0..255) plus one special, ``BOS`` (256), put before every file; the vocabulary
is 257. Each split is one stream: ``BOS file_1 BOS file_2 ...``. The stdlib changes between Python
patch versions, so ``digest()`` hashes the whole stream; the model's weight file records the digest
and version it was trained on.
"""

from __future__ import annotations

import functools
import hashlib
import sysconfig
from pathlib import Path

import numpy as np

__all__ = ["BOS", "HELD_OUT_MODULUS", "VOCAB", "digest", "files", "root", "split", "unigram_nats"]

BOS = 256
VOCAB = 257
HELD_OUT_MODULUS = 10
SKIPPED_FOLDERS = frozenset({"site-packages", "test", "tests", "idle_test"})


def root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def files() -> list[str]:
    """Relative POSIX paths of the corpus files, sorted."""
    base = root()
    found = []
    for path in base.rglob("*.py"):
        relative = path.relative_to(base)
        if not SKIPPED_FOLDERS.intersection(relative.parts[:-1]) and path.is_file():
            found.append(relative.as_posix())
    return sorted(found)


def is_held_out(relative: str) -> bool:
    return hashlib.sha256(relative.encode()).digest()[0] % HELD_OUT_MODULUS == 0


@functools.lru_cache(maxsize=1)
def _streams() -> tuple[np.ndarray, np.ndarray, str]:
    base, h = root(), hashlib.sha256()
    parts: dict[bool, list[np.ndarray]] = {False: [], True: []}
    found = files()
    if not any(map(is_held_out, found)) or all(map(is_held_out, found)):
        raise FileNotFoundError(f"too few standard-library sources under {base} ({len(found)} .py files) to split")
    for relative in found:
        data = (base / relative).read_bytes()
        h.update(relative.encode() + b"\0" + data + b"\0")
        parts[is_held_out(relative)].append(np.array([BOS], np.int64))
        parts[is_held_out(relative)].append(np.frombuffer(data, np.uint8).astype(np.int64))
    train, held_out = (np.concatenate(parts[k]) for k in (False, True))
    train.flags.writeable = held_out.flags.writeable = False  # shared by every caller
    return train, held_out, h.hexdigest()


def split(name: str) -> np.ndarray:
    """The ``"train"`` or ``"held-out"`` token stream, int64, read-only."""
    if name not in ("train", "held-out"):
        raise ValueError(f"unknown split {name!r}; choose train or held-out")
    return _streams()[0 if name == "train" else 1]


def digest() -> str:
    """SHA-256 over the corpus files' paths and contents: names the exact text trained on."""
    return _streams()[2]


def unigram_nats(tokens: np.ndarray) -> float:
    """Cross-entropy (nats per token) of ``tokens`` under the train split's token frequencies
    (add-one smoothed): the no-context baseline a trained model must beat."""
    counts = np.bincount(split("train"), minlength=VOCAB).astype(np.float64) + 1.0
    log_p = np.log(counts / counts.sum())
    return float(-log_p[tokens].mean())
