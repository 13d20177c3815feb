"""Vector indexes: exact, HNSW, IVF and re-ranked PQ fast-scan (faiss), with recall checks.

Distances are reported the same way by every kind: ``1 - cosine`` for the ``cosine`` metric
(vectors L2-normalised; every kind searches by L2 on unit vectors, which ranks the same, and
reports ``|a - b|² / 2``) and the Euclidean distance for ``l2``. The exact kind stores the vectors
themselves and searches them with the project's one exact k-NN (:func:`plm.neighbors.exact.knn`:
faiss's flat index when installed, else torch blocks; equal distances in id order), so it works
without faiss; ``hnsw``, ``ivf`` and ``pq`` need ``faiss-cpu``.

``pq`` scans 4-bit product-quantizer codes of *every* vector with SIMD (faiss fast-scan) and
re-ranks the best ``k · k_factor`` candidates with exact distances: on vectors without cluster
structure, where graphs (HNSW) and cells (IVF) must visit most of the collection, it is the kind
that keeps recall high at several times the exact speed (see docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from plm.errors import UserError
from plm.utils.choices import INDEX_KINDS as KINDS
from plm.utils.choices import INDEX_METRICS as METRICS
from plm.utils.deprecation import deprecated_names

#: old spellings of this module's public names (kept for one release; :mod:`plm.search` re-exports them)
OLD_NAMES = {"exact_neighbours": "exact_neighbors", "recall_at_k": "ann_recall"}


def have_faiss() -> bool:
    """Whether faiss can be imported."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its import chatter is not for users
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _faiss(kind: str) -> Any:
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        import faiss
    except ImportError as err:
        raise UserError(f"the {kind} index needs faiss: pip install faiss-cpu (or plm[faiss]); "
                        f"--kind exact works without it") from err
    return faiss


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32, C-contiguous."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def choose_metric(vectors: np.ndarray) -> str:
    """``cosine`` when every row is a unit vector (plm embeddings are), else ``l2``."""
    if len(vectors) == 0:
        return "cosine"
    return "cosine" if bool(np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)) else "l2"


def _check_2d(x: np.ndarray, dim: Optional[int], what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (N, D), got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"dimension mismatch: the index holds {dim}-d vectors but the {what} are "
                         f"{x.shape[1]}-d; embed them with the model the index was built with")
    return np.ascontiguousarray(x)


