"""The pass registry: one declaration per pass drives the CLI, `graphopt passes` and errors.

A pass is an ``onnx_ir`` pass class registered under a kebab-case name with a dataclass of typed
options. Presets are registry entries too: a name that expands to a pipeline string.

    @register_pass("gelu", options=GeluOptions)
    class GeluPass(GraphoptPass): ...

    register_preset("canonicalize", "cleanup,gelu,layer-norm,...", "Turn exporter spellings ...")
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import typing
from collections.abc import Callable
from typing import Any

from graphopt.errors import UsageError

__all__ = [
    "NoOptions",
    "PassSpec",
    "Preset",
    "check_option_range",
    "check_options",
    "get_pass",
    "list_passes",
    "list_presets",
    "parse_option_value",
    "register_pass",
    "register_preset",
]


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """Options of a pass that takes none."""


@dataclasses.dataclass(frozen=True)
class PassSpec:
    name: str
    cls: type
    options: type
    fixed_point: bool
    category: str

    @property
    def summary(self) -> str:
        return _first_line(self.cls.__doc__)

    def option_fields(self) -> list[dataclasses.Field]:
        return list(dataclasses.fields(self.options))

    def make_options(self, values: dict[str, str | Any]) -> Any:
        """Build the options dataclass from raw values, naming the valid keys on a bad one."""
        fields = {f.name: f for f in self.option_fields()}  # printed with underscores, accepted with dashes too
        hints = typing.get_type_hints(self.options)
        kwargs = {}
        for key, raw in values.items():
            field = fields.get(key.replace("-", "_"))
            if field is None:
                valid = ", ".join(sorted(fields)) or "none"
                raise UsageError(f"pass '{self.name}' has no option '{key}' (valid options: {valid})")
            kwargs[field.name] = parse_option_value(self.name, field.name, hints[field.name], raw)
            check_option_range(self.name, field, kwargs[field.name])
        try:
            return self.options(**kwargs)
        except (TypeError, ValueError) as e:
            raise UsageError(f"pass '{self.name}': {e}") from e


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    pipeline: str
    summary: str


_PASSES: dict[str, PassSpec] = {}
_PRESETS: dict[str, Preset] = {}


def register_pass(
    name: str, *, options: type = NoOptions, fixed_point: bool = False, category: str = "rewrite"
) -> Callable[[type], type]:
    """Class decorator: register ``cls(options)`` as pass ``name``."""
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"options of pass {name!r} must be a dataclass")

    def decorate(cls: type) -> type:
        if name in _PASSES or name in _PRESETS:
            raise ValueError(f"pass name {name!r} is registered twice")
        if not cls.__doc__:
            raise ValueError(f"pass {name!r} needs a docstring: its first line is its summary")
        if cls.__name__.lstrip("_").lower() != name.replace("-", "") + "pass":  # one naming scheme: layer-norm <-> LayerNormPass
            raise ValueError(f"pass {name!r} is class {cls.__name__}: name it <{name} in CamelCase>Pass")
        cls.pass_name = name
        _PASSES[name] = PassSpec(name, cls, options, fixed_point, category)
        return cls

    return decorate


def register_preset(name: str, pipeline: str, summary: str) -> None:
    if name in _PASSES or name in _PRESETS:
        raise ValueError(f"preset name {name!r} is registered twice")
    _PRESETS[name] = Preset(name, pipeline, summary)


def _ensure_loaded() -> None:
    # Importing the package runs every pass module's @register_pass.
    importlib.import_module("graphopt.passes")


def get_pass(name: str) -> PassSpec | Preset:
    _ensure_loaded()
    if name in _PASSES:
        return _PASSES[name]
    if name in _PRESETS:
        return _PRESETS[name]
    valid = ", ".join(sorted([*_PASSES, *_PRESETS]))
    raise UsageError(f"unknown pass '{name}' (valid passes and presets: {valid}); see `graphopt passes`")


def list_passes() -> list[PassSpec]:
    _ensure_loaded()
    return [_PASSES[k] for k in sorted(_PASSES)]


def list_presets() -> list[Preset]:
    _ensure_loaded()
    return [_PRESETS[k] for k in sorted(_PRESETS)]


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_option_value(pass_name: str, key: str, hint: Any, raw: Any) -> Any:
    """Convert a raw option value (string from the CLI, or a Python value) to the field's type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    where = f"option '{key}' of pass '{pass_name}'"
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        non_none = [a for a in args if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.lower() == "none"):
            return None
        return parse_option_value(pass_name, key, non_none[0], raw)
    if origin is typing.Literal:
        if raw not in args:
            choices = ", ".join(repr(a) for a in args)
            raise UsageError(f"{where} must be one of {choices}, got {raw!r}")
        return raw
    if origin in (tuple, list):
        items = raw.split("|") if isinstance(raw, str) else list(raw)
        elem = args[0] if args else str
        return tuple(parse_option_value(pass_name, key, elem, i) for i in items if i != "")
    if not isinstance(raw, str):
        if hint is float and isinstance(raw, int) and not isinstance(raw, bool):
            return float(raw)
        if not isinstance(raw, hint):
            raise UsageError(f"{where} must be {hint.__name__}, got {raw!r}")
        return raw
    if hint is bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise UsageError(f"{where} must be true or false, got {raw!r}")
    try:
        return hint(raw)
    except ValueError:
        raise UsageError(f"{where} must be {hint.__name__}, got {raw!r}") from None


