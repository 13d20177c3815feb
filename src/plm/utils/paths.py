"""Output-path guard: what a command may write, checked before any long work starts.

The rules (docs/search.md, "Output files"):

- an output is never one of the command's inputs (nor another output of the same command);
- an existing file is replaced only when it is of the kind the command writes (a plm index for
  ``plm index --out``, a plm search report for ``plm search --json`` …), or with ``--force``;
- a folder given as an output file, an output below a regular file, and an output folder that is
  a file are refused with a clear message;
- the folder an output goes to must exist or be creatable, and be writable.

Every refusal is an :class:`plm.errors.OutputError` (one line, exit status 2).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple, Optional

from plm.errors import OutputError
from plm.utils.io import describe_os_error


class Kind(NamedTuple):
    """A kind of file plm writes: what it is (for messages), how to recognise one, and the file-name
    extensions it is written under (the first is the usual one; empty: any name)."""

    what: str
    test: Callable[[Path], bool]
    suffixes: tuple[str, ...] = ()


#: extensions whose files other tools open as a format of their own, with how plm makes such a file
#: (a command asked to write another kind under one of them refuses, pointing here)
KNOWN_SUFFIXES: dict[str, tuple[str, str]] = {
    ".npz": ("a NumPy .npz file", "plm embed and plm index write plm's .npz files"),
    ".json": ("a JSON file", ""),
    ".html": ("an HTML page", ""),
    ".htm": ("an HTML page", ""),
    ".csv": ("a CSV file", "a CSV of embeddings is made with plm export EMBEDDINGS.npz --out NAME.csv"),
    ".parquet": ("a Parquet file", "a Parquet file of embeddings is made with plm export EMBEDDINGS.npz "
                                   "--out NAME.parquet"),
    ".faiss": ("a faiss index", "a faiss index is made from a plm index with plm export INDEX.npz --out NAME.faiss"),
    ".index": ("a faiss index", "a faiss index is made from a plm index with plm export INDEX.npz --out NAME.faiss"),
    ".safetensors": ("a safetensors file", "safetensors weights are made from a checkpoint with plm export "
                                           "CHECKPOINT.pt --out NAME.safetensors"),
    ".pt": ("a PyTorch checkpoint", "checkpoints are written by plm train"),
    ".pth": ("a PyTorch weights file", "checkpoints are written by plm train"),
    **{ext: ("an image", "plm draws its figures into self-contained HTML pages (.html)")
       for ext in (".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg", ".pdf", ".tif", ".tiff", ".bmp")},
    ".yaml": ("a YAML file", ""),
    ".yml": ("a YAML file", ""),
}


def check_suffix(path: str | os.PathLike, flag: str, kind: Kind, known_only: bool = False) -> None:
    """Refuse an output name whose extension says another format than ``kind`` (``plm index --out x.faiss``).

    Args:
        path: the output file.
        flag: the flag that named it, for the message.
        kind: what will be written; nothing is checked when it names no extensions.
        known_only: refuse only extensions of :data:`KNOWN_SUFFIXES` (``plm export --format`` accepts others).

    Raises:
        OutputError: one line naming the right extension, and how to make a file of the asked-for kind.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not kind.suffixes or suffix in kind.suffixes or (known_only and suffix not in KNOWN_SUFFIXES):
        return
    name, hint = KNOWN_SUFFIXES.get(suffix, (f"a {suffix} file" if suffix else "a name without an extension", ""))
    better = path.with_name((path.stem if suffix else path.name) + kind.suffixes[0])
    raise OutputError(f"{flag} {path}: this writes {kind.what} ({' or '.join(kind.suffixes)}), which is not "
                      f"{name}; name it {better}{f' ({hint})' if hint else ''}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _below_file(path: Path) -> Optional[Path]:
    """The first ancestor of ``path`` that exists and is not a folder, if any."""
    for parent in reversed(path.absolute().parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def check_output_dir(folder: str | os.PathLike, flag: str = "--out", create: bool = False) -> Path:
    """Check that ``folder`` is (or can become) a writable folder; optionally create it.

    Raises:
        OutputError: it is a file, lies below a file, or cannot be created or written to.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{flag} {folder} is a file, not a folder; choose a folder path")
    blocker = _below_file(folder)
    if blocker is not None:
        raise OutputError(f"{flag} {folder}: {blocker} is a file, not a folder")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
            existing = folder
        fd, probe = tempfile.mkstemp(prefix=".plm-write-check.", suffix=".tmp", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        where = folder if existing == folder else f"{folder} (in {existing})"
        raise OutputError(f"cannot write to {flag} {where}: {describe_os_error(err)}") from None
    return folder


def check_output_file(path: str | os.PathLike, flag: str = "--out", inputs: Iterable[str | os.PathLike] = (),
                      kind: Optional[Kind] = None, force: bool = False,
                      others: Iterable[tuple[str, Optional[str | os.PathLike]]] = (),
                      side_of: Optional[str] = None, known_suffixes_only: bool = False) -> Path:
    """Check an output file path before any work; returns it as a :class:`Path`.

    Args:
        path: the output file.
        flag: the flag that named it, or for a side file what it is (``"--out's id list"``), for messages.
        inputs: the command's input files (and folders); ``path`` must be none of them.
        kind: (description, test) of the files this output may replace; ``None``: none may be.
        force: replace an existing file of another kind.
        others: (flag, path) of the command's other outputs, which must differ from ``path``.
        side_of: for a side file whose name derives from another output's: that output's flag
            (the one to change).
        known_suffixes_only: check the extension with :func:`check_suffix`'s ``known_only``.

    Raises:
        OutputError: ``path`` is an input or another output, a folder, below a file, named with an
            extension of another format than ``kind``'s, an existing file of another kind (without
            ``force``), or in a folder that cannot be written.
    """
    path = Path(path)
    change = side_of or flag
    for item in inputs:
        if item is not None and _same_file(path, Path(item)):
            raise OutputError(f"{flag} {path} is also an input of this command; writing it would destroy the "
                              f"input: choose another {change} path")
    for other_flag, other in others:
        if other is not None and _same_file(path, Path(other)):
            raise OutputError(f"{flag} and {other_flag} name the same file {path}; "
                              + (f"choose another {change} path" if side_of else "give each its own path"))
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; give a file path (e.g. {path / 'out'}{path.suffix or ''})")
    blocker = _below_file(path)
    if blocker is not None:
        raise OutputError(f"{flag} {path}: {blocker} is a file, not a folder")
    if kind is not None:
        check_suffix(path, flag, kind, known_suffixes_only)
    if path.exists() and not force:
        if kind is None or not kind.test(path):
            found = file_kind(path)
            raise OutputError(f"{flag} {path} exists and is not {kind.what if kind else 'a file this command writes'}"
                              f"{f' (it is {found})' if found else ''}; choose another path, remove it, "
                              f"or pass --force to replace it")
    check_output_dir(path.parent, flag)
    return path


# ------------------------------------------------------------------------------ kinds of file

def npz_format(path: str | os.PathLike) -> Optional[str]:
    """The ``meta["format"]`` of a plm ``.npz`` (``plm-embeddings``, ``plm-index``; read from its small
    ``meta`` member only), or ``None``."""
    import numpy as np

    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo("meta.npy")
            if info.file_size > 1 << 22:
                return None
            meta = np.load(io.BytesIO(zf.read(info)), allow_pickle=False)
        data = json.loads(str(meta))
        fmt = data.get("format") if isinstance(data, dict) else None
        return fmt if isinstance(fmt, str) else None
    except Exception:  # noqa: BLE001 - anything unreadable is simply not ours
        return None


def _read_json(path: Path) -> Any:
    """The JSON value of ``path`` (``None`` when it is not a readable JSON file of at most 256 MiB)."""
    try:
        if path.stat().st_size > 1 << 28:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def _json_keys(path: Path) -> set[str]:
    data = _read_json(path)
    return set(data) if isinstance(data, dict) else set()


def json_format(path: str | os.PathLike) -> Optional[str]:
    """The ``"format"`` tag of a JSON object file (plm's side files carry one), else ``None``."""
    data = _read_json(Path(path))
    fmt = data.get("format") if isinstance(data, dict) else None
    return fmt if isinstance(fmt, str) else None


def _is_backbone_list(path: Path) -> bool:
    data = _read_json(path)
    return isinstance(data, list) and bool(data) and all(isinstance(b, dict) and {"name", "feature_dim"} <= set(b)
                                                         for b in data)


def read_head(path: Path, n: int = 4096) -> bytes:
    """The first ``n`` bytes of ``path`` (empty when it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def is_plm_html(path: Path) -> bool:
    """An HTML page written by plm (:class:`plm.viz.html.Page`)."""
    head = read_head(path)
    return head.startswith(b"<!DOCTYPE html>") and (b'name="generator" content="plm' in head
                                                       or b"Content-Security-Policy" in head and b"<title>plm" in head)


def is_torch_checkpoint(path: Path) -> bool:
    """A ``torch.save`` zip file (``last.pt``, ``best.pt``)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("/data.pkl") for n in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def is_plm_yaml_config(path: Path) -> bool:
    """A ``config.yaml`` written by ``plm train``."""
    from plm.utils.config import ConfigError, load_yaml_text

    try:
        data = load_yaml_text(path.read_text(encoding="utf-8"), str(path)) if path.stat().st_size < 1 << 20 else None
    except (OSError, ValueError, ConfigError):
        return False
    return isinstance(data, dict) and {"dataset", "method", "mode"} <= set(data)


def is_metrics_csv(path: Path) -> bool:
    """A ``metrics.csv`` written by ``plm train``."""
    return read_head(path, 64).startswith(b"epoch,")


EMBEDDINGS = Kind("a plm embeddings file", lambda p: npz_format(p) == "plm-embeddings", (".npz",))
INDEX = Kind("a plm index file", lambda p: npz_format(p) == "plm-index", (".npz",))
SEARCH_JSON = Kind("a plm search JSON report", lambda p: {"queries", "index"} <= _json_keys(p), (".json",))
METRICS_JSON = Kind("a plm metrics JSON file", lambda p: {"recall_at", "map_at_r"} <= _json_keys(p), (".json",))
SIMILARITY_JSON = Kind("a plm similarity-report JSON file", lambda p: {"estimators", "plm_config"} <= _json_keys(p),
                       (".json",))
SUMMARY_JSON = Kind("a plm summary.json", lambda p: {"selection", "best_epoch"} <= _json_keys(p), (".json",))
DEMO_JSON = Kind("a plm demo results.json", lambda p: {"dataset", "methods"} <= _json_keys(p), (".json",))
HTML = Kind("a plm HTML report", is_plm_html, (".html", ".htm"))
CHECKPOINT = Kind("a plm checkpoint", is_torch_checkpoint, (".pt", ".pth"))
CONFIG_YAML = Kind("a plm config.yaml", is_plm_yaml_config, (".yaml", ".yml"))
METRICS_CSV = Kind("a plm metrics.csv", is_metrics_csv, (".csv",))
BACKBONES_JSON = Kind("a plm backbones JSON list", _is_backbone_list, (".json",))


def file_kind(path: Path) -> Optional[str]:
    """What plm file ``path`` is, for messages (``None`` when it is none of plm's)."""
    fmt = npz_format(path) or json_format(path)
    if fmt:
        return f"a {fmt} file"
    for kind in (SEARCH_JSON, METRICS_JSON, SIMILARITY_JSON, SUMMARY_JSON, DEMO_JSON, BACKBONES_JSON, HTML,
                 CHECKPOINT):
        if kind.test(path):
            return kind.what
    return None


def check_run_folder(folder: str | os.PathLike, files: dict[str, Kind], flag: str = "--out",
                     force: bool = False) -> Path:
    """Check (and create) an output folder whose files have fixed names.

    Args:
        folder: the output folder.
        files: file name → the :data:`Kind` an existing file of that name must be to be replaced.
        force: replace files of other kinds.

    Raises:
        OutputError: the folder is unusable, or holds a file of one of those names that plm did
            not write (without ``force``).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{flag} {folder} is a file, not a folder; choose a folder path")
    if not force and folder.is_dir():
        for name, kind in files.items():
            p = folder / name
            if p.is_dir() or (p.exists() and not kind.test(p)):
                raise OutputError(f"{flag} {folder} holds {name}, which is not {kind.what}; it would be replaced: "
                                  f"choose another {flag} folder, or pass --force")
    return check_output_dir(folder, flag, create=True)


# ---------------------------------------------------------------- names that are not valid UTF-8
# File names that are not valid UTF-8: carried losslessly, shown readably.
#
# On POSIX a file name is bytes. Python hands names that do not decode as UTF-8 over as ``str``
# with each undecodable byte as a lone surrogate (``surrogateescape``: byte ``0xE9`` is
# ``"\\udce9"``), and plm keeps that string everywhere: in embeddings and index files (NumPy
# unicode arrays hold it as is) and in ``--json`` output, where ``json`` writes it as the escape
# ``\\udce9`` (``os.fsencode(json.load(...)[...])`` gives back the original bytes). Where a name is
# shown (terminal output, HTML pages) :func:`display_path` writes each such byte as ``\\xe9``.

def display_path(name: str) -> str:
    """``name`` with every undecodable byte written as ``\\xNN`` (valid UTF-8 text, for display only)."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # surrogates that are not escaped bytes (e.g. from a JSON file)
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
