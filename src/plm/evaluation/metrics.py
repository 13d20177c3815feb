"""Retrieval metrics for zero-shot evaluation: Recall@K, MAP@R, R-precision, NMI.

Definitions (leave-one-out, the default: each item queries all *other* items; with
``reference=``: each query item queries every reference item, as pytorch-metric-learning's
``AccuracyCalculator.get_accuracy(query, reference)``; neighbours ordered by distance, equal
distances by lower index, as in :mod:`plm.neighbors.exact`):

- R: the number of items of the query's class it can retrieve (other items of its class;
  with ``reference=``, reference items of its class).
- Queries with R = 0 (a singleton class, or a class absent from the reference) are **left out of
  every metric**, as pytorch-metric-learning and the papers' evaluation code do; how many were
  left out is reported (``num_left_out``). When no query is left, Recall@K, MAP@R and
  R-precision are NaN and a warning is logged.
- Recall@K: among the remaining queries, the share with at least one same-class item among their
  K nearest neighbours. K must be a positive integer; any K works, also K larger than the number
  of items (then every remaining query is a hit).
- R-precision: the share of same-class items among the R nearest. MAP@R (Musgrave et al.,
  2020): the sum, over the ranks i ≤ R that hold a same-class item, of precision@i, divided by R.
- NMI: k-means with as many clusters as classes (of the queries), normalised mutual information
  with the labels.

How it is computed (memory stays O(block × N): SOP's 60,502² matrix is never held):
:func:`query_ranks` records, per query, the rank of its nearest same-class item ("first hit")
plus its AP@R and R-precision. Recall@K needs no top-K list: a query is a hit at K exactly when
fewer than K items precede its nearest same-class item, which a comparison pass counts. By
default the scan is symmetric (:mod:`plm.evaluation.symmetric`): each block of the distance
matrix serves its rows and its columns, halving the matrix products; distances within a class
are computed apart in float64 (per-class Gram matrices) and written into the blocks. When
classes are too large for that, or with ``symmetric=False``, blocks of query rows are scanned
against all items instead. ``use_faiss=True`` takes the same quantities from a faiss k-NN list
(cross-check; slower for large K).

Precision: distances are float32, computed after :func:`~plm.neighbors.exact.condition` has
translated and scaled the embeddings (in float64) so that a common offset (tested up to 1e4 on
unit-scale data) or an extreme scale (tested from 1e-25 to 1e19) does not change the answer. Pairs whose
distances differ by less than float32 rounding may be ordered differently by the scans and by
faiss (each is exact with respect to its own computed values, equal values broken by the lower
index). Exact ties are ordered identically by all paths: small integer-valued embeddings give
exact distances everywhere, and for exact duplicate rows the symmetric scan (whose block values
and float64 same-class values round differently) is replaced by the row scan, where every
distance of a query comes from one matrix row, so identical items get identical values and
the lower index goes first.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from plm.evaluation.defaults import NMI_MAX_CLASSES
from plm.evaluation.defaults import default_ks as default_ks  # re-exported: its old home
from plm.neighbors.exact import (
    as_float32_matrix,
    chunk_minima,
    condition,
    has_duplicate_rows,
    knn,
    padded_width,
    smallest_k,
)
from plm.utils.deprecation import deprecated_names

log = logging.getLogger(__name__)


NO_HIT = np.iinfo(np.int64).max  # first-hit rank of a query without any same-class item


def check_ks(ks: Sequence[int]) -> list[int]:
    """The K values of Recall@K as a list of ints.

    Raises:
        ValueError: empty, or a K that is not a positive integer (``1.7``, ``0``, ``True``).
    """
    values: list[Any] = list(ks) if not isinstance(ks, (str, bytes)) else [ks]  # checked at run time
    bad = [k for k in values if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k <= 0]
    if not values or bad:
        raise ValueError(f"Recall@K needs positive integer K values, got {values}")
    return [int(k) for k in values]


@dataclass
class QueryRanks:
    """Per-query retrieval results.

    Attributes:
        first_hit: 0-based rank of the nearest same-class item among all other items
            (:data:`NO_HIT`, larger than any K, for singleton classes).
        ap_at_r: AP@R per query (NaN for singleton classes).
        r_precision: R-precision per query (NaN for singleton classes).
        r: R, the number of other same-class items.
    """

    first_hit: np.ndarray
    ap_at_r: np.ndarray
    r_precision: np.ndarray
    r: np.ndarray

    @property
    def num_left_out(self) -> int:
        """Queries with R = 0 (nothing of their class to retrieve), left out of every metric."""
        return int((self.r <= 0).sum())

    def recall_at(self, ks: Sequence[int]) -> dict[str, float]:
        """Recall@K for each K over the queries with R > 0, keyed by ``str(K)`` (NaN when there are none)."""
        valid = self.r > 0
        first = self.first_hit[valid]
        return {str(k): float((first < k).mean()) if len(first) else float("nan") for k in check_ks(ks)}

    def map_at_r(self) -> float:
        """Mean AP@R over queries with R > 0 (NaN when there are none)."""
        return _nanmean(self.ap_at_r)

    def mean_r_precision(self) -> float:
        """Mean R-precision over queries with R > 0 (NaN when there are none)."""
        return _nanmean(self.r_precision)

    def subset(self, mask: np.ndarray) -> QueryRanks:
        """The queries selected by the boolean ``mask``."""
        return QueryRanks(self.first_hit[mask], self.ap_at_r[mask], self.r_precision[mask], self.r[mask])

    def summary(self, ks: Sequence[int]) -> dict[str, Any]:
        """``{"num_queries", "num_left_out", "recall_at", "map_at_r", "r_precision"}`` of these queries."""
        return {"num_queries": int(len(self.r)), "num_left_out": self.num_left_out, "recall_at": self.recall_at(ks),
                "map_at_r": self.map_at_r(), "r_precision": self.mean_r_precision()}


def _nanmean(x: np.ndarray) -> float:
    valid = ~np.isnan(x)
    return float(x[valid].mean()) if valid.any() else float("nan")


def _check(embeddings: np.ndarray | torch.Tensor, labels: np.ndarray, name: str = "embeddings",
           min_items: int = 2) -> tuple[torch.Tensor, np.ndarray]:
    x = as_float32_matrix(embeddings, name)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != x.shape[0]:
        raise ValueError(f"expected (N, D) {name} and N labels, got {tuple(x.shape)} and {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if (labels < 0).any():
        raise ValueError("retrieval metrics need every item labelled (found label -1)")
    if x.shape[0] < min_items:
        raise ValueError(f"need at least {min_items} items to retrieve among, got {x.shape[0]}")
    return x, labels.astype(np.int64)


class _Classes:
    """Class membership, to list each query's other same-class items without an N×N mask."""

    def __init__(self, labels: np.ndarray):
        _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        self.inverse = inverse.reshape(-1)
        self.order = np.argsort(self.inverse, kind="stable")  # members of each class, ascending index
        self.start = np.concatenate([[0], np.cumsum(counts)[:-1]])[self.inverse]
        self.size = counts[self.inverse]
        self.position = np.empty(len(labels), dtype=np.int64)  # position of an item within its class
        self.position[self.order] = np.arange(len(labels)) - np.concatenate([[0], np.cumsum(counts)[:-1]])[
            self.inverse[self.order]]
        self.r = self.size - 1

    def positives(self, rows: np.ndarray, width: int) -> np.ndarray:
        """(len(rows), width) other same-class indices of ``rows`` in ascending order, ``-1`` padded."""
        t = np.arange(width)[None, :]
        pos, r = self.position[rows][:, None], self.r[rows][:, None]
        src = self.start[rows][:, None] + t + (t >= pos)
        return np.where(t < r, self.order[np.minimum(src, len(self.order) - 1)], -1)