def check_options(options: Any) -> None:
    """Check every field of an options dataclass built in Python (not parsed from a pipeline string):
    ``Literal`` choices, then ``check_option_range``; the message names the options class where a
    parsed one names the pass. Options dataclasses call it from ``__post_init__``."""
    cls = type(options)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(options):
        value = getattr(options, field.name)
        hint = hints.get(field.name)
        if typing.get_origin(hint) is typing.Literal and value not in typing.get_args(hint):
            choices = ", ".join(repr(a) for a in typing.get_args(hint))
            raise UsageError(f"option '{field.name}' of {cls.__name__} must be one of {choices}, got {value!r}")
        check_option_range("", field, value, where=f"option '{field.name}' of {cls.__name__}")


def check_option_range(pass_name: str, field: dataclasses.Field, value: Any, *, where: str | None = None) -> None:
    """Numbers are finite and non-negative unless the field says otherwise; a field narrows that with
    ``metadata={"range": (lo, hi)}`` (inclusive) or ``metadata={"choices": (...)}``."""
    where = where or f"option '{field.name}' of pass '{pass_name}'"
    if "choices" in field.metadata and value not in field.metadata["choices"]:
        choices = field.metadata["choices"]
        allowed = str(choices[0]) if len(choices) == 1 else f"one of {', '.join(map(str, choices))}"
        raise UsageError(f"{where} must be {allowed}, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if not math.isfinite(value):
        raise UsageError(f"{where} must be a finite number, got {value!r}")
    low, high = field.metadata.get("range", (0, math.inf))
    if not low <= value <= high:
        bounds = f"at least {low}" if high == math.inf else f"between {low} and {high}"
        raise UsageError(f"{where} must be {bounds}, got {value!r}")


def _catalog_key() -> str:
    import hashlib  # noqa: PLC0415
    import os  # noqa: PLC0415

    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "passes")
    spec = importlib.util.find_spec("graphopt.passes")
    if spec is not None and spec.submodule_search_locations:
        folder = list(spec.submodule_search_locations)[0]
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            stat = os.stat(os.path.join(folder, name))
            digest.update(f"{name}:{stat.st_mtime_ns}:{stat.st_size};".encode())
    for name in ("registry.py",):
        stat = os.stat(os.path.join(os.path.dirname(os.path.abspath(__file__)), name))
        digest.update(f"{name}:{stat.st_mtime_ns}:{stat.st_size};".encode())
    return digest.hexdigest()[:16]


def catalog() -> dict:
    """Passes and presets as plain data, cached on disk by the pass files' mtimes.

    Listing passes needs every pass module imported (onnx_ir, onnxscript: about a second);
    the cache lets `graphopt passes` answer without importing them once it has run once.
    """
    import json  # noqa: PLC0415
    import os  # noqa: PLC0415

    cache_dir = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "graphopt")
    path = os.path.join(cache_dir, f"catalog-{_catalog_key()}.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        pass
    data = {
        "passes": [
            {
                "name": p.name,
                "category": p.category,
                "summary": p.summary,
                "fixed_point": p.fixed_point,
                "options": [
                    {"name": f.name, "type": _type_name(f.type), "default": f.default}
                    for f in p.option_fields()
                ],
            }
            for p in list_passes()
        ],
        "presets": [{"name": p.name, "pipeline": p.pipeline, "summary": p.summary} for p in list_presets()],
    }
    try:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, default=str)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs speed
    return json.loads(json.dumps(data, default=str))


def _type_name(hint: Any) -> str:
    return hint if isinstance(hint, str) else getattr(hint, "__name__", str(hint))


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if doc and doc.strip() else ""
