"""Export helper and on-disk cache shared by the reference-model builders.

``export()`` turns an eval-mode ``nn.Module`` plus named example inputs into serialized ONNX bytes,
with the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, the default) or the legacy
TorchScript exporter (``exporter="legacy"``). ``cached()`` memoizes such bytes on disk under
``$GRAPHOPT_CACHE/models`` (default ``~/.cache/graphopt/models``), keyed by the builder's name,
its config, the torch / transformers / onnxscript versions and a hash of the builder's source
files (and of any weight file it reads), so editing a builder invalidates its entries.
``GRAPHOPT_CACHE=off`` disables the cache. Exports take seconds; tests call them often.

Builders always return ``onnx.load_from_string(bytes)``, so a cached and a fresh build are the
same proto byte for byte. The dynamo exporter's per-node stack traces are dropped: they hold
absolute paths, so the same export would differ between checkouts (the other node metadata stays).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx

__all__ = ["EXPORTERS", "cache_dir", "cached", "check_keys", "export", "package_version", "to_torch"]

logger = logging.getLogger(__name__)

EXPORTERS = ("dynamo", "legacy")


def package_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def check_keys(config: Mapping[str, Any], known: Iterable[str], who: str) -> None:
    """``module()``/``example_inputs()`` take a builder's whole config and ignore what they don't
    use; a key no part of the builder knows is a typo and raises TypeError."""
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise TypeError(f"{who}: unknown config key(s) {unknown}; known: {sorted(known)}")


def cache_dir() -> Path | None:
    """The folder holding cached exports, or None when ``GRAPHOPT_CACHE=off``."""
    root = os.environ.get("GRAPHOPT_CACHE")
    if root and root.lower() in ("off", "0", "none", "false"):
        return None
    base = Path(root) if root else Path.home() / ".cache" / "graphopt"
    return base / "models"


def _digest(paths: Iterable[str | os.PathLike]) -> str:
    h = hashlib.sha256()
    for p in sorted(os.fspath(p) for p in paths):
        h.update(Path(p).read_bytes() if os.path.exists(p) else b"<missing>")
    return h.hexdigest()


def cached(
    name: str, config: Mapping[str, Any], produce: Callable[[], bytes], *, files: Iterable[str | os.PathLike] = ()
) -> onnx.ModelProto:
    """Return the model ``produce()`` makes for ``name``/``config``, from the cache when present.

    ``files`` are source or weight files whose content the result depends on; this module is
    always included.
    """
    key = json.dumps(
        {
            "name": name,
            "config": dict(sorted(config.items())),
            "torch": package_version("torch"),
            "transformers": package_version("transformers"),
            "onnxscript": package_version("onnxscript"),
            "onnx": package_version("onnx"),
            "files": _digest([__file__, *files]),
        },
        sort_keys=True,
        default=str,
    )
    folder = cache_dir()
    if folder is None:
        return onnx.load_from_string(produce())
    path = folder / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.onnx"
    if path.exists():
        logger.debug("cache hit %s", path)
        return onnx.load_from_string(path.read_bytes())
    data = produce()
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".tmp-", suffix=".onnx", delete=False) as f:
            tmp = f.name
            f.write(data)
        os.replace(tmp, path)  # atomic: concurrent builders never see a partial file
        logger.info("cached %s", path)
    except OSError as e:  # a read-only or full disk must not break builds
        logger.warning("could not write the model cache at %s: %s", folder, e)
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
    return onnx.load_from_string(data)


def to_torch(inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """numpy inputs -> torch tensors, same keys and order."""
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}


def export(
    module: Any,
    inputs: Mapping[str, np.ndarray],
    output_names: list[str],
    *,
    exporter: str = "dynamo",
    opset: int = 18,
    dynamic: Mapping[str, Mapping[int, str]] | None = None,
) -> bytes:
    """Export ``module`` (called as ``module(**inputs)``) to serialized ONNX.

    ``inputs`` must be ordered like the module's ``forward`` parameters (the legacy exporter passes
    them positionally). ``dynamic`` maps an input or output name to ``{axis: dim_name}``; the same
    dim name on two inputs means the same size. The dynamo exporter derives output dims itself and
    uses only the input entries.
    """
    import torch

    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    module.eval()  # the wrapper too: Dropout in a train-mode wrapper would stay live
    tensors = to_torch(inputs)
    with torch.no_grad(), _quiet():
        if exporter == "legacy":
            buf = io.BytesIO()
            torch.onnx.export(
                module,
                tuple(tensors.values()),
                buf,
                input_names=list(tensors),
                output_names=output_names,
                opset_version=opset,
                dynamic_axes={k: dict(v) for k, v in (dynamic or {}).items()} or None,
                dynamo=False,
            )
            model = onnx.load_from_string(buf.getvalue())
        else:
            shapes = None
            if dynamic:
                dims: dict[str, Any] = {}
                shapes = {
                    k: {ax: dims.setdefault(d, torch.export.Dim(d)) for ax, d in dynamic.get(k, {}).items()} or None
                    for k in tensors
                }
            program = torch.onnx.export(
                module,
                (),
                kwargs=tensors,
                output_names=output_names,
                opset_version=opset,
                dynamic_shapes=shapes,
                dynamo=True,
                external_data=False,
            )
            model = program.model_proto
            _drop_stack_traces(model)
    return model.SerializeToString()


def _drop_stack_traces(model: onnx.ModelProto) -> None:
    """Remove ``pkg.torch.onnx.stack_trace`` node metadata (file paths), in place."""

    def nodes(graph: onnx.GraphProto):
        for node in graph.node:
            yield node
            for attr in node.attribute:
                for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                    yield from nodes(sub)

    for node in [*nodes(model.graph), *(n for f in model.functions for n in f.node)]:
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        if len(kept) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(kept)


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress prints, warnings and log lines (e.g. "torchvision is not
    installed. Skipping ..."); errors still raise."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _native_stdout_to_debug_log():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def _native_stdout_to_debug_log():
    """Send what C++ code writes to file descriptor 1 to the debug log: the legacy exporter prints
    the whole TorchScript graph there (hundreds of lines) when an operator is not supported."""
    from graphopt.native_output import captured_fd

    with captured_fd(1) as captured:
        yield
    text = "".join(captured).strip()
    if text:
        logger.debug("exporter output (%d lines): %s", text.count("\n") + 1, text[:4000])