def _first_hit_ranks(kb: torch.Tensor, mins: torch.Tensor, p1: torch.Tensor, j1: torch.Tensor,
                     max_k: int, pair_batch: int = 1 << 18) -> torch.Tensor:
    """Per row, how many entries precede the entry (p1, j1) in (value, column) order.

    Exact when the answer is below ``max_k``; otherwise a lower bound that is ≥ ``max_k``.
    Uses the interleaved column-group minima ``mins`` (see :func:`~plm.neighbors.exact.chunk_minima`):
    a group whose minimum exceeds p1 holds nothing that precedes, and the number of groups whose
    minimum is below p1 is already a lower bound. Only the groups with minimum ≤ p1 of rows
    below ``max_k`` are read element by element.
    """
    b, w = mins.shape
    c = kb.shape[1] // w
    below = torch.empty_like(mins)
    lower = torch.lt(mins, p1.unsqueeze(1), out=below).sum(1).to(torch.int64)
    first = lower.clone()
    rows = (lower < max_k).nonzero().flatten()
    if not len(rows):
        return first
    first[rows] = 0
    pr, pw = (mins.index_select(0, rows) <= p1[rows].unsqueeze(1)).nonzero(as_tuple=True)
    pr = rows[pr]
    view = kb.view(b, c, w)
    offsets = w * torch.arange(c)
    for s in range(0, len(pr), pair_batch):
        r, g = pr[s:s + pair_batch], pw[s:s + pair_batch]
        vals = view[r, :, g]  # (P, c): the members of group g in row r
        cols = g.unsqueeze(1) + offsets
        thr, j = p1[r].unsqueeze(1), j1[r].unsqueeze(1)
        before = (vals < thr) | ((vals == thr) & (cols < j))
        first.index_add_(0, r, before.sum(1))
    return first


