"""The configuration engine: nested dataclasses built from layered dicts, YAML and ``key=value`` overrides.

Schemas are plain dataclasses (a section is a dataclass-typed field); this module knows none of
them. It builds a schema from a nested dict, coercing every value by its annotation and
rejecting unknown keys with a did-you-mean hint and the list of valid ones::

    cfg = build_config(TrainConfig, deep_merge(defaults, overrides_to_dict(["loss.delta=1.2"])))

Sections validate their own values in ``__post_init__``; a ``ValueError`` there becomes a
:class:`ConfigError` naming the section. No torch, no plm imports: this is layer 0.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message says which and what is allowed."""


def check(cond: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``cond``."""
    if not cond:
        raise ConfigError(message)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """``value`` must be one of ``choices``."""
    check(value in choices, f"{name} must be one of {', '.join(choices)}; got {value!r}")


def check_positive(name: str, value: Any, allow_none: bool = False, allow_zero: bool = False) -> None:
    """``value`` must be a finite positive (or non-negative, or ``None``) number."""
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (value >= 0 if allow_zero else value > 0)
    check(ok, f"{name} must be a finite {'non-negative' if allow_zero else 'positive'} number"
              f"{' or null' if allow_none else ''}; got {value!r}")


def _section_type(tp: Any) -> Optional[type]:
    """The dataclass a field annotation names (``None`` when it is not a section)."""
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def valid_keys(schema: type) -> list[str]:
    """Every dotted key a schema dataclass accepts (``loss.delta``, ``manifold.eps`` …)."""
    hints = typing.get_type_hints(schema)
    keys: list[str] = []
    for f in dataclasses.fields(schema):
        section = _section_type(hints[f.name])
        keys += [f"{f.name}.{k}" for k in valid_keys(section)] if section else [f.name]
    return keys


def unknown_key(key: str, schema: type) -> ConfigError:
    """The error for an unknown dotted ``key`` of ``schema``: a did-you-mean hint and the valid keys."""
    keys = valid_keys(schema)
    close = difflib.get_close_matches(key, keys, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}; valid keys: {', '.join(keys)}")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` converted to the annotation ``tp`` (``Optional``, ``list``, scalars), or :class:`ConfigError`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [coerce(v, args[0], key) for v in value]
    if tp is bool:
        check(isinstance(value, bool), f"{key} must be true or false; got {value!r}")
        return value
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        check(isinstance(value, int) and not isinstance(value, bool), f"{key} must be an integer; got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        check(isinstance(value, (int, float)) and not isinstance(value, bool), f"{key} must be a number; got {value!r}")
        return float(value)
    if tp is str:
        check(value is not None and not isinstance(value, (dict, list)), f"{key} must be a string; got {value!r}")
        return str(value)
    if tp is dict:
        check(isinstance(value, Mapping), f"{key} must be a mapping; got {value!r}")
        return dict(value)
    return value


def build_config(schema: type[T], data: Mapping[str, Any], root: Optional[type] = None, prefix: str = "") -> T:
    """Build ``schema`` from a nested dict, rejecting unknown keys and ill-typed values.

    Args:
        schema: the dataclass to build (its dataclass-typed fields are nested sections).
        data: nested mapping of its keys; missing keys keep their defaults.
        root: the outermost schema (for the valid-key list of errors); default ``schema``.
        prefix: dotted prefix of ``schema`` within ``root`` (``"loss."``).

    Raises:
        ConfigError: unknown key (with a did-you-mean hint), wrong type or invalid value.
    """
    root = root or schema
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping; got {data!r}")
    hints = typing.get_type_hints(schema)
    names = {f.name for f in dataclasses.fields(schema)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            raise unknown_key(prefix + str(key), root)
        section = _section_type(hints[key])
        if section is not None:
            kwargs[key] = build_config(section, value if value is not None else {}, root, prefix + key + ".")
        else:
            kwargs[key] = coerce(value, hints[key], prefix + key)
    try:
        return schema(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {err}") from err


def to_dict(config: Any) -> dict[str, Any]:
    """A schema instance as a plain nested dict (YAML/JSON friendly)."""
    return dataclasses.asdict(config)


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update``, nested mappings merged key by key (neither is modified)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"loss.delta=1.2"`` → (``["loss", "delta"]``, 1.2); the value is parsed as a YAML scalar.

    Raises:
        ConfigError: no ``=`` or an empty key.
    """
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. loss.delta=1.2)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from err
    return key.split("."), value


def overrides_to_dict(items: Sequence[str]) -> dict[str, Any]:
    """Nested dict from dotted ``key=value`` items (later items win)."""
    out: dict[str, Any] = {}
    for item in items:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier value of {part!r}")
            node = nxt
        node[path[-1]] = value
    return out


def dotted_to_dict(values: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dict from ``{"model.backbone": x, "epochs": 3}``; ``None`` values are left out."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML config file as a dict.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: not YAML, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    return dict(data)


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    out: list[str] = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += config_diff(va, vb, prefix + key + ".")
        elif va != vb:
            out.append(prefix + key)
    return out
