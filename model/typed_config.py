"""Typed dataclass configs: strict loading from dicts/YAML/JSON and `--section.key value` overrides.

Every component owns one dataclass. Unknown keys and values of the wrong type are errors that
name the offending key, so a typo in a config file never silently falls back to a default.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def _check_value(value: Any, annotation: Any, where: str) -> Any:
    """Return `value` converted to `annotation`, or raise a ValueError naming `where`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping for {annotation.__name__}, got {value!r}")
        return from_dict(annotation, value, prefix=f"{where}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(value, arg, where)
            except ValueError:
                pass
        raise ValueError(f"{where}: {value!r} does not match {annotation}")
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a sequence, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(f"{where}: expected {len(args)} items, got {len(value)}")
            items = [_check_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_type = args[0] if args else Any
            items = [_check_value(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return origin(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        key_type, value_type = args if args else (Any, Any)
        return {_check_value(k, key_type, where): _check_value(v, value_type, f"{where}.{k}") for k, v in value.items()}
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a float, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an int, got {value!r}")
        return value
    if annotation in (str, bool):
        if not isinstance(value, annotation):
            raise ValueError(f"{where}: expected {annotation.__name__}, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported config annotation {annotation}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from `data`; missing keys keep their defaults, unknown keys raise."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(prefix + k for k in unknown)} for {cls.__name__}; "
                         f"known: {', '.join(sorted(names))}")
    kwargs = {k: _check_value(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain-data view of a config (tuples become lists), suitable for JSON/YAML."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _parse_scalar(text: str) -> Any:
    """Command-line values are read as YAML: `24` → int, `1e-3` → float, `null` → None, `[3,3,1]` → list."""
    value = yaml.safe_load(text)
    if isinstance(value, str) and _NUMBER.match(value):  # YAML 1.1 reads `1e-3` as a string
        return float(value)
    return value


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """Turn `["--model.layers", "24", "--optim.lr=1e-3"]` into a nested dict."""
    nested: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ValueError(f"expected an override like --section.key value, got {arg!r}")
        if "=" in arg:
            key, text = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ValueError(f"override {arg} has no value")
            key, text = arg[2:], args[i + 1]
            i += 2
        node = nested
        *path, leaf = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {key} conflicts with an earlier override")
        node[leaf] = _parse_scalar(text)
    return nested


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: `update` wins; nested mappings merge key by key."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict (an empty file is an empty dict)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping at the top level")
    return data


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
         base: dict[str, Any] | None = None) -> T:
    """`base` (e.g. a preset's dict) ← file ← command-line overrides, then strict validation."""
    data = dict(base or {})
    if path is not None:
        data = merge(data, read_file(path))
    if overrides:
        data = merge(data, parse_overrides(overrides))
    return from_dict(cls, data)


def field_docs(cls: type) -> dict[str, str]:
    """Each field's attribute docstring (the string literal under it), from `cls` and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def type_name(annotation: Any) -> str:
    """A short readable form of a field's type: `int`, `fp32|bf16`, `int | None`, `list[Stage]`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join('...' if a is Ellipsis else type_name(a) for a in args)}]"
    return "None" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


@dataclasses.dataclass
class Key:
    """One config key for `--help` and the configuration reference."""
    name: str
    type: str
    default: Any
    doc: str


def describe(cls: type, prefix: str = "", instance: Any = None) -> list[Key]:
    """Every key of `cls`, nested sections flattened to `section.key`, with its type, default and doc.

    Defaults are read from `instance` (e.g. a preset's values) when given, else from a default instance.
    """
    instance = cls() if instance is None else instance
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            keys += describe(hints[f.name], f"{prefix}{f.name}.", value)
        else:
            plain = json.loads(json.dumps(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value,
                                          default=lambda o: dataclasses.asdict(o)))
            keys.append(Key(prefix + f.name, type_name(hints[f.name]), plain, docs.get(f.name, "")))
    return keys


def help_text(keys: list[Key], width: int = 100) -> str:
    """The keys as `--help` lists them: `--section.key TYPE (default: …)` and the doc, indented."""
    lines = []
    for key in keys:
        lines.append(f"  --{key.name} {key.type}  (default: {json.dumps(key.default)})")
        lines += textwrap.wrap(key.doc, width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


def check_at_least(config: Any, section: str, minimum: float, *names: str) -> None:
    """Raise ValueError naming `section.name` when a field is below `minimum` (a value that cannot work)."""
    for name in names:
        value = getattr(config, name)
        if value < minimum:
            raise ValueError(f"{section}.{name} must be at least {minimum}, got {value}")