def query_ranks(embeddings: np.ndarray | torch.Tensor, labels: np.ndarray, max_k: Optional[int] = None,
                block_size: Optional[int] = None, symmetric: bool = True) -> QueryRanks:
    """Rank of each query's nearest same-class item, and its AP@R and R-precision, exactly.

    Args:
        embeddings: (N, D) float array.
        labels: (N,) non-negative integer class labels.
        max_k: the largest K that Recall@K will be asked for. The row-block scan reports
            first-hit ranks beyond it as a lower bound ≥ ``max_k``; the symmetric scan is
            exact everywhere. ``None``: exact everywhere.
        block_size: rows (and columns, symmetric scan) per block; default 2048 (symmetric: one
            16 MiB buffer per block in flight, and blocks small enough that the thread on a core
            another process holds takes fewer of them) or 1024 (row blocks, memory ≈ block_size
            × N × 4 bytes).
        symmetric: use :func:`~plm.evaluation.symmetric.symmetric_scan` (each distance computed
            once for both its rows: half the matrix products) unless the classes are so large
            that their pairwise distances would not fit; otherwise scan blocks of query rows.

    The embeddings are first conditioned (:func:`~plm.neighbors.exact.condition`); with exact
    duplicate rows the row scan is used (see the module docstring: one tie rule on every path).

    Returns:
        :class:`QueryRanks`.
    """
    x, labels = _check(embeddings, labels)
    if block_size is not None and block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    (x,), _ = condition(x)
    classes = _Classes(labels)
    if symmetric and has_duplicate_rows(x):
        symmetric = False
    if symmetric:
        from plm.evaluation.symmetric import class_pair_distances, symmetric_scan

        pairs = class_pair_distances(x, classes.inverse)
        if pairs is not None:
            first, top = symmetric_scan(x, pairs, block_size or 2048)
            has = classes.r > 0
            first_hit = np.where(has, first, NO_HIT).astype(np.int64)
            ap, rp = _ap_from_top(top, torch.from_numpy(labels), torch.from_numpy(classes.r))
            return QueryRanks(first_hit, np.where(has, ap, np.nan), np.where(has, rp, np.nan), classes.r.copy())
    return _row_scan(x, labels, classes, max_k, block_size or 1024)


