"""Inputs for calibration and validation: load user data, check it fits the model, or synthesize.

Accepted forms (BRIEF §2.4): an ``.npz`` file (arrays keyed by input name; a leading axis over
samples is allowed), a ``.npy`` file for a single-input model, a folder of ``<input>.npy`` files,
a folder in the ONNX test-data layout (``test_data_set_*/input_*.pb``), ``name:file.npy`` pairs
(the CLI's form), or a Python iterable of dicts. Without data, ``synthetic_inputs`` makes seeded
random inputs and the caller must say loudly that accuracy numbers then mean nothing.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_ir as ir

from graphopt.errors import DataError, UsageError

__all__ = ["InputSpec", "apply_input_shapes", "check_feeds", "feed_dict", "input_specs", "load_samples", "parse_shape_overrides",
           "synthetic_inputs"]


@dataclasses.dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None  # None: rank unknown; str/None dims are dynamic


def input_specs(model: ir.Model) -> list[InputSpec]:
    specs = []
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        dtype = value.dtype.numpy() if value.dtype is not None else np.dtype(np.float32)
        shape = None
        if value.shape is not None:
            shape = tuple(d if isinstance(d, int) else (str(d) if d is not None and str(d) else None) for d in value.shape)
        specs.append(InputSpec(value.name, np.dtype(dtype), shape))
    return specs


MAX_INPUT_ELEMENTS = 1 << 31  # an input shape beyond this is a typo, not a model input


def parse_shape_overrides(items: Sequence[str] | None, *, smallest: int = 1, what: str = "--input-shape") -> dict[str, tuple[int, ...]]:
    """``["input_ids:1,128"]`` -> ``{"input_ids": (1, 128)}``; every dimension at least ``smallest``
    (1 for a user's --input-shape; 0 where the sizes are those of real, possibly empty, inputs)."""
    shapes = {}
    for item in items or ():
        name, sep, dims = item.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.split(",") if d.strip())
        except ValueError:
            raise UsageError(f"bad {what} {item!r}: write name:d0,d1,... e.g. input_ids:1,128") from None
        if any(d < smallest for d in shapes[name]):
            raise UsageError(f"bad {what} {item!r}: every dimension must be a {'positive' if smallest > 0 else 'non-negative'} size")
        if np.prod(shapes[name], dtype=object) > MAX_INPUT_ELEMENTS:
            raise UsageError(f"bad {what} {item!r}: more than {MAX_INPUT_ELEMENTS} elements; check the dimensions")
    return shapes


def apply_input_shapes(model: ir.Model, shapes: Mapping[str, Sequence[int]]) -> None:
    """Fix the shapes of the named graph inputs (``--input-shape``), checking names and ranks."""
    inputs = {v.name: v for v in model.graph.inputs}
    for name, dims in shapes.items():
        if name not in inputs:
            raise UsageError(f"--input-shape names '{name}', but the model's inputs are {sorted(inputs)}")
        if inputs[name].shape is not None and len(inputs[name].shape) != len(dims):
            raise UsageError(f"--input-shape {name}: rank {len(dims)} given, the model's input has rank {len(inputs[name].shape)}")
        inputs[name].shape = ir.Shape(list(dims))


def _concrete_shape(spec: InputSpec, overrides: Mapping[str, tuple[int, ...]], default_dim: int) -> tuple[int, ...]:
    if spec.name in overrides:
        return overrides[spec.name]
    if spec.shape is None:
        raise DataError(f"input '{spec.name}' has unknown rank; give --input-shape {spec.name}:d0,d1,...")
    return tuple(d if isinstance(d, int) and d > 0 else (1 if i == 0 else default_dim) for i, d in enumerate(spec.shape))


