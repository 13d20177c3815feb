"""What plm made, in formats other tools read: CSV / Parquet embeddings, faiss indexes, safetensors weights.

- :func:`write_embeddings_csv`: ``path,label,embedding_0,…,embedding_{D-1}`` (one row per image;
  ``label`` is the class sub-folder, empty when there is none; floats written so they read back
  exactly as float32).
- :func:`write_embeddings_parquet`: columns ``path`` (string), ``label`` (string, null when
  none) and ``embedding`` (fixed-size list of D float32); the file's schema metadata ``plm``
  holds the root folder and the model identity as JSON. Needs ``pyarrow`` (``plm[parquet]``).
- :func:`write_faiss`: a plain faiss index file (``faiss.read_index``) and an id list JSON
  (``paths[i]`` is id i). Cosine indexes hold unit vectors: the exact kind becomes an
  ``IndexFlatIP`` (scores = cosine similarity), the approximate kinds stay L2 indexes on unit
  vectors (``d = 2 - 2·cos``); normalise queries to unit length either way.
- :func:`write_safetensors`: a checkpoint's model weights as safetensors plus a JSON config
  (model config, preprocessing, dimensions) that rebuilds the network with
  ``plm.models.create_model(ModelConfig(**config["model_config"]), pretrained=False)``.

Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from plm.errors import UserError

IDS_FORMAT = "plm-faiss-ids"
MODEL_FORMAT = "plm-model-safetensors"


def _label_names(labels: np.ndarray, class_names: dict[int, str]) -> list[Optional[str]]:
    return [None if int(y) < 0 else class_names.get(int(y), str(int(y))) for y in labels]


def write_embeddings_csv(store: Any, path: str | os.PathLike) -> Path:
    """An :class:`~plm.search.EmbeddingStore` as CSV (see the module docs); returns the path."""
    from plm.utils.io import atomic_write_bytes

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", *(f"embedding_{j}" for j in range(store.dim))])
    for p, name, vec in zip(store.paths, _label_names(store.labels, store.class_names), store.vectors, strict=True):
        writer.writerow([p, name or "", *(f"{float(v):.9g}" for v in vec)])
    path = Path(path)
    atomic_write_bytes(buf.getvalue().encode("utf-8"), path)
    return path


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as err:
        raise UserError("Parquet export needs pyarrow: pip install 'plm[parquet]' (or pyarrow); "
                        "CSV works without it (--out FILE.csv)") from err
    return pyarrow


def write_embeddings_parquet(store: Any, path: str | os.PathLike) -> Path:
    """An :class:`~plm.search.EmbeddingStore` as Parquet (see the module docs); returns the path.

    Raises:
        UserError: pyarrow is not installed.
    """
    pa = _pyarrow()
    import pyarrow.parquet as pq

    from plm.utils.io import atomic_write_bytes

    flat = pa.array(np.ascontiguousarray(store.vectors, np.float32).reshape(-1), type=pa.float32())
    table = pa.table({"path": pa.array(store.paths, type=pa.string()),
                      "label": pa.array(_label_names(store.labels, store.class_names), type=pa.string()),
                      "embedding": pa.FixedSizeListArray.from_arrays(flat, store.dim)})
    meta = {"root": store.root, "model": store.model, "dim": store.dim}
    table = table.replace_schema_metadata({"plm": json.dumps(meta)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    path = Path(path)
    atomic_write_bytes(sink.getvalue().to_pybytes(), path)
    return path


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
    if vi.kind == "exact":
        flat = faiss.IndexFlatIP(vi.dim) if vi.metric == "cosine" else faiss.IndexFlatL2(vi.dim)
        flat.add(np.ascontiguousarray(vi.vectors, np.float32))
        index, faiss_metric = flat, ("inner_product" if vi.metric == "cosine" else "l2")
    else:
        index, faiss_metric = vi._faiss_index, "l2"  # search parameters as plm index tuned them
    path = Path(path)
    atomic_write_bytes(faiss.serialize_index(index).tobytes(), path)
    distance = {"inner_product": "cosine similarity of unit vectors (higher is nearer)",
                "l2": ("squared L2 distance of unit vectors = 2 - 2 cos (lower is nearer)" if vi.metric == "cosine"
                       else "squared L2 distance (lower is nearer)")}[faiss_metric]
    ids = ids_path_for(path)
    atomic_write_json({"format": IDS_FORMAT, "version": 1, "faiss_index": path.name, "kind": vi.kind,
                       "metric": vi.metric, "faiss_metric": faiss_metric, "faiss_distance": distance,
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


def npz_format(path: str | os.PathLike) -> Optional[str]:
    """The ``meta.format`` tag of a plm ``.npz`` (``plm-embeddings``, ``plm-index``), or ``None``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "meta" not in z.files:
                return None
            meta = json.loads(str(z["meta"]))
    except Exception:  # noqa: BLE001 - anything unreadable is "not ours"
        return None
    return meta.get("format") if isinstance(meta, dict) else None
