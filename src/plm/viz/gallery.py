"""Retrieval galleries: each query with its top results, bordered green (right) or red (wrong)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image

from plm.viz._figure import figure_png, new_figure

RIGHT, WRONG, QUERY, NEUTRAL = "#2ca02c", "#d62728", "#1f77b4", "#999999"


@dataclass
class RetrievalRow:
    """A query and its nearest neighbours (indices into the same collection).

    Attributes:
        query: index of the query.
        results: indices of its top results, nearest first.
        distances: their distances (``1 - cosine`` for unit vectors).
        correct: per result, whether its label equals the query's; ``None`` when labels are unknown.
    """

    query: int
    results: list[int]
    distances: list[float]
    correct: Optional[list[bool]] = None


def retrieval_rows(vectors: np.ndarray, query_indices: Sequence[int], k: int = 5,
                   labels: Optional[Sequence[int] | np.ndarray] = None) -> list[RetrievalRow]:
    """Exact top-``k`` neighbours of some items among all the others (the query itself excluded).

    Args:
        vectors: embeddings (N, D); cosine distance when rows are unit vectors, else squared L2.
        query_indices: rows used as queries.
        k: results per query.
        labels: optional labels (N,); when given, ``correct`` marks same-label results, and
            unlabelled (negative) queries get ``correct=None``.
    """
    x = np.asarray(vectors, dtype=np.float32)
    q_idx = np.asarray(query_indices, dtype=np.int64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"vectors must be (N, D) with N >= 2, got shape {x.shape}")
    if q_idx.size and (q_idx.min() < 0 or q_idx.max() >= len(x)):
        raise ValueError(f"query indices must be in [0, {len(x) - 1}]")
    k = min(k, len(x) - 1)
    unit = bool(np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-3))
    q = x[q_idx]
    dist = 1.0 - q @ x.T if unit else (q * q).sum(1)[:, None] - 2 * q @ x.T + (x * x).sum(1)[None, :]
    dist[np.arange(len(q_idx)), q_idx] = np.inf
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    rows = []
    for r, qi in enumerate(q_idx):
        res = [int(j) for j in order[r]]
        correct = None
        if labels is not None and int(labels[qi]) >= 0:
            correct = [int(labels[j]) == int(labels[qi]) for j in res]
        rows.append(RetrievalRow(int(qi), res, [float(dist[r, j]) for j in res], correct))
    return rows


def retrieval_gallery_png(rows: Sequence[RetrievalRow], load_image: Callable[[int], Image.Image], *,
                          labels: Optional[Sequence[int] | np.ndarray] = None,
                          class_names: Optional[Mapping[int, str]] = None,
                          title: str = "", thumb: float = 1.3) -> bytes:
    """A grid image: one row per query (blue border), then its results bordered green/red/grey.

    Args:
        rows: from :func:`retrieval_rows` (or built by hand).
        load_image: index → RGB image (e.g. ``dataset.load_image`` when the vectors are in dataset order).
        labels: optional labels shown under each thumbnail.
        class_names: optional label → name mapping for those captions.
        title: figure title.
        thumb: thumbnail side in inches.

    Raises:
        ValueError: no rows.
    """
    if not rows:
        raise ValueError("no retrieval rows to draw")
    cols = 1 + max(len(r.results) for r in rows)
    fig = new_figure(thumb * cols, (thumb + 0.35) * len(rows) + (0.4 if title else 0))

    def caption(i: int) -> str:
        if labels is None:
            return f"#{i}"
        y = int(labels[i])
        return str(class_names.get(y, y)) if class_names else ("unlabelled" if y < 0 else str(y))

    for r, row in enumerate(rows):
        cells = [(row.query, QUERY, "query: " + caption(row.query))]
        for j, (res, d) in enumerate(zip(row.results, row.distances, strict=True)):
            colour = NEUTRAL if row.correct is None else (RIGHT if row.correct[j] else WRONG)
            cells.append((res, colour, f"{caption(res)}  d={d:.3f}"))
        for c, (idx, colour, text) in enumerate(cells):
            ax = fig.add_subplot(len(rows), cols, r * cols + c + 1)
            ax.imshow(np.asarray(load_image(idx).convert("RGB")), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(4)
            ax.set_xlabel(text, fontsize=7)
    if title:  # above the first row: the layout leaves room for it (it was drawn over the first row's tiles)
        fig.suptitle(title, y=1.0, va="bottom")
    fig.tight_layout()
    return figure_png(fig)