def synthetic_inputs(
    model: ir.Model, seed: int = 0, shapes: Mapping[str, tuple[int, ...]] | None = None, default_dim: int = 16
) -> dict[str, np.ndarray]:
    """Seeded random inputs: floats ~ N(0,1); ``*mask*`` integer inputs all ones; other integers in [0, 100)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in input_specs(model):
        shape = _concrete_shape(spec, shapes or {}, default_dim)
        if spec.dtype == np.bool_:
            feeds[spec.name] = np.ones(shape, dtype=bool)
        elif np.issubdtype(spec.dtype, np.integer):
            if "mask" in spec.name.lower():
                feeds[spec.name] = np.ones(shape, dtype=spec.dtype)
            else:
                feeds[spec.name] = rng.integers(0, 100, size=shape).astype(spec.dtype)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feeds


def check_feeds(model: ir.Model, feeds: Mapping[str, np.ndarray], where: str = "data") -> dict[str, np.ndarray]:
    """Check names, dtypes and static dims against the model's inputs; return the feeds cast to them."""
    specs = {s.name: s for s in input_specs(model)}
    unknown = sorted(set(feeds) - set(specs))
    missing = sorted(set(specs) - set(feeds))
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown input(s) {unknown}")
        if missing:
            parts.append(f"missing input(s) {missing}")
        raise DataError(f"{where} does not match the model: {'; '.join(parts)} (the model's inputs are {sorted(specs)})")
    fixed = {}
    for name, array in feeds.items():
        spec = specs[name]
        array = np.asarray(array)
        if spec.shape is not None:
            if array.ndim != len(spec.shape):
                raise DataError(f"{where}: input '{name}' has shape {array.shape}, the model expects rank {len(spec.shape)} {_show(spec.shape)}")
            for got, want in zip(array.shape, spec.shape):
                if isinstance(want, int) and want > 0 and got != want:
                    raise DataError(f"{where}: input '{name}' has shape {array.shape}, the model expects {_show(spec.shape)}")
        if array.dtype != spec.dtype:
            if array.dtype.kind != spec.dtype.kind and not (array.dtype.kind in "iu" and spec.dtype.kind in "iu"):
                raise DataError(f"{where}: input '{name}' is {array.dtype}, the model expects {spec.dtype}")
            array = array.astype(spec.dtype)
        fixed[name] = array
    return fixed


def _show(shape) -> str:
    return "[" + ",".join("?" if not isinstance(d, int) else str(d) for d in shape) + "]"


def load_samples(source: Any, model: ir.Model, where: str = "calibration data") -> list[dict[str, np.ndarray]]:
    """Load samples (one feed dict each) from any accepted form and check them against the model."""
    where = f"{where} {source!r}" if isinstance(source, (str, os.PathLike)) else where
    raw = _read(source, model)
    if not raw:
        raise DataError(f"{where} holds no samples")
    return [check_feeds(model, sample, where) for sample in raw]


def _read(source: Any, model: ir.Model) -> list[dict[str, np.ndarray]]:
    specs = input_specs(model)
    if isinstance(source, Mapping):
        return _split_stacked(dict(source), specs)
    if isinstance(source, (list, tuple)) and source and all(isinstance(s, str) and ":" in s for s in source):
        return _read_pairs(source, specs)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if ":" in path and not os.path.exists(path):
            return _read_pairs([path], specs)
        if not os.path.exists(path):
            raise DataError(f"calibration data {path} does not exist")
        if os.path.isdir(path):
            return _read_folder(path, specs)
        if path.endswith(".npz"):
            return _split_stacked(_read_npz(path), specs)
        if path.endswith(".npy"):
            if len(specs) != 1:
                raise DataError(f"{path} is one array but the model has inputs {[s.name for s in specs]}; use an .npz or name:file.npy")
            return _split_stacked({specs[0].name: _read_npy(path)}, specs)
        if path.endswith(".pb"):
            return [{specs[0].name: _read_pb(path)}]
        raise DataError(f"calibration data {path}: use .npz, .npy, .pb or a folder")
    if isinstance(source, np.ndarray):  # a one-input model's array (a leading axis over samples allowed)
        return _split_stacked({_only_input(specs, "an array"): source}, specs)
    if callable(getattr(source, "get_next", None)):  # ONNX Runtime's CalibrationDataReader
        return [_as_feed(item, specs) for item in iter(source.get_next, None)]
    if isinstance(source, Iterable):
        return [_as_feed(item, specs) for item in source]
    raise DataError(f"unsupported calibration data of type {type(source).__name__}")


def _only_input(specs: Sequence[InputSpec], what: str) -> str:
    if len(specs) != 1:
        raise DataError(f"{what} fits a one-input model, but the model has inputs {[s.name for s in specs]}; give dicts of name -> array")
    return specs[0].name


def feed_dict(feeds: Any, names: Sequence[str], where: str = "run()") -> dict[str, np.ndarray]:
    """The feed of one call to a compiled model: a dict of input name -> array, or, for a one-input
    model, the bare array. A tuple, list or array for a model with more inputs names what to pass
    (input order is not guessed at run time; calibration samples may be tuples, see ``load_samples``)."""
    if isinstance(feeds, Mapping):
        return dict(feeds)
    if isinstance(feeds, np.ndarray) and len(names) == 1:
        return {names[0]: feeds}
    what = f"a {type(feeds).__name__}" + (f" of {len(feeds)}" if isinstance(feeds, (tuple, list)) else "")
    example = ", ".join(f"'{n}': ..." for n in names)
    raise DataError(f"{where} got {what}; pass a dict of input name -> array: {{{example}}}")


