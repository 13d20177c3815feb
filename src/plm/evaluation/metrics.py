"""Retrieval metrics for zero-shot evaluation: Recall@K, MAP@R, R-precision, NMI.

Definitions (each item queries all *other* items; neighbours ordered by distance, equal
distances by lower index, as in :mod:`plm.evaluation.knn`):

- Recall@K: share of queries with at least one same-class item among their K nearest neighbours.
  Any K works, also K larger than the number of other items (then every query whose class has
  another member is a hit).
- R-precision: with R = number of other items of the query's class, the share of same-class
  items among the R nearest. MAP@R (Musgrave et al., 2020): the sum, over the ranks i ≤ R that
  hold a same-class item, of precision@i, divided by R.
- Queries of a singleton class (R = 0) are left out of MAP@R and R-precision, and count as misses
  for Recall@K (they can never succeed). pytorch-metric-learning leaves them out of every metric,
  so its precision_at_1 equals our Recall@1 only when there are no singleton classes.
- NMI: k-means with as many clusters as classes, normalised mutual information with the labels.

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

Precision: distances are float32. Pairs whose distances differ by less than float32 rounding
may be ordered differently by the two scans and by faiss (each is exact with respect to its own
computed values, equal values broken by the lower index); exact ties (duplicates, small
integer-valued embeddings) are ordered identically by all three.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from plm.evaluation.knn import as_float32_matrix, chunk_minima, knn, padded_width, smallest_k

log = logging.getLogger(__name__)

#: above this many classes NMI (k-means with one cluster per class) is skipped unless asked for
NMI_MAX_CLASSES = 1000


def default_ks(dataset: str) -> list[int]:
    """The field's Recall@K list: 1/10/100/1000 on SOP, 1/2/4/8 elsewhere."""
    return [1, 10, 100, 1000] if dataset == "sop" else [1, 2, 4, 8]


NO_HIT = np.iinfo(np.int64).max  # first-hit rank of a query without any same-class item


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

    def recall_at(self, ks: Sequence[int]) -> dict[str, float]:
        """Recall@K for each K, keyed by ``str(K)``."""
        return {str(k): float((self.first_hit < k).mean()) if len(self.first_hit) else float("nan") for k in ks}

    def map_at_r(self) -> float:
        """Mean AP@R over queries with R > 0 (NaN when there are none)."""
        return _nanmean(self.ap_at_r)

    def mean_r_precision(self) -> float:
        """Mean R-precision over queries with R > 0 (NaN when there are none)."""
        return _nanmean(self.r_precision)


def _nanmean(x: np.ndarray) -> float:
    valid = ~np.isnan(x)
    return float(x[valid].mean()) if valid.any() else float("nan")