def _exact_search(db: np.ndarray, q: np.ndarray, k: int, metric: str,
                  exclude: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k with :func:`plm.neighbors.exact.knn` (faiss's flat index when installed, else torch
    blocks of queries; memory bounded): squared L2 distances (``l2``) or ``1 - cos`` (``cosine``, unit rows)."""
    from plm.neighbors.exact import knn

    block = max(1, min(1024, (1 << 24) // max(1, len(db))))  # ≤ 64 MB of distances per block
    d, ids = knn(q, db, k, block_size=block, use_faiss=have_faiss(), exclude=exclude,
                 conditioned=metric == "l2")  # unit vectors need no conditioning (nor its copy)
    return (d / 2.0 if metric == "cosine" else d), ids  # |a-b|^2 / 2 = 1 - cos for unit vectors


class VectorIndex:
    """A nearest-neighbour index over float32 vectors (rows are ids 0…N-1).

    Build with :meth:`build`; query with :meth:`search`. ``params`` holds the kind's settings
    (``M``/``ef_construction``/``ef_search`` for HNSW, ``nlist``/``nprobe`` for IVF).
    """

    def __init__(self, kind: str, metric: str, dim: int, count: int, params: dict[str, int],
                 vectors: Optional[np.ndarray] = None, faiss_index: Any = None):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.kind, self.metric, self.dim, self.count = kind, metric, int(dim), int(count)
        self.params = dict(params)
        self.vectors = vectors
        self._faiss_index = faiss_index
        self._direct_map = False  # IVF: built on the first vector() call
        self._apply_search_params()

    @classmethod
    def build(cls, vectors: np.ndarray, kind: str = "exact", metric: str = "auto", *, M: int = 32,
              ef_construction: int = 80, ef_search: Optional[int] = None, nlist: Optional[int] = None,
              nprobe: Optional[int] = None, pq_m: Optional[int] = None, k_factor: Optional[int] = None,
              seed: int = 0) -> VectorIndex:
        """Index ``vectors`` (N, D).

        Args:
            vectors: the collection.
            kind: ``exact``, ``hnsw``, ``ivf`` or ``pq``.
            metric: ``cosine``, ``l2`` or ``auto`` (cosine when every row has unit norm).
            M: HNSW links per node.
            ef_construction: HNSW build-time beam width.
            ef_search: HNSW search-time beam width (default 128; tune with :func:`tune_search`).
            nlist: IVF cells (default ``4·sqrt(N)``, at most N/39).
            nprobe: IVF cells visited per query (default ``nlist/16``).
            pq_m: PQ sub-quantizers of 4 bits each; must divide D (default ``D/2`` up to 256-d, else ``D/4``).
            k_factor: PQ candidates re-ranked exactly, as a multiple of k (default 20).
            seed: IVF / PQ training sample seed.

        Raises:
            ValueError: bad arguments or vectors.
            UserError: an approximate kind without faiss installed.
        """
        x = _check_2d(vectors, None, "vectors")
        if len(x) == 0:
            raise ValueError("cannot index an empty collection: no vectors")
        if metric == "auto":
            metric = choose_metric(x)
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS} or 'auto', got {metric!r}")
        if metric == "cosine":
            x = unit_rows(x)
        n, d = x.shape
        ef_search = 128 if ef_search is None else ef_search
        k_factor = 20 if k_factor is None else k_factor
        if kind == "exact":
            return cls(kind, metric, d, n, {}, vectors=x)
        if kind == "hnsw":
            faiss = _faiss(kind)
            if M < 2 or ef_construction < 1 or ef_search < 1:
                raise ValueError("HNSW needs M >= 2, ef_construction >= 1 and ef_search >= 1")
            index = faiss.IndexHNSWFlat(d, int(M))
            index.hnsw.efConstruction = int(ef_construction)
            index.add(x)
            return cls(kind, metric, d, n, {"M": int(M), "ef_construction": int(ef_construction),
                                            "ef_search": int(ef_search)}, faiss_index=index)
        if kind == "ivf":
            faiss = _faiss(kind)
            nlist = int(nlist or max(1, min(int(4 * np.sqrt(n)), n // 39)))
            if not 1 <= nlist <= n:
                raise ValueError(f"nlist must be in [1, {n}] for {n} vectors, got {nlist}")
            quantizer = faiss.IndexFlatL2(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_L2)
            rng = np.random.default_rng(seed)
            train = x if n <= 64 * nlist else x[np.sort(rng.choice(n, 64 * nlist, replace=False))]
            index.cp.min_points_per_centroid = min(39, max(1, len(train) // nlist))  # no warning on tiny sets
            index.train(train)
            index.add(x)
            nprobe = int(nprobe or max(1, nlist // 16))
            return cls(kind, metric, d, n, {"nlist": nlist, "nprobe": min(nprobe, nlist)},
                       faiss_index=index)  # faiss's wrapper keeps the quantizer alive
        if kind == "pq":
            faiss = _faiss(kind)
            pq_m = int(pq_m or (d // 2 if d <= 256 else d // 4))
            if pq_m < 1 or d % pq_m:
                raise ValueError(f"pq_m must divide the dimension {d}, got {pq_m}")
            if n < 64:
                raise ValueError(f"the pq index needs at least 64 vectors, got {n}; use the exact kind")
            base = faiss.IndexPQFastScan(d, pq_m, 4, faiss.METRIC_L2)
            rng = np.random.default_rng(seed)
            train = x if n <= 65_536 else x[np.sort(rng.choice(n, 65_536, replace=False))]
            base.pq.cp.min_points_per_centroid = min(39, max(1, len(train) // 16))
            base.train(train)
            index = faiss.IndexRefineFlat(base)  # the wrapper keeps `base` alive
            index.add(x)
            return cls(kind, metric, d, n, {"pq_m": pq_m, "k_factor": int(k_factor)}, faiss_index=index)
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    # -- searching -----------------------------------------------------------------------------
    @property
    def search_param(self) -> Optional[str]:
        """The speed/recall knob: ``ef_search`` (HNSW), ``nprobe`` (IVF), ``k_factor`` (PQ) or ``None``."""
        return {"hnsw": "ef_search", "ivf": "nprobe", "pq": "k_factor"}.get(self.kind)

    def set_search_param(self, value: int) -> None:
        """Set ``ef_search`` (HNSW), ``nprobe`` (IVF, capped at ``nlist``) or ``k_factor`` (PQ)."""
        if self.search_param is None:
            raise ValueError("the exact index has no search parameter")
        if int(value) < 1:
            raise ValueError(f"{self.search_param} must be >= 1, got {value}")
        if self.kind == "ivf":
            value = min(int(value), self.params["nlist"])
        self.params[self.search_param] = int(value)
        self._apply_search_params()

    def _apply_search_params(self) -> None:
        idx = self._faiss_index
        if idx is None or self.kind == "exact":
            return
        if self.kind == "hnsw":
            idx.hnsw.efSearch = int(self.params["ef_search"])
        elif self.kind == "ivf":
            idx.nprobe = int(self.params["nprobe"])
        elif self.kind == "pq":
            idx.k_factor = float(self.params["k_factor"])

    def search(self, queries: np.ndarray, k: int = 10,
               exclude: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest ids of each query and their distances, nearest first.

        Args:
            queries: (Q, D) vectors.
            k: results per query.
            exclude: (Q,) an id never returned for each query (its own entry, when the query is an
                indexed item; ``-1``: none).

        Returns:
            distances (Q, k') float32 and ids (Q, k') int64 with ``k' = min(k, N)``; an approximate
            index may return fewer hits for some queries (and a query with an excluded id has at most
            N - 1), padded with id ``-1`` and distance ``inf``.

        Raises:
            ValueError: ``queries`` is not 2-D or has another dimension than the index.
        """
        if exclude is None:
            return self._search(queries, k)
        ex = np.asarray(exclude, dtype=np.int64).reshape(-1)
        d, ids = self._search(queries, k + 1)
        if len(ex) != len(ids):
            raise ValueError(f"exclude must hold one id (or -1) per query, got {len(ex)} for {len(ids)} queries")
        width = min(int(k), self.count)
        out_d = np.full((len(ids), width), np.inf, np.float32)
        out_i = np.full((len(ids), width), -1, np.int64)
        for r in range(len(ids)):
            keep = (ids[r] >= 0) & (ids[r] != ex[r])
            n = min(width, int(keep.sum()))
            out_d[r, :n], out_i[r, :n] = d[r][keep][:n], ids[r][keep][:n]
        return out_d, out_i

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _check_2d(queries, self.dim, "queries")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(int(k), self.count)
        if self.metric == "cosine":
            q = unit_rows(q)
        if len(q) == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        if self.kind == "exact":
            assert self.vectors is not None  # the exact kind stores its vectors
            d, ids = _exact_search(self.vectors, q, k, self.metric)
        else:
            d, ids = self._faiss_index.search(q, k)
            d = d / 2.0 if self.metric == "cosine" else d  # |a-b|^2 / 2 = 1 - cos for unit vectors
        d = np.maximum(np.asarray(d, np.float32), 0.0)  # rounding can give -1e-7 for identical vectors
        if self.metric == "l2":
            d = np.sqrt(d)
        d[ids < 0] = np.inf
        return d, ids.astype(np.int64)

    def vector(self, i: int) -> np.ndarray:
        """The stored vector of id ``i`` as a (1, D) float32 array (unit length for ``cosine``).

        Raises:
            IndexError: no such id.
        """
        if not 0 <= int(i) < self.count:
            raise IndexError(f"id {i} is not in [0, {self.count})")
        if self.kind == "exact":
            assert self.vectors is not None  # the exact kind stores its vectors
            return self.vectors[int(i):int(i) + 1]
        if self.kind == "ivf" and not self._direct_map:  # IVF lists need an id -> list map to give vectors back
            self._faiss_index.make_direct_map()
            self._direct_map = True
        return np.asarray(self._faiss_index.reconstruct(int(i)), np.float32)[None, :]

    def vectors_of(self, start: int, stop: int) -> np.ndarray:
        """The stored vectors of ids ``start`` … ``stop - 1``, (stop - start, D) float32."""
        start, stop = max(0, int(start)), min(self.count, int(stop))
        if stop <= start:
            return np.zeros((0, self.dim), np.float32)
        if self.kind == "exact":
            assert self.vectors is not None  # the exact kind stores its vectors
            return self.vectors[start:stop]
        self.vector(start)  # builds IVF's direct map when needed
        return np.asarray(self._faiss_index.reconstruct_n(start, stop - start), np.float32)

    # -- storage -------------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays that store this index: ``vectors`` (exact) or ``faiss`` (serialised bytes)."""
        if self.kind == "exact":
            assert self.vectors is not None  # the exact kind stores its vectors
            return {"vectors": self.vectors}
        import faiss

        return {"faiss": faiss.serialize_index(self._faiss_index)}

    def describe(self) -> dict[str, Any]:
        """``kind``, ``metric``, ``dim``, ``count`` and ``params`` (stored in the index file)."""
        return {"kind": self.kind, "metric": self.metric, "dim": self.dim, "count": self.count, "params": self.params}

    @classmethod
    def from_arrays(cls, info: dict[str, Any], arrays: dict[str, np.ndarray]) -> VectorIndex:
        """Rebuild from :meth:`describe` and :meth:`to_arrays` output.

        Raises:
            ValueError: arrays missing or inconsistent with ``info``.
            UserError: an approximate index without faiss installed.
        """
        kind, dim, count = info["kind"], int(info["dim"]), int(info["count"])
        if kind == "exact":
            vectors = np.ascontiguousarray(arrays["vectors"], dtype=np.float32)
            if vectors.shape != (count, dim):
                raise ValueError(f"stored vectors have shape {vectors.shape}, expected ({count}, {dim})")
            return cls(kind, info["metric"], dim, count, info.get("params", {}), vectors=vectors)
        faiss = _faiss(kind)
        index = faiss.deserialize_index(np.ascontiguousarray(arrays["faiss"], dtype=np.uint8))
        expected = {"hnsw": "IndexHNSWFlat", "ivf": "IndexIVFFlat", "pq": "IndexRefineFlat"}[kind]
        if type(index).__name__ != expected:
            raise ValueError(f"the stored faiss index is a {type(index).__name__}, not the {expected} of the "
                             f"{kind} kind its record names")
        missing = [p for p in {"hnsw": ("ef_search",), "ivf": ("nlist", "nprobe"), "pq": ("k_factor",)}[kind]
                   if p not in info.get("params", {})]
        if missing:
            raise ValueError(f"the {kind} index record lacks its parameter(s) {', '.join(missing)}")
        if index.d != dim or index.ntotal != count:
            raise ValueError(f"stored faiss index is {index.d}-d with {index.ntotal} vectors, "
                             f"expected {dim}-d with {count}")
        return cls(kind, info["metric"], dim, count, info.get("params", {}), faiss_index=index)


def exact_neighbors(vectors: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Ids of the exact top-``k`` of ``queries`` among ``vectors`` (the ground truth for recall)."""
    return VectorIndex.build(vectors, "exact", metric).search(queries, k)[1]


def ann_recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of ``truth`` (true neighbour ids) that ``found`` contains."""
    if len(truth) == 0:
        return float("nan")
    hits = [len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) / max(1, int((t >= 0).sum()))
            for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits))


