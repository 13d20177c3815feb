"""What plm made, in formats other tools read: CSV / Parquet embeddings, faiss indexes, safetensors weights.

- :func:`write_embeddings_csv`: ``path,label,embedding_0,…,embedding_{D-1}`` (one row per image;
  ``label`` is the class sub-folder, empty when there is none; floats written so they read back
  exactly as float32). A text cell that a spreadsheet would run as a formula (it starts with
  ``=``, ``+``, ``-``, ``@``, a tab or a carriage return) is written with a leading ``'``.
- :func:`write_embeddings_parquet`: columns ``path`` (string), ``label`` (string, null when
  none) and ``embedding`` (fixed-size list of D float32); the file's schema metadata ``plm``
  holds the root folder and the model identity as JSON. Needs ``pyarrow`` (``plm[parquet]``).

In both, rows whose vector is NaN, infinite or all zeros are left out (and counted), and a name
with bytes that are not UTF-8 is written as it is shown everywhere (each such byte as ``\\xNN``),
since both formats hold UTF-8 text (:class:`EmbeddingsExport` counts all three).
- :func:`write_faiss`: a plain faiss index file (``faiss.read_index``) and an id list JSON
  (``paths[i]`` is id i). Every kind searches by squared L2 distance (the exact kind becomes an
  ``IndexFlatL2``); cosine indexes hold unit vectors, so ``d = 2 - 2·cos`` (plm reports ``d / 2 =
  1 - cos``): normalise queries to unit length.
- :func:`write_safetensors`: a checkpoint's model weights as safetensors plus a JSON config
  (model config, preprocessing, dimensions) that rebuilds the network with
  ``plm.models.create_model(ModelConfig(**config["model_config"]), pretrained=False)``.

Every file is written atomically. :func:`outputs` lists, for each format, the files written and
the kind of existing file each may replace (the command checks them before any work).
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from plm.errors import UserError
from plm.search.checks import bad_rows
from plm.utils.paths import Kind, display_path, json_format, read_head

IDS_FORMAT = "plm-faiss-ids"
MODEL_FORMAT = "plm-model-safetensors"
#: a CSV cell starting with one of these is a formula to a spreadsheet (written with a leading ')
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@dataclass
class EmbeddingsExport:
    """What an embeddings export wrote: rows, and what was left out or changed on the way."""

    path: Path
    rows: int
    nonfinite: int = 0  #: rows left out: NaN or infinite vectors
    zero: int = 0  #: rows left out: all-zero vectors
    escaped: int = 0  #: names with bytes that are not UTF-8 (written with \\xNN)
    example: str = ""  #: the first of them, as written
    neutralised: int = 0  #: CSV cells written with a leading ' (they would run as formulas)

    def notes(self) -> list[str]:
        """One line for each thing the user should know (empty when nothing was left out or changed)."""
        out = []
        if self.nonfinite or self.zero:
            what = " and ".join(part for part in (f"{self.nonfinite} NaN or infinite" if self.nonfinite else "",
                                                  f"{self.zero} all-zero" if self.zero else "") if part)
            out.append(f"left out {what} vector(s), which cannot be searched (re-run plm embed with the same --out "
                       f"to recompute them)")
        if self.escaped:
            out.append(f"{self.escaped} name(s) are not valid UTF-8: written with \\xNN for each such byte "
                       f"(e.g. {self.example})")
        if self.neutralised:
            out.append(f"{self.neutralised} text cell(s) start with =, +, -, @, a tab or a carriage return: written "
                       f"with a leading ' so that spreadsheets do not run them as formulas")
        return out


def _label_names(labels: np.ndarray, class_names: dict[int, str]) -> list[Optional[str]]:
    return [None if int(y) < 0 else class_names.get(int(y), str(int(y))) for y in labels]


def _rows(store: Any, path: Path) -> tuple[EmbeddingsExport, np.ndarray, list[str], list[Optional[str]]]:
    """(report, kept row numbers, their paths and labels as UTF-8 text) of an embeddings export."""
    nonfinite, zero = bad_rows(store.vectors)
    keep = np.flatnonzero(~(nonfinite | zero))
    names = _label_names(store.labels, store.class_names)
    report = EmbeddingsExport(path, len(keep), int(nonfinite.sum()), int(zero.sum()))
    paths = [_text(store.paths[i], report) for i in keep]
    labels = [None if name is None else _text(name, report) for name in (names[i] for i in keep)]
    return report, keep, paths, labels


def _text(raw: str, report: EmbeddingsExport) -> str:
    """``raw`` as UTF-8 text: each byte of a name that is not UTF-8 as ``\\xNN`` (counted)."""
    text = display_path(raw)
    if text != raw:
        report.escaped += 1
        report.example = report.example or text
    return text


def _cell(text: str, report: EmbeddingsExport) -> str:
    if text.startswith(FORMULA_STARTS):
        report.neutralised += 1
        return "'" + text
    return text


def write_embeddings_csv(store: Any, path: str | os.PathLike) -> EmbeddingsExport:
    """An :class:`~plm.search.EmbeddingStore` as CSV (see the module docs)."""
    from plm.utils.io import atomic_write_bytes

    path = Path(path)
    report, keep, paths, labels = _rows(store, path)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")  # RFC 4180: a name holding a line break is quoted
    writer.writerow(["path", "label", *(f"embedding_{j}" for j in range(store.dim))])
    for i, p, name in zip(keep, paths, labels, strict=True):
        writer.writerow([_cell(p, report), _cell(name or "", report), *(f"{float(v):.9g}" for v in store.vectors[i])])
    atomic_write_bytes(buf.getvalue().encode("utf-8"), path)
    return report


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as err:
        raise UserError("Parquet export needs pyarrow: pip install 'plm[parquet]' (or pyarrow); "
                        "CSV works without it (--out FILE.csv)") from err
    return pyarrow


def write_embeddings_parquet(store: Any, path: str | os.PathLike) -> EmbeddingsExport:
    """An :class:`~plm.search.EmbeddingStore` as Parquet (see the module docs).

    Raises:
        UserError: pyarrow is not installed.
    """
    pa = _pyarrow()
    import pyarrow.parquet as pq

    from plm.utils.io import atomic_write_bytes

    path = Path(path)
    report, keep, paths, labels = _rows(store, path)
    flat = pa.array(np.ascontiguousarray(store.vectors[keep], np.float32).reshape(-1), type=pa.float32())
    table = pa.table({"path": pa.array(paths, type=pa.string()), "label": pa.array(labels, type=pa.string()),
                      "embedding": pa.FixedSizeListArray.from_arrays(flat, store.dim)})
    meta = {"root": store.root, "model": store.model, "dim": store.dim}
    table = table.replace_schema_metadata({"plm": json.dumps(meta)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(sink.getvalue().to_pybytes(), path)
    return report


def ids_path_for(path: str | os.PathLike) -> Path:
    """The id list written next to a faiss file: ``photos.faiss`` → ``photos.ids.json``."""
    path = Path(path)
    return path.with_name(path.stem + ".ids.json")


def write_faiss(idx: Any, path: str | os.PathLike) -> tuple[Path, Path]:
    """A :class:`~plm.search.SearchIndex` as a faiss index file plus its id list; returns both paths.

    Raises:
        UserError: faiss is not installed.
    """
    from plm.search.index import _faiss
    from plm.utils.io import atomic_write_bytes, atomic_write_json

    faiss = _faiss("faiss export")
    vi = idx.index
    if vi.kind == "exact":  # the same convention as the approximate kinds: squared L2 (on unit vectors for cosine)
        index = faiss.IndexFlatL2(vi.dim)
        index.add(np.ascontiguousarray(vi.vectors, np.float32))
    else:
        index = vi._faiss_index  # search parameters as plm index tuned them
    path = Path(path)
    atomic_write_bytes(faiss.serialize_index(index).tobytes(), path)
    distance = ("squared L2 distance of unit vectors = 2 - 2 cos (lower is nearer; plm reports half of it, "
                "1 - cos)" if vi.metric == "cosine" else
                "squared L2 distance (lower is nearer; plm reports its square root)")
    ids = ids_path_for(path)
    atomic_write_json({"format": IDS_FORMAT, "version": 1, "faiss_index": path.name, "kind": vi.kind,
                       "metric": vi.metric, "faiss_metric": "l2", "faiss_distance": distance,
                       "normalize_queries": vi.metric == "cosine", "params": vi.params, "dim": vi.dim,
                       "root": idx.root, "model": idx.model, "paths": list(idx.paths),
                       "labels": _label_names(idx.labels, idx.class_names)}, ids)
    return path, ids


def config_path_for(path: str | os.PathLike) -> Path:
    """The config written next to a safetensors file: ``model.safetensors`` → ``model.json``."""
    path = Path(path)
    return path.with_name(path.stem + ".json")


def write_safetensors(checkpoint: str | os.PathLike, path: str | os.PathLike) -> tuple[Path, Path]:
    """A plm checkpoint's model (``best.pt``, ``last.pt`` or a saved model) as safetensors + JSON config.

    Raises:
        UserError: safetensors is not installed, or the file is not a plm checkpoint.
    """
    try:
        from safetensors.torch import save as st_save
    except ImportError as err:
        raise UserError("safetensors export needs the safetensors package: pip install safetensors") from err
    from plm.models import load_model
    from plm.utils.io import atomic_write_bytes, atomic_write_json, safe_torch_load

    try:
        model = load_model(checkpoint)
        ckpt = safe_torch_load(checkpoint)
    except (ValueError, FileNotFoundError) as err:
        raise UserError(str(err)) from err
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    config = {"format": MODEL_FORMAT, "version": 1, "model_config": model.config.to_dict(),
              "preprocess": model.preprocess.to_dict(), "feature_dim": int(model.backbone.feature_dim),
              "embed_dim": int(model.out_dim), "source": str(Path(checkpoint).resolve())}
    for key in ("epoch", "method"):
        if key in ckpt and isinstance(ckpt[key], (int, str)):
            config[key] = ckpt[key]
    if isinstance(ckpt.get("config"), dict):
        config["train_config"] = ckpt["config"]
    path = Path(path)
    metadata = {"format": MODEL_FORMAT, "model_config": json.dumps(config["model_config"])}
    atomic_write_bytes(st_save(state, metadata=metadata), path)
    cfg_path = config_path_for(path)
    atomic_write_json(config, cfg_path)
    return path, cfg_path


# ------------------------------------------------------------------ the files each format writes

def _is_plm_csv(path: Path) -> bool:
    return read_head(path, 64).startswith(b"path,label,embedding_0")


def _is_plm_parquet(path: Path) -> bool:
    """A Parquet file whose footer holds plm's schema metadata (read without pyarrow)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"PAR1":
                return False
            fh.seek(-8, os.SEEK_END)
            tail = fh.read(8)
            size = int.from_bytes(tail[:4], "little")
            if tail[4:] != b"PAR1" or size > 1 << 26:
                return False
            fh.seek(-8 - size, os.SEEK_END)
            footer = fh.read(size)
    except OSError:
        return False
    return b"plm" in footer and b'{"root": ' in footer and b'"model": ' in footer


