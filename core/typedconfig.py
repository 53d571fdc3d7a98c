"""Typed, validated configuration loaded from YAML.

Sections are plain dataclasses. :func:`from_dict` builds one from parsed YAML and stops at
the first problem with a :class:`ConfigError` that names the file and the dotted key path:
an unknown key, a missing required key, a value of the wrong type, or a value that the
dataclass's own ``__post_init__`` check refuses (a ``ValueError`` raised there).

Supported field types: ``int``, ``float`` (ints accepted), ``str``, ``bool``, ``Literal``,
``Optional[X]``, ``list[X]``, ``dict[str, X]``, nested dataclasses, and unions of
dataclasses told apart by a ``type: Literal[...]`` field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from fusionrec.errors import ConfigError

T = TypeVar("T")




def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    if origin in (list, dict):
        return f"a {'list' if origin is list else 'mapping'}"
    return getattr(tp, "__name__", str(tp))


def _fail(source: str, key: str, message: str) -> ConfigError:
    where = f"{source}: " if source else ""
    what = f"{key}: " if key else ""
    err = ConfigError(f"{where}{what}{message}")
    err.key, err.detail = key, message  # for blaming a --set override (see blame_override)
    return err


def blame_override(err: ConfigError, source: str, overrides: dict[str, str]) -> ConfigError:
    """``err`` (raised by :func:`from_dict` for ``source``) reworded to name the ``--set``
    argument that caused it.

    ``overrides`` maps each override's canonical key path (as :func:`apply_overrides` returns
    it, e.g. ``tasks[2].weight``) to the argument as given. An error at or under an override's
    key is that override's; an error of a section holding overridden keys names both the file
    and those arguments; a check across sections blames the overrides whose key it names. Any
    other error is returned as it was."""
    key, detail = getattr(err, "key", None), getattr(err, "detail", None)
    if key is None or detail is None:
        return err

    def under(path: str, root: str) -> bool:
        return not root or path == root or path.startswith((root + ".", root + "["))
    owner = [arg for path, arg in overrides.items() if path and under(key, path)]
    if not key:  # a check across sections: blame the overrides whose key its message names
        owner = [arg for arg in overrides.values() if arg.split("=", 1)[0].strip() in detail]
    if owner:
        return ConfigError(f"--set {owner[-1]}: {key + ': ' if key else ''}{detail}")
    inside = [arg for path, arg in overrides.items() if key and under(path, key)]
    if inside:
        sets = " ".join(f"--set {arg}" for arg in inside)
        return ConfigError(f"{source} with {sets}: {key + ': ' if key else ''}{detail}")
    return err


def _convert(tp: Any, value: Any, key: str, source: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if type(None) in args and value is None:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _convert(options[0], value, key, source)
        if all(dataclasses.is_dataclass(a) for a in options):
            return _convert_tagged(options, value, key, source)
        for option in options:
            try:
                return _convert(option, value, key, source)
            except ConfigError:
                continue
        raise _fail(source, key, f"expected {' or '.join(_describe(o) for o in options)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise _fail(source, key, f"expected one of {_describe(tp)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key=key, source=source)
    if origin is list:
        if not isinstance(value, list):
            raise _fail(source, key, f"expected a list, got {value!r}")
        return [_convert(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(source, key, f"expected a mapping, got {value!r}")
        return {str(k): _convert(args[1], v, f"{key}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(source, key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(source, key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(source, key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _fail(source, key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"typedconfig does not support the field type {tp!r} (key {key})")


def _convert_tagged(options: list[type], value: Any, key: str, source: str) -> Any:
    if not isinstance(value, dict) or "type" not in value:
        raise _fail(source, key, f"expected a mapping with a 'type' key, got {value!r}")
    by_tag = {}
    for option in options:
        tag_type = typing.get_type_hints(option)["type"]
        for tag in typing.get_args(tag_type):
            by_tag[tag] = option
    if value["type"] not in by_tag:
        raise _fail(source, f"{key}.type", f"unknown type {value['type']!r}; choose one of {sorted(by_tag)}")
    return from_dict(by_tag[value["type"]], value, key=key, source=source)


def from_dict(cls: type[T], data: Any, *, key: str = "", source: str = "") -> T:
    """Build dataclass ``cls`` from a parsed-YAML mapping, validating every key.

    Args:
        cls: the dataclass to build.
        data: the mapping (``None`` counts as empty).
        key: dotted path of ``data`` inside the whole config, used in messages.
        source: the file the mapping came from, used in messages.
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise _fail(source, key, f"expected a mapping ({cls.__name__}), got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{key}." if key else ""
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        raise _fail(source, prefix + unknown[0], f"unknown key; allowed keys here: {sorted(fields)}")
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], prefix + name, source)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise _fail(source, prefix + name, "required key is missing")
    try:
        return cls(**kwargs)
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        raise _fail(source, key, str(err)) from None


def to_dict(obj: Any) -> Any:
    """The plain-data (YAML/JSON-ready) form of a config object."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def apply_overrides(data: dict, overrides: list[str], source: str = "--set") -> dict[str, str]:
    """Apply ``key.path=value`` overrides (value parsed as YAML) to a parsed-YAML mapping, in place.

    A list element is addressed by its index (``tasks.0.weight=2``) or, for lists of
    mappings with a ``name`` key, by that name (``tasks.click.weight=2``). Returns each
    override's canonical key path, the form :func:`from_dict` names keys in
    (``tasks[2].weight``), mapped to the argument as given.
    """
    applied: dict[str, str] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source} {item}: not of the form key.path=value")
        path, raw = item.split("=", 1)
        parts = path.strip().split(".")
        node: Any = data
        canonical = ""
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                index = _list_index(node, part, path, source)
                canonical += f"[{index}]"
                if last:
                    node[index] = _parse_value(raw, item, source)
                else:
                    node = node[index]
            elif isinstance(node, dict):
                canonical += f".{part}" if canonical else part
                if last:
                    node[part] = _parse_value(raw, item, source)
                else:
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(f"{source} {item}: '{'.'.join(parts[:i])}' is not a mapping or list")
        applied[canonical] = item
    return applied


def _parse_value(raw: str, item: str, source: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source} {item}: the value is not valid YAML ({str(err).splitlines()[0]})") from None


def _list_index(node: list, part: str, path: str, source: str) -> int:
    if part.isdigit() and int(part) < len(node):
        return int(part)
    for index, element in enumerate(node):
        if isinstance(element, dict) and element.get("name") == part:
            return index
    names = [e.get("name") for e in node if isinstance(e, dict) and "name" in e]
    have = f"; elements: {names}" if names else f"; the list has {len(node)} elements"
    raise ConfigError(f"{source} {path}=...: no list element {part!r}{have}")


def load_yaml(path: str | Path, overrides: list[str] | None = None) -> dict:
    """Read a YAML mapping from ``path`` and apply ``--set`` style overrides."""
    return load_yaml_with_overrides(path, overrides)[0]


def load_yaml_with_overrides(path: str | Path, overrides: list[str] | None = None) -> tuple[dict, dict[str, str]]:
    """:func:`load_yaml`, also returning what :func:`apply_overrides` returns (for :func:`blame_override`)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file ({err.strerror})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data, apply_overrides(data, overrides or [])