def tune_search(index: VectorIndex, vectors: np.ndarray, target: float = 0.95, k: int = 10, sample: int = 1000,
                values: Optional[list[int]] = None, seed: int = 0) -> list[dict[str, Any]]:
    """Measure recall@k against exact search on a sample of the collection's own vectors.

    Each sampled vector queries the index; its own id is removed from both result lists, so the
    trivial self-match does not inflate recall. For HNSW/IVF/PQ, the search parameter is raised
    through ``values`` until the recall reaches ``target``; the index keeps the first value that
    does (or the largest tried).

    Returns:
        one dict per setting tried: ``{"param", "value", "recall", "qps"}`` (a single row with
        ``param=None`` for the exact index).
    """
    from plm.neighbors.exact import drop_self

    x = _check_2d(vectors, index.dim, "vectors")
    n = len(x)
    k = min(k, n - 1)
    if k < 1:
        return []
    rng = np.random.default_rng(seed)
    sel = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    queries = x[sel]
    db = unit_rows(x) if index.metric == "cosine" else x
    truth = _exact_search(db, unit_rows(queries) if index.metric == "cosine" else queries, k, index.metric,
                          exclude=sel)[1]
    if index.search_param is None:
        start = time.perf_counter()
        found = drop_self(index.search(queries, k + 1)[1], sel, k)[0]
        return [{"param": None, "value": None, "recall": ann_recall(found, truth),
                 "qps": len(queries) / max(time.perf_counter() - start, 1e-9)}]
    if values is None:
        if index.kind == "hnsw":
            values = [16, 32, 64, 128, 256, 512, 1024, 2048]
        elif index.kind == "pq":
            values = [1, 2, 5, 10, 20, 40, 80, 160]
        else:
            nlist = index.params["nlist"]
            values = sorted({v for v in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if v < nlist} | {nlist})
    rows: list[dict[str, Any]] = []
    for v in values:
        index.set_search_param(v)
        start = time.perf_counter()
        found = drop_self(index.search(queries, k + 1)[1], sel, k)[0]
        rows.append({"param": index.search_param, "value": index.params[index.search_param],
                     "recall": ann_recall(found, truth), "qps": len(queries) / max(time.perf_counter() - start, 1e-9)})
        if rows[-1]["recall"] >= target:
            break
    return rows


if not TYPE_CHECKING:  # old spellings, kept for one release; the type checker sees only the new names
    __getattr__ = deprecated_names(__name__, OLD_NAMES)
