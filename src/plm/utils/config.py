"""The configuration engine: nested dataclasses built from layered dicts, YAML and ``key=value`` overrides.

Schemas are plain dataclasses (a section is a dataclass-typed field); this module knows none of
them. It builds a schema from a nested dict, coercing every value by its annotation and
rejecting unknown keys with a did-you-mean hint and the list of valid ones::

    cfg = build_config(TrainConfig, deep_merge(defaults, overrides_to_dict(["loss.delta=1.2"])))

Sections validate their own values in ``__post_init__``; a ``ValueError`` there becomes a
:class:`ConfigError` naming the section. Integers must fit in 64 bits (:data:`INT64`); a section
checks the narrower range it uses (:func:`check_int`). YAML (a file or a ``key=value`` value) is
checked before it is built into objects (:func:`load_yaml_text`): at most :data:`MAX_YAML_BYTES`,
nested at most :data:`MAX_YAML_DEPTH` deep, and at most :data:`MAX_YAML_EXPANDED` characters once
its aliases are expanded, so a small file of nested aliases cannot make a huge value (or a huge
error message). Values shown in messages are cut to a few dozen characters (:func:`short_repr`).
No torch, no plm imports: this is layer 0.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import reprlib
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, TypeVar

import yaml

T = TypeVar("T")

#: the integers a config value may hold (what torch and numpy take as a 64-bit integer)
INT64 = (-(1 << 63), (1 << 63) - 1)
#: the largest seed: numpy, torch, scikit-learn and faiss all take it, faiss and scikit-learn as a 32-bit
#: integer to which some users add the epoch
MAX_SEED = 1 << 30
#: the largest config file (or override value) read, in bytes
MAX_YAML_BYTES = 1 << 20
#: the deepest nesting of mappings and lists in a config
MAX_YAML_DEPTH = 32
#: the most characters a config may hold once its aliases (``*name``) are expanded
MAX_YAML_EXPANDED = 1 << 20

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6
_REPR.maxlevel = 3


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message says which and what is allowed."""


def short_repr(value: Any) -> str:
    """``repr(value)`` cut for a one-line message: long strings, big numbers and nested values abridged."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"a {int(value.bit_length() * math.log10(2)) + 1}-digit integer"
    try:
        text = _REPR.repr(value)
    except (ValueError, RecursionError):
        return f"a {type(value).__name__}"
    return text if len(text) <= 100 else text[:97] + "..."


def check(cond: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``cond``."""
    if not cond:
        raise ConfigError(message)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """``value`` must be one of ``choices``."""
    check(value in choices, f"{name} must be one of {', '.join(choices)}; got {short_repr(value)}")


def check_int(name: str, value: Any, low: int, high: int, why: str = "") -> None:
    """``value`` must be an integer in ``[low, high]`` (``why``: what uses it, for the message)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    check(ok, f"{name} must be an integer from {low} to {high}{f' ({why})' if why else ''}; got {short_repr(value)}")


def check_positive(name: str, value: Any, allow_none: bool = False, allow_zero: bool = False) -> None:
    """``value`` must be a finite positive (or non-negative, or ``None``) number."""
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (value >= 0 if allow_zero else value > 0)
    check(ok, f"{name} must be a finite {'non-negative' if allow_zero else 'positive'} number"
              f"{' or null' if allow_none else ''}; got {short_repr(value)}")


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
    return ConfigError(f"unknown config key {short_repr(key)}{hint}; valid keys: {', '.join(keys)}")


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
        check(isinstance(value, bool), f"{key} must be true or false; got {short_repr(value)}")
        return value
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        check(isinstance(value, int) and not isinstance(value, bool), f"{key} must be an integer; got "
                                                                      f"{short_repr(value)}")
        check_int(key, value, *INT64)
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        check(isinstance(value, (int, float)) and not isinstance(value, bool), f"{key} must be a number; got "
                                                                               f"{short_repr(value)}")
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{key} must be a number of at most about 1e308; got {short_repr(value)}") from None
    if tp is str:
        if isinstance(value, bool):  # YAML reads a bare on/off (yes/no, true/false) as a boolean
            return "on" if value else "off"
        check(value is not None and not isinstance(value, (dict, list)), f"{key} must be a string; got "
                                                                         f"{short_repr(value)}")
        return str(value)
    if tp is dict:
        check(isinstance(value, Mapping), f"{key} must be a mapping; got {short_repr(value)}")
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
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping; got {short_repr(data)}")
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
    value = load_yaml_text(raw, f"override {short_repr(item)}") if raw.strip() else None
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
    with open(path, "rb") as fh:
        raw = fh.read(MAX_YAML_BYTES + 1)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    data = load_yaml_text(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    return dict(data)


def load_yaml_text(text: str, where: str) -> Any:
    """``yaml.safe_load(text)`` once the text is checked against the limits above.

    Args:
        text: the YAML.
        where: what it is, for messages (a file name, ``override 'seed=…'``).

    Raises:
        ConfigError: too large, nested too deep, aliases expanding too far (or to themselves), or
            not valid YAML.
    """
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{where} is larger than {MAX_YAML_BYTES >> 10} KiB; a config is a few lines of YAML")
    try:
        _check_yaml_shape(text, where)
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        first = " ".join(str(err).split())
        raise ConfigError(f"{where} is not valid YAML: {first[:300]}") from None
    except (ValueError, RecursionError, OverflowError) as err:  # e.g. an integer of over 4,300 digits
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{where}: a value cannot be read ({str(err)[:200]})") from None


def _check_yaml_shape(text: str, where: str) -> None:
    """Walk the YAML events (no objects built, no recursion): depth and expanded size within the limits."""
    sizes: dict[str, int] = {}  # anchor -> expanded size in characters
    stack: list[list[Any]] = []  # open mappings and lists: [anchor, expanded size so far]
    total = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if len(stack) >= MAX_YAML_DEPTH:
                raise ConfigError(f"{where} nests mappings and lists deeper than {MAX_YAML_DEPTH} levels")
            stack.append([event.anchor, 1])
            continue
        if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            anchor, size = stack.pop()
        elif isinstance(event, yaml.ScalarEvent):
            anchor, size = event.anchor, len(event.value) + 1
        elif isinstance(event, yaml.AliasEvent):
            if any(frame[0] == event.anchor for frame in stack):
                raise ConfigError(f"{where}: alias *{event.anchor} refers to a value that contains it")
            anchor, size = None, sizes.get(event.anchor or "", 1)
        else:
            continue
        if anchor:
            sizes[anchor] = size
        if stack:
            stack[-1][1] += size
        total += size if not stack else 0
        if max(total, stack[-1][1] if stack else 0) > MAX_YAML_EXPANDED:
            raise ConfigError(f"{where} expands to more than {MAX_YAML_EXPANDED >> 10} KiB once its aliases (*name) "
                              f"are replaced by what they name; write the values out or use fewer aliases")


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