def _ap_from_top(idx: torch.Tensor, lab: torch.Tensor, r: torch.Tensor,
                 query_labels: Optional[torch.Tensor] = None) -> tuple[np.ndarray, np.ndarray]:
    """AP@R and R-precision per row from its top-k neighbour indices (k ≥ the row's R)."""
    k = idx.shape[1]
    q = lab if query_labels is None else query_labels
    hits = lab[idx.clamp(max=len(lab) - 1)] == q.unsqueeze(1)
    hits &= torch.arange(1, k + 1).unsqueeze(0) <= r.unsqueeze(1)
    hf = hits.double()
    prec = hf.cumsum(1) / torch.arange(1, k + 1, dtype=torch.float64)
    rn = r.double().clamp(min=1)
    return ((prec * hf).sum(1) / rn).numpy(), (hf.sum(1) / rn).numpy()


def _row_scan(x: torch.Tensor, labels: np.ndarray, classes: _Classes, max_k: Optional[int],
              block_size: int) -> QueryRanks:
    """Scan blocks of query rows against all items (memory ≈ block_size × N × 4 bytes)."""
    n = x.shape[0]
    max_k = n if max_k is None else max(1, min(int(max_k), n))
    lab = torch.from_numpy(labels)
    sq = (x * x).sum(1)
    first_hit = np.full(n, NO_HIT, dtype=np.int64)
    ap = np.where(classes.r > 0, 0.0, np.nan)  # stays 0 unless a positive is within the R nearest
    rp = ap.copy()
    # the key buffer is padded with +inf to a multiple of CHUNKS columns (see chunk_minima)
    key = torch.full((min(block_size, n), padded_width(n)), float("inf"))
    xt = x.T
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        r_np = classes.r[start:stop]
        if not (r_np > 0).any():
            continue
        r = torch.from_numpy(r_np)
        kb = key[:stop - start]
        torch.addmm(sq.unsqueeze(0), x[start:stop], xt, beta=1.0, alpha=-2.0, out=kb[:, :n])
        local = torch.arange(stop - start)
        kb[local, local + start] = float("inf")  # the query itself
        # nearest positive by (key, index); positives are listed in ascending index order
        pos = torch.from_numpy(classes.positives(np.arange(start, stop), max(1, int(r.max()))))
        _score_block(kb, pos, r, r_np, lab, lab, start, max_k, first_hit, ap, rp)
    return QueryRanks(first_hit, ap, rp, classes.r.copy())


