"""Checks of what embeddings and index files hold: array schema, metadata types, vector values.

Every reader of a plm ``.npz`` file (:mod:`plm.search.store`, :mod:`plm.search.indexfile`)
validates the file against these before using it, so a damaged or hand-edited file gives one
error naming the file and what is wrong instead of a traceback deep inside a command.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np

#: array name -> (dtype kinds accepted, number of dimensions)
ArraySpec = Mapping[str, tuple[str, int]]


class FileProblem(ValueError):
    """What is wrong with a file's content (the caller adds the file name and the remedy)."""


def _kind(dtype: np.dtype) -> str:
    return {"f": "float", "i": "integer", "u": "integer", "U": "text"}.get(dtype.kind, str(dtype))


def check_members(members: Mapping[str, Any], spec: ArraySpec) -> None:
    """Each array of ``spec`` present with an accepted dtype kind and dimension (from headers).

    Raises:
        FileProblem: a missing array, or one of another dtype or dimension.
    """
    missing = [k for k in spec if k not in members]
    if missing:
        raise FileProblem(f"array(s) {', '.join(missing)} missing")
    for name, (kinds, ndim) in spec.items():
        m = members[name]
        if m.dtype.kind not in kinds or len(m.shape) != ndim:
            want = {"f": "float", "iu": "integer", "U": "text"}.get(kinds, kinds)
            raise FileProblem(f"array {name!r} is a {len(m.shape)}-d {_kind(m.dtype)} array of shape {m.shape}, "
                              f"expected a {ndim}-d {want} array")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _field(obj: Mapping[str, Any], key: str, types: tuple, where: str, required: bool = True,
           none_ok: bool = False) -> Any:
    if key not in obj:
        if required:
            raise FileProblem(f"{where}.{key} is missing")
        return None
    value = obj[key]
    if value is None and none_ok:
        return None
    ok = _is_int(value) if types == (int,) else isinstance(value, types) and not isinstance(value, bool)
    if not ok:
        names = " or ".join("integer" if t is int else {str: "string", dict: "object", list: "list"}.get(t, t.__name__)
                            for t in types)
        raise FileProblem(f"{where}.{key} must be {names}{' or null' if none_ok else ''}, "
                          f"got {type(value).__name__} {str(value)[:40]!r}")
    return value


def check_identity(model: Any, where: str = "meta.model") -> None:
    """The model record (see :mod:`plm.search.identity`) has every field with its type."""
    if not isinstance(model, dict):
        raise FileProblem(f"{where} must be an object, got {type(model).__name__} {str(model)[:40]!r}")
    source = _field(model, "source", (str,), where)
    if source not in ("backbone", "checkpoint"):
        raise FileProblem(f"{where}.source must be 'backbone' or 'checkpoint', got {source!r}")
    _field(model, "backbone", (str,), where)
    _field(model, "checkpoint", (str,), where, required=source == "checkpoint", none_ok=source == "backbone")
    _field(model, "weights", (str,), where, required=False, none_ok=True)
    _field(model, "image_size", (int,), where, required=False, none_ok=True)
    _field(model, "config", (dict,), where, required=False, none_ok=True)
    preprocess = _field(model, "preprocess", (dict,), where, required=False, none_ok=True) or {}
    _field(preprocess, "input_size", (int,), f"{where}.preprocess", required=False, none_ok=True)
    if _field(model, "dim", (int,), where) <= 0:
        raise FileProblem(f"{where}.dim must be positive, got {model['dim']}")
    _field(model, "fingerprint", (str,), where)


def check_class_names(meta: Mapping[str, Any]) -> dict[int, str]:
    """``meta.class_names`` (optional) as ``{int: str}``."""
    names = _field(meta, "class_names", (dict,), "meta", required=False, none_ok=True) or {}
    out = {}
    for k, v in names.items():
        try:
            key = int(k)
        except (TypeError, ValueError):
            raise FileProblem(f"meta.class_names keys must be class numbers, got {k!r}") from None
        if not isinstance(v, str):
            raise FileProblem(f"meta.class_names[{k!r}] must be a string, got {type(v).__name__}")
        out[key] = v
    return out


def check_common_meta(meta: Mapping[str, Any]) -> None:
    """``root`` (string), ``model`` (identity) and ``class_names`` of either file."""
    _field(meta, "root", (str,), "meta")
    check_identity(meta.get("model"))
    check_class_names(meta)


def check_index_info(info: Any, kinds: tuple[str, ...], metrics: tuple[str, ...]) -> None:
    """``meta.index`` of an index file: kind, metric, dim, count, integer params and the optional sha256."""
    where = "meta.index"
    if not isinstance(info, dict):
        raise FileProblem(f"{where} must be an object, got {type(info).__name__} {str(info)[:40]!r}")
    if _field(info, "kind", (str,), where) not in kinds:
        raise FileProblem(f"{where}.kind must be one of {', '.join(kinds)}, got {info['kind']!r}")
    if _field(info, "metric", (str,), where) not in metrics:
        raise FileProblem(f"{where}.metric must be one of {', '.join(metrics)}, got {info['metric']!r}")
    if _field(info, "dim", (int,), where) <= 0 or _field(info, "count", (int,), where) < 0:
        raise FileProblem(f"{where}.dim must be positive and count not negative, got {info['dim']}, {info['count']}")
    digest = _field(info, "sha256", (str,), where, required=False, none_ok=True)
    if digest is not None and len(digest) != 64:
        raise FileProblem(f"{where}.sha256 must be 64 hex digits, got {digest[:70]!r}")
    params = _field(info, "params", (dict,), where, required=False, none_ok=True) or {}
    for k, v in params.items():
        if not _is_int(v) or v < 1:
            raise FileProblem(f"{where}.params.{k} must be a positive integer, got {v!r}")


def bad_rows(vectors: np.ndarray, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """(non-finite, all-zero) boolean masks of the rows of ``vectors``: neither can be searched."""
    n = len(vectors)
    nonfinite, zero = np.zeros(n, bool), np.zeros(n, bool)
    for s in range(0, n, chunk):
        part = vectors[s:s + chunk]
        nonfinite[s:s + chunk] = ~np.isfinite(part).all(1)
        zero[s:s + chunk] = ~(part != 0).any(1)
    return nonfinite, zero & ~nonfinite


def describe_bad_rows(paths: list[str], nonfinite: np.ndarray, zero: np.ndarray,
                      display: Optional[Any] = None) -> str:
    """``"3 vector(s) hold NaN or infinite values and 1 is all zeros (e.g. a.jpg, b.jpg)"``."""
    parts = []
    if nonfinite.any():
        parts.append(f"{int(nonfinite.sum())} vector(s) hold NaN or infinite values")
    if zero.any():
        parts.append(f"{int(zero.sum())} vector(s) are all zeros")
    show = display or str
    examples = [show(paths[i]) for i in np.flatnonzero(nonfinite | zero)[:3]]
    return " and ".join(parts) + (f" (e.g. {', '.join(examples)})" if examples else "")
