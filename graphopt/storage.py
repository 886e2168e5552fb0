"""Atomic writes: a failed run never leaves a partial model or report in the output folder.

Everything is written to a temporary name in the destination folder and renamed into place
only once complete. Models whose weights exceed ``EXTERNAL_DATA_THRESHOLD`` are saved with their
tensors in ``<name>.data`` next to the ``.onnx`` file (protobuf cannot hold more than 2 GB).
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import onnx
import onnx_ir as ir

from graphopt import ops

__all__ = ["EXTERNAL_DATA_THRESHOLD", "atomic_write_text", "current_umask", "inline_proto", "save_model"]

EXTERNAL_DATA_THRESHOLD = 1 << 30  # bytes of initializers above which weights go to a .data file


def _weights_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def _has_external_tensors(model: ir.Model) -> bool:
    return any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())


def inline_proto(model: ir.Model) -> onnx.ModelProto:
    """``model`` as a proto with every external tensor's bytes inside it.

    A proto that still points at external data is resolved by ONNX Runtime, TVM's frontend and
    onnx's helpers against the *current working directory* when handed over in memory, so they would
    read whatever ``w.bin`` sits there. The tensors are read here through their own base folder (the
    model's, set at load) and swapped back afterwards: ``model`` is unchanged.
    """
    swapped: list[tuple[ir.Value, ir.TensorProtocol]] = []
    for graph in model.graphs():
        for value in graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor):
                swapped.append((value, value.const_value))
    loaded = ir.external_data.convert_tensors_from_external([tensor for _, tensor in swapped])
    attributes = [
        (node, attr)
        for node in ir.traversal.RecursiveGraphIterator(model.graph)
        for attr in node.attributes.values()
        if attr.type == ir.AttributeType.TENSOR and isinstance(attr.value, ir.ExternalTensor)
    ]
    try:
        for (value, _), tensor in zip(swapped, loaded):
            value.const_value = tensor
        for node, attr in attributes:
            (tensor,) = ir.external_data.convert_tensors_from_external([attr.value])
            node.attributes[attr.name] = ir.AttrTensor(attr.name, tensor)
        return ir.to_proto(model)
    finally:
        for value, tensor in swapped:
            value.const_value = tensor
        for node, attr in attributes:
            node.attributes[attr.name] = attr


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
    with tempfile.TemporaryDirectory(dir=folder, prefix=f".graphopt-tmp-{os.getpid()}-") as staging:
        staged = os.path.join(staging, os.path.basename(path))
        ir.save(model, staged, external_data=data_name if external_data else None)
        written = [path]
        if external_data:
            os.replace(os.path.join(staging, data_name), os.path.join(folder, data_name))
            written.append(os.path.join(folder, data_name))
        os.replace(staged, path)
    return written


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".graphopt-tmp-{os.getpid()}-")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; outputs follow the user's umask like model.onnx
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