def reference_ranks(query: np.ndarray | torch.Tensor, query_labels: np.ndarray,
                     reference: np.ndarray | torch.Tensor, reference_labels: np.ndarray,
                     max_k: Optional[int] = None, block_size: int = 512) -> QueryRanks:
    """:class:`QueryRanks` of queries retrieving among a separate reference set (every reference
    item is a candidate, none is excluded), exactly, by blocks of query rows.

    Args:
        query: (Q, D) embeddings; query_labels: (Q,) non-negative integers.
        reference: (M, D) embeddings; reference_labels: (M,).
        max_k: as in :func:`query_ranks` (first-hit ranks beyond it are lower bounds ≥ ``max_k``).
        block_size: query rows per block (memory ≈ block_size × M × 4 bytes).
    """
    q, ql = _check(query, query_labels, "query", min_items=1)
    g, gl = _check(reference, reference_labels, "reference", min_items=1)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query and reference must have the same width, got {tuple(q.shape)} and {tuple(g.shape)}")
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    (q, g), _ = condition(q, g)
    nq, n = q.shape[0], g.shape[0]
    max_k = n if max_k is None else max(1, min(int(max_k), n))
    # reference items of each class, ascending index; R of a query = size of its class there
    uniq, counts = np.unique(gl, return_counts=True)
    order = np.argsort(gl, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.clip(np.searchsorted(uniq, ql), 0, len(uniq) - 1)
    present = uniq[slot] == ql
    r_all = np.where(present, counts[slot], 0).astype(np.int64)
    start_all = np.where(present, starts[slot], 0)
    glab, qlab = torch.from_numpy(gl), torch.from_numpy(ql)
    g_sq = (g * g).sum(1)
    first_hit = np.full(nq, NO_HIT, dtype=np.int64)
    ap = np.where(r_all > 0, 0.0, np.nan)
    rp = ap.copy()
    key = torch.full((min(block_size, nq), padded_width(n)), float("inf"))
    gt = g.T
    for s0 in range(0, nq, block_size):
        s1 = min(s0 + block_size, nq)
        r_np = r_all[s0:s1]
        if not (r_np > 0).any():
            continue
        r = torch.from_numpy(r_np)
        kb = key[:s1 - s0]
        torch.addmm(g_sq.unsqueeze(0), q[s0:s1], gt, beta=1.0, alpha=-2.0, out=kb[:, :n])
        width = max(1, int(r.max()))
        t = np.arange(width)[None, :]
        src = np.minimum(start_all[s0:s1, None] + t, len(order) - 1)
        pos = torch.from_numpy(np.where(t < r_np[:, None], order[src], -1))
        _score_block(kb, pos, r, r_np, glab, qlab, s0, max_k, first_hit, ap, rp)
    return QueryRanks(first_hit, ap, rp, r_all)


def query_ranks_from_hits(hits: np.ndarray, labels: np.ndarray, r: Optional[np.ndarray] = None) -> QueryRanks:
    """:class:`QueryRanks` from a (N, k) neighbour-hit matrix with k ≥ max R.

    A query with no hit among the k columns gets ``first_hit = k`` (a lower bound, exact for
    Recall@K with K ≤ k), or :data:`NO_HIT` when it has nothing to retrieve (R = 0).

    Args:
        hits: (N, k) booleans, leave-one-out neighbours (or reference neighbours, with ``r``).
        labels: (N,) labels of the queries.
        r: R per query; default: the number of other items of its class among ``labels``.
    """
    labels = np.asarray(labels)
    n = len(labels)
    leave_one_out = r is None
    r = _Classes(labels).r if leave_one_out else np.asarray(r, dtype=np.int64)
    if hits.shape[1] < (min(int(r.max()), n - 1) if leave_one_out else int(r.max())):
        raise ValueError(f"need {r.max()} neighbours per query for MAP@R, got {hits.shape[1]}")
    any_hit = hits.any(1)
    first_hit = np.where(any_hit, hits.argmax(1), np.where(r > 0, hits.shape[1], NO_HIT)).astype(np.int64)
    cols = np.arange(1, hits.shape[1] + 1)
    h = hits & (cols[None, :] <= r[:, None])
    prec = np.cumsum(h, axis=1) / cols[None, :]
    valid = r > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(valid, (prec * h).sum(1) / r, np.nan)
        rp = np.where(valid, h.sum(1) / r, np.nan)
    return QueryRanks(first_hit, ap, rp, r)


def neighbor_hits(embeddings: np.ndarray | torch.Tensor, labels: np.ndarray, k: int, block_size: int = 1024,
                  use_faiss: bool = False) -> np.ndarray:
    """(N, k) boolean matrix: is the j-th nearest other item of the same class."""
    _, idx = knn(embeddings, k=k, block_size=block_size, use_faiss=use_faiss)
    labels = np.asarray(labels)
    return labels[idx] == labels[:, None]


def recall_at_k(hits: np.ndarray, ks: Sequence[int], labels: Optional[np.ndarray] = None) -> dict[str, float]:
    """Recall@K for each K from a neighbour-hit matrix with at least max(ks) columns
    (or every other item as a column).

    Args:
        hits: (N, k) leave-one-out neighbour hits.
        ks: positive integers.
        labels: the rows' labels: rows whose class has no other item are left out, as in
            :func:`retrieval_metrics`; without it every row counts.
    """
    ks = check_ks(ks)
    if labels is not None:
        hits = hits[_Classes(np.asarray(labels)).r > 0]
    return {str(k): float(hits[:, :k].any(1).mean()) if len(hits) else float("nan") for k in ks}


def map_and_r_precision(hits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(MAP@R, R-precision) from a neighbour-hit matrix with at least max(R) columns."""
    qr = query_ranks_from_hits(hits, labels)
    return qr.map_at_r(), qr.mean_r_precision()


def nmi(embeddings: np.ndarray | torch.Tensor, labels: np.ndarray, seed: int = 0) -> float:
    """NMI between k-means clusters (as many as classes) and the labels."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    x, labels = _check(embeddings, labels)
    n_clusters = int(np.unique(labels).size)
    pred = KMeans(n_clusters=n_clusters, n_init=1, random_state=seed).fit_predict(x.numpy())
    return float(normalized_mutual_info_score(labels, pred))


def retrieval_metrics(embeddings: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 2, 4, 8),
                      with_nmi: bool = True, block_size: Optional[int] = None, use_faiss: bool = False,
                      symmetric: bool = True, nmi_max_classes: Optional[int] = NMI_MAX_CLASSES, *,
                      reference: Optional[np.ndarray] = None,
                      reference_labels: Optional[np.ndarray] = None, per_class: bool = False) -> dict:
    """All retrieval metrics of a labelled embedding set (leave-one-out), or of queries against a
    separate reference set.

    Args:
        embeddings: (N, D) float array: the items (leave-one-out) or the queries.
        labels: (N,) non-negative integer labels.
        ks: the K of Recall@K (positive integers).
        with_nmi: run k-means for NMI (slow for many classes); on the queries with ``reference=``.
        block_size: block side of the exact scan (see :func:`query_ranks`).
        use_faiss: take the neighbours from faiss (k = max(max K, max R)) instead of the scan.
        symmetric: scan each distance once for both its rows (see :func:`query_ranks`;
            leave-one-out only).
        nmi_max_classes: skip NMI (with a log line) above this many classes, where k-means with one
            cluster per class is very slow (SOP: 11,316); ``None`` = no limit.
        reference: (M, D) reference embeddings: each query retrieves among all of them (none is
            excluded), as pytorch-metric-learning's ``get_accuracy(query, reference)``.
        reference_labels: (M,) labels of ``reference`` (required with it).
        per_class: also the metrics of each class's queries (pytorch-metric-learning's
            ``return_per_class``), under ``"per_class"``.

    Returns:
        ``{"num_queries", "num_left_out", "recall_at": {"1": …}, "map_at_r", "r_precision", "nmi"}``
        plus ``"num_reference"`` with ``reference=``, and with ``per_class`` ``"per_class": {label: {...}}``
        (labels as ``str``; each ``{"num_queries", "num_left_out", "recall_at", "map_at_r", "r_precision"}``).
        ``num_left_out`` queries had nothing of their class to retrieve (R = 0) and are in none of the
        averages; ``nmi`` is ``None`` when it was not computed. Recall@K, MAP@R and R-precision are NaN
        (with a warning) when every query is left out.
    """
    ks = check_ks(ks)
    if (reference is None) != (reference_labels is None):
        raise ValueError("give reference= and reference_labels= together")
    if reference is None:
        x, labels = _check(embeddings, labels)
    else:
        x, labels = _check(embeddings, labels, "query", min_items=1)
    n_classes = int(np.unique(labels).size)
    if with_nmi and nmi_max_classes is not None and n_classes > nmi_max_classes:
        log.info("NMI skipped: k-means with %d clusters is very slow (more than %d classes)", n_classes,
                 nmi_max_classes)
        with_nmi = False
    extra = {}
    if reference is not None:
        assert reference_labels is not None  # given together with reference (checked above)
        g, gl = _check(reference, reference_labels, "reference", min_items=1)
        extra["num_reference"] = int(len(gl))
        if g.shape[1] != x.shape[1]:
            raise ValueError(f"query and reference must have the same width, got {tuple(x.shape)} and "
                             f"{tuple(g.shape)}")
        if use_faiss:
            uniq, counts = np.unique(gl, return_counts=True)
            slot = np.clip(np.searchsorted(uniq, labels), 0, len(uniq) - 1)
            r = np.where(uniq[slot] == labels, counts[slot], 0).astype(np.int64)
            k = min(len(gl), max(max(ks), int(r.max())))
            _, idx = knn(x, g, k=k, block_size=block_size or 1024, use_faiss=True)
            qr = query_ranks_from_hits(gl[idx] == labels[:, None], labels, r=r)
        else:
            qr = reference_ranks(x, labels, g, gl, max_k=max(ks), block_size=block_size or 512)
    elif use_faiss:
        r_max = int(_Classes(labels).r.max())
        k = min(len(labels) - 1, max(max(ks), r_max))
        qr = query_ranks_from_hits(neighbor_hits(x, labels, k, block_size=block_size or 1024, use_faiss=True),
                                   labels)
    else:
        qr = query_ranks(x, labels, max_k=max(ks), block_size=block_size, symmetric=symmetric)
    if qr.num_left_out == len(labels):
        log.warning("retrieval metrics undefined (NaN): none of the %d queries has another item of its class "
                    "to retrieve", len(labels))
    out: dict[str, Any] = {
        "num_queries": int(len(labels)),
        **extra,
        "num_left_out": qr.num_left_out,
        "recall_at": qr.recall_at(ks),
        "map_at_r": qr.map_at_r(),
        "r_precision": qr.mean_r_precision(),
        "nmi": nmi(x, labels) if with_nmi else None,
    }
    if per_class:
        out["per_class"] = {str(int(c)): qr.subset(labels == c).summary(ks) for c in np.unique(labels)}
    return out


def _score_block(kb: torch.Tensor, pos: torch.Tensor, r: torch.Tensor, r_np: np.ndarray, ref_labels: torch.Tensor,
                 query_labels: torch.Tensor, start: int, max_k: int, first_hit: np.ndarray, ap: np.ndarray,
                 rp: np.ndarray) -> None:
    """Rank of the first positive, AP@R and R-precision of one block of queries, written in place.

    Args:
        kb: (b, M) distance keys of the block's queries against the reference items.
        pos: (b, P) reference indices of each query's positives (-1 padded).
        r, r_np: (b,) positives per query (torch and numpy).
        ref_labels: labels of the reference items; query_labels: labels of all queries.
        start: index of the block's first query.
        max_k: largest rank the first-hit search looks at.
        first_hit, ap, rp: the per-query output arrays.
    """
    pkey = kb.gather(1, pos.clamp(min=0)).masked_fill_(pos < 0, float("inf"))
    pkey, o = torch.sort(pkey, dim=1, stable=True)
    p1 = torch.where(r > 0, pkey[:, 0], float("-inf"))  # -inf: nothing precedes, row unused
    j1 = pos.gather(1, o)[:, 0]
    mins = chunk_minima(kb)
    first = _first_hit_ranks(kb, mins, p1, j1, max_k)
    has = r_np > 0
    first_hit[start:start + len(r_np)][has] = first.numpy()[has]
    # MAP@R and R-precision need the exact R nearest, only where a positive is among them
    need = ((first < r) & (r > 0)).nonzero().flatten()
    if len(need):
        k = int(r[need].max())
        _, idx = smallest_k(kb, k, rows=need, minima=mins)
        ap_n, rp_n = _ap_from_top(idx, ref_labels, r[need], query_labels=query_labels[need + start])
        ap[start + need.numpy()], rp[start + need.numpy()] = ap_n, rp_n


if not TYPE_CHECKING:  # old spellings, kept for one release; the type checker sees only the new names
    __getattr__ = deprecated_names(__name__, {"neighbour_hits": "neighbor_hits"})