def _is_plm_faiss(path: Path) -> bool:
    """A faiss file (a four-letter code starting with ``I``) that its plm id list names."""
    ids = ids_path_for(path)
    if not read_head(path, 1) == b"I" or json_format(ids) != IDS_FORMAT:
        return False
    try:
        return json.loads(ids.read_text(encoding="utf-8")).get("faiss_index") == path.name
    except (OSError, ValueError):
        return False


def _is_plm_safetensors(path: Path) -> bool:
    """A safetensors file whose header metadata says plm wrote it."""
    head = read_head(path, 8)
    size = int.from_bytes(head, "little") if len(head) == 8 else 0
    if not 2 <= size <= 1 << 24:
        return False
    try:
        header = json.loads(read_head(path, 8 + size)[8:])
    except ValueError:
        return False
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(meta, dict) and meta.get("format") == MODEL_FORMAT


CSV = Kind("a plm CSV export", _is_plm_csv, (".csv",))
PARQUET = Kind("a plm Parquet export", _is_plm_parquet, (".parquet",))
FAISS = Kind("a faiss index exported by plm (its NAME.ids.json names it)", _is_plm_faiss, (".faiss", ".index"))
SAFETENSORS = Kind("a safetensors file exported by plm", _is_plm_safetensors, (".safetensors",))
IDS_JSON = Kind("a plm faiss id list", lambda p: json_format(p) == IDS_FORMAT)
MODEL_JSON = Kind("a plm model config (safetensors export)", lambda p: json_format(p) == MODEL_FORMAT)


def outputs(fmt: str, path: str | os.PathLike) -> list[tuple[str, Path, Kind]]:
    """(what, path, kind it may replace) of every file an export to ``fmt`` at ``path`` writes: the
    file itself (``--out``), then its side file (``NAME.ids.json`` for faiss, ``NAME.json`` for safetensors)."""
    path = Path(path)
    main = [("--out", path, {"csv": CSV, "parquet": PARQUET, "faiss": FAISS, "safetensors": SAFETENSORS}[fmt])]
    if fmt == "faiss":
        return main + [("--out's id list", ids_path_for(path), IDS_JSON)]
    if fmt == "safetensors":
        return main + [("--out's model config", config_path_for(path), MODEL_JSON)]
    return main