def _check(embeddings: np.ndarray | torch.Tensor, labels: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    x = as_float32_matrix(embeddings)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != x.shape[0]:
        raise ValueError(f"expected (N, D) embeddings and N labels, got {tuple(x.shape)} and {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if (labels < 0).any():
        raise ValueError("retrieval metrics need every item labelled (found label -1)")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 items to retrieve among, got {x.shape[0]}")
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
    Uses the interleaved column-group minima ``mins`` (see :func:`~plm.evaluation.knn.chunk_minima`):
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
        block_size: rows (and columns, symmetric scan) per block; default 4096 (symmetric:
            two block buffers of 64 MiB; fewer, larger operations also suffer less when other
            processes compete for the cores) or 1024 (row blocks, memory ≈ block_size × N × 4 bytes).
        symmetric: use :func:`~plm.evaluation.symmetric.symmetric_scan` (each distance computed
            once for both its rows: half the matrix products) unless the classes are so large
            that their pairwise distances would not fit; otherwise scan blocks of query rows.

    Returns:
        :class:`QueryRanks`.
    """
    x, labels = _check(embeddings, labels)
    if block_size is not None and block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    classes = _Classes(labels)
    if symmetric:
        from plm.evaluation.symmetric import class_pair_distances, symmetric_scan

        pairs = class_pair_distances(x, classes.inverse)
        if pairs is not None:
            first, top = symmetric_scan(x, pairs, block_size or 4096)
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


def _row_scan(x: torch.Tensor, labels: np.ndarray, classes: "_Classes", max_k: Optional[int],
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
        pkey = kb.gather(1, pos.clamp(min=0)).masked_fill_(pos < 0, float("inf"))
        pkey, o = torch.sort(pkey, dim=1, stable=True)
        p1 = torch.where(r > 0, pkey[:, 0], float("-inf"))  # -inf: nothing precedes, row unused
        j1 = pos.gather(1, o)[:, 0]
        mins = chunk_minima(kb)
        first = _first_hit_ranks(kb, mins, p1, j1, max_k)
        has = r_np > 0
        first_hit[start:stop][has] = first.numpy()[has]
        # MAP@R and R-precision need the exact R nearest, only where a positive is among them
        need = ((first < r) & (r > 0)).nonzero().flatten()
        if len(need):
            k = int(r[need].max())
            _, idx = smallest_k(kb, k, rows=need, minima=mins)
            ap_n, rp_n = _ap_from_top(idx, lab, r[need], query_labels=lab[need + start])
            ap[start + need.numpy()], rp[start + need.numpy()] = ap_n, rp_n
    return QueryRanks(first_hit, ap, rp, classes.r.copy())


def query_ranks_from_hits(hits: np.ndarray, labels: np.ndarray) -> QueryRanks:
    """:class:`QueryRanks` from a (N, k) neighbour-hit matrix with k ≥ max R.

    A query with no hit among the k columns gets ``first_hit = k`` (a lower bound, exact for
    Recall@K with K ≤ k), or :data:`NO_HIT` when its class has no other item.
    """
    labels = np.asarray(labels)
    n = len(labels)
    r = _Classes(labels).r
    if hits.shape[1] < min(int(r.max()), n - 1):
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


def neighbour_hits(embeddings: np.ndarray, labels: np.ndarray, k: int, block_size: int = 1024,
                   use_faiss: bool = False) -> np.ndarray:
    """(N, k) boolean matrix: is the j-th nearest other item of the same class."""
    _, idx = knn(embeddings, k=k, block_size=block_size, use_faiss=use_faiss)
    labels = np.asarray(labels)
    return labels[idx] == labels[:, None]


def recall_at_k(hits: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """Recall@K for each K from a neighbour-hit matrix with at least max(ks) columns
    (or every other item as a column)."""
    return {str(k): float(hits[:, :k].any(1).mean()) for k in ks}


def map_and_r_precision(hits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(MAP@R, R-precision) from a neighbour-hit matrix with at least max(R) columns."""
    qr = query_ranks_from_hits(hits, labels)
    return qr.map_at_r(), qr.mean_r_precision()


def nmi(embeddings: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """NMI between k-means clusters (as many as classes) and the labels."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    x, labels = _check(embeddings, labels)
    n_clusters = int(np.unique(labels).size)
    pred = KMeans(n_clusters=n_clusters, n_init=1, random_state=seed).fit_predict(x.numpy())
    return float(normalized_mutual_info_score(labels, pred))


def retrieval_metrics(embeddings: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 2, 4, 8),
                      with_nmi: bool = True, block_size: Optional[int] = None, use_faiss: bool = False,
                      symmetric: bool = True, nmi_max_classes: Optional[int] = NMI_MAX_CLASSES) -> dict:
    """All retrieval metrics of a labelled embedding set.

    Args:
        embeddings: (N, D) float array.
        labels: (N,) non-negative integer labels.
        ks: the K of Recall@K (any positive integers).
        with_nmi: run k-means for NMI (slow for many classes).
        block_size: block side of the exact scan (see :func:`query_ranks`).
        use_faiss: take the neighbours from faiss (k = max(max K, max R)) instead of the scan.
        symmetric: scan each distance once for both its rows (see :func:`query_ranks`).
        nmi_max_classes: skip NMI (with a log line) above this many classes, where k-means with one
            cluster per class is very slow (SOP: 11,316); ``None`` = no limit.

    Returns:
        ``{"num_queries", "recall_at": {"1": …}, "map_at_r", "r_precision", "nmi"}``
        (``nmi`` is ``None`` when it was not computed).
    """
    ks = [int(k) for k in ks]
    if not ks or min(ks) <= 0:
        raise ValueError(f"Recall@K needs positive K values, got {ks}")
    x, labels = _check(embeddings, labels)
    n_classes = int(np.unique(labels).size)
    if with_nmi and nmi_max_classes is not None and n_classes > nmi_max_classes:
        log.info("NMI skipped: k-means with %d clusters is very slow (more than %d classes)", n_classes,
                 nmi_max_classes)
        with_nmi = False
    if use_faiss:
        r_max = int(_Classes(labels).r.max())
        k = min(len(labels) - 1, max(max(ks), r_max))
        qr = query_ranks_from_hits(neighbour_hits(x, labels, k, block_size=block_size or 1024, use_faiss=True),
                                   labels)
    else:
        qr = query_ranks(x, labels, max_k=max(ks), block_size=block_size, symmetric=symmetric)
    return {
        "num_queries": int(len(labels)),
        "recall_at": qr.recall_at(ks),
        "map_at_r": qr.map_at_r(),
        "r_precision": qr.mean_r_precision(),
        "nmi": nmi(x, labels) if with_nmi else None,
    }