def _as_feed(item: Any, specs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    """One sample: a dict by input name, a tuple/list in the model's input order, or one array."""
    if isinstance(item, Mapping):
        return dict(item)
    if isinstance(item, (tuple, list)):
        if len(item) != len(specs):
            raise DataError(f"a calibration sample holds {len(item)} arrays, the model has {len(specs)} inputs {[s.name for s in specs]}")
        return {spec.name: np.asarray(array) for spec, array in zip(specs, item)}
    if isinstance(item, np.ndarray):
        return {_only_input(specs, "a bare array sample"): item}
    raise DataError(f"calibration samples must be dicts of input name -> array (or tuples in input order), got {type(item).__name__}")


def _read_pairs(pairs: Sequence[str], specs: Sequence[InputSpec]) -> list[dict[str, np.ndarray]]:
    arrays = {}
    for pair in pairs:
        name, _, path = pair.partition(":")
        if not os.path.exists(path):
            raise DataError(f"data file {path} for input '{name}' does not exist")
        arrays[name] = _read_npy(path)
    return _split_stacked(arrays, specs)


def _read_folder(path: str, specs: Sequence[InputSpec]) -> list[dict[str, np.ndarray]]:
    sets = sorted(glob.glob(os.path.join(path, "test_data_set_*")))
    if sets:
        samples = []
        for folder in sets:
            files = sorted(glob.glob(os.path.join(folder, "input_*.pb")), key=lambda f: int(f.rsplit("_", 1)[1][:-3]))
            samples.append({spec.name: _read_pb(f) for spec, f in zip(specs, files)})
        return samples
    npys = {os.path.splitext(os.path.basename(f))[0]: f for f in glob.glob(os.path.join(path, "*.npy"))}
    if not npys:
        raise DataError(f"folder {path} has neither test_data_set_*/input_*.pb nor <input>.npy files")
    return _split_stacked({name: _read_npy(f) for name, f in npys.items()}, specs)


def _check_npy_header(stream, available: int, where: str) -> None:
    """Refuse object arrays and headers that claim more bytes than the file holds, before allocating."""
    try:
        version = np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(stream)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{where} is not a valid .npy array ({_first_line(e)}); re-save it with numpy.save") from e
    if dtype.hasobject:
        raise DataError(f"{where} holds Python objects (a pickled object array), which graphopt refuses to unpickle; save numeric arrays")
    needed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if needed > available - stream.tell():
        raise DataError(f"{where}: its header claims {shape} {dtype} ({needed} bytes) but the file is smaller; it is truncated or corrupt")


def _read_npy(path: str) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            _check_npy_header(f, os.fstat(f.fileno()).st_size, path)
            f.seek(0)
            return np.load(f, allow_pickle=False)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    except ValueError as e:
        raise DataError(f"cannot read {path} as .npy: {_first_line(e)}") from e


def _read_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as archive:
            arrays = {}
            for info in archive.infolist():
                name = info.filename.removesuffix(".npy")
                with archive.open(info) as member:
                    _check_npy_header(member, info.file_size, f"{path}:{name}")
                with archive.open(info) as member:
                    arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
            return arrays
    except zipfile.BadZipFile as e:
        raise DataError(f"{path} is not an .npz archive ({_first_line(e)}); write it with numpy.savez") from e
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    except ValueError as e:
        raise DataError(f"cannot read {path}: {_first_line(e)}") from e


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _read_pb(path: str) -> np.ndarray:
    tensor = onnx.TensorProto()
    with open(path, "rb") as f:
        tensor.ParseFromString(f.read())
    return onnx.numpy_helper.to_array(tensor)


def _split_stacked(arrays: dict[str, np.ndarray], specs: Sequence[InputSpec]) -> list[dict[str, np.ndarray]]:
    """One sample, or many if every array has one more axis than the model's input (a stack)."""
    ranks = {s.name: len(s.shape) for s in specs if s.shape is not None}
    stacked = arrays and all(name in ranks and np.ndim(a) == ranks[name] + 1 for name, a in arrays.items())
    if not stacked:
        return [arrays]
    counts = {len(a) for a in arrays.values()}
    if len(counts) != 1:
        raise DataError(f"stacked inputs have different sample counts: { {k: len(v) for k, v in arrays.items()} }")
    return [{k: v[i] for k, v in arrays.items()} for i in range(counts.pop())]
