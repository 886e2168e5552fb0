"""Capture: turn whatever the user has into an ``onnx_ir.Model``.

Accepts a path (external data supported, refused when it points outside the model's folder), an
``onnx.ModelProto``, an ``onnx_ir.Model``, a ``torch.onnx.ONNXProgram``, or a ``torch.nn.Module``
with example inputs (captured with ``torch.export`` and exported with
``torch.onnx.export(..., dynamo=True)``). torch is imported only for torch inputs.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import google.protobuf.message
import onnx
import onnx_ir as ir

from graphopt import validity
from graphopt.errors import ModelError, UsageError

__all__ = ["load", "load_path"]

logger = logging.getLogger(__name__)


def load(
    source: Any,
    example_inputs: Sequence[Any] | Mapping[str, Any] | None = None,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    opset: int | None = None,
) -> ir.Model:
    """Load ``source`` as an ``onnx_ir.Model`` (a new object; the source is not modified)."""
    if isinstance(source, (str, os.PathLike)):
        return load_path(source)
    if isinstance(source, onnx.ModelProto):
        # onnx_ir wraps the proto's tensors without copying, and naming a Constant's tensor (as
        # folding does) would write into the caller's proto: deserialize a copy instead
        private = onnx.ModelProto()
        private.CopyFrom(source)
        model = ir.serde.deserialize_model(private)
        validity.check_model(model)
        return model
    if isinstance(source, ir.Model):
        return source.clone()
    kind = f"{type(source).__module__}.{type(source).__qualname__}"
    torch = sys.modules.get("torch")  # a torch object means torch is imported already: never import it here
    if torch is not None and isinstance(source, (torch.nn.Module, torch.onnx.ONNXProgram)):
        return _load_torch(source, example_inputs, input_names, output_names, opset)
    raise UsageError(
        f"cannot load a {kind}: pass an .onnx path, onnx.ModelProto, onnx_ir.Model, "
        "torch.onnx.ONNXProgram or torch.nn.Module with example inputs"
    )


def load_path(path: str | os.PathLike) -> ir.Model:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelError(f"no such model file: {path}")
    if os.path.isdir(path):
        raise ModelError(f"{path} is a folder; give the path of the .onnx file")
    if os.path.getsize(path) == 0:
        raise ModelError(f"{path} is empty (0 bytes); re-export the model")
    try:
        proto = onnx.load(path, load_external_data=False)
    except (google.protobuf.message.DecodeError, ValueError, RuntimeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path} is not a readable ONNX model (truncated or not protobuf): {_one_line(e)}") from e
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e.strerror or e}") from e
    if not proto.graph.node and not proto.graph.output:
        raise ModelError(f"{path} parsed to an empty model (no graph): it is probably not an ONNX file")
    folder = os.path.dirname(os.path.abspath(path))
    # what onnx_ir cannot deserialize, external data outside the folder, absurd sizes: one line each
    validity.check_proto(proto, folder)
    try:
        model = ir.serde.deserialize_model(proto)  # tensors wrap the proto's bytes: no copy
    except Exception as e:  # noqa: BLE001 — anything check_proto missed is still the file's fault
        raise ModelError(f"{path} is not a valid ONNX model: {_one_line(_root_cause(e))}") from e
    ir.external_data.set_base_dir(model.graph, folder)
    # Checked without its weights: onnx.checker on the proto re-serializes every weight (a
    # single-file BERT-large: 3.1x the model in memory, ~8 CPU s).
    validity.check_model(model)
    return model


def _load_torch(source, example_inputs, input_names, output_names, opset) -> ir.Model:
    import torch  # noqa: PLC0415 — only torch inputs pay for importing torch

    if isinstance(source, torch.onnx.ONNXProgram):
        return load(source.model)
    if not isinstance(source, torch.nn.Module):
        raise UsageError(f"cannot load a {type(source).__name__}: pass a torch.nn.Module or torch.onnx.ONNXProgram")
    if example_inputs is None:
        raise UsageError("a torch.nn.Module needs example_inputs (a tuple of tensors or a dict of keyword tensors)")
    args, kwargs = ((), dict(example_inputs)) if isinstance(example_inputs, Mapping) else (tuple(example_inputs), None)
    was_training = source.training
    source.eval()
    try:
        # Inference graphs: without no_grad the decompositions keep autograd's view rules, and some
        # modules (Hugging Face Swin's window reshapes) then fail to decompose ("Cannot view a tensor").
        with torch.no_grad():
            program = torch.onnx.export(
                source,
                args,
                kwargs=kwargs,
                dynamo=True,
                input_names=list(input_names) if input_names else None,
                output_names=list(output_names) if output_names else None,
                opset_version=opset,
                verbose=False,
            )
    except Exception as e:
        raise ModelError(f"torch.export of {type(source).__name__} failed: {_one_line(e)}") from e
    finally:
        source.train(was_training)
    return program.model


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None and isinstance(error, ir.serde.SerdeError):
        error = error.__cause__
    return error


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
