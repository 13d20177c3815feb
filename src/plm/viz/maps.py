"""2-D maps of embeddings: t-SNE (scikit-learn), UMAP (when installed) or PCA, coloured by label."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

from plm.utils.choices import MAP_METHODS as METHODS
from plm.viz._figure import class_style, figure_png, new_figure


def project_2d(vectors: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """Project ``vectors`` (N, D) to (N, 2).

    Args:
        vectors: the embeddings.
        method: ``"tsne"`` (default, scikit-learn), ``"umap"`` (needs ``umap-learn``) or ``"pca"``.
        seed: random state of t-SNE / UMAP.

    Vectors that are all the same (no variance: a folder of identical images, all-zero rows) have
    no direction to project on; they all map to the origin, whatever the method (t-SNE's PCA start
    would divide by their zero deviation).

    Raises:
        ValueError: unknown method, ``vectors`` not 2-D, or holding NaN or infinite values.
        ImportError: ``"umap"`` without ``umap-learn`` installed.
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"vectors must be 2-D (N, D), got shape {x.shape}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not np.isfinite(x).all():
        raise ValueError("vectors hold NaN or infinite values; they cannot be projected")
    n = len(x)
    if n and float(np.ptp(x, axis=0).max(initial=0.0)) <= 1e-6 * float(np.abs(x).max(initial=0.0)):
        return np.zeros((n, 2))
    if n < 4 or x.shape[1] < 2:  # too few points for t-SNE/UMAP: PCA (or padding) is the honest answer
        method = "pca"
    if method == "tsne":
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
        # Small maps: one thread. OpenMP barriers cost more than they save there, and far more on a
        # busy machine (measured: 60 points took 1.5 s on one thread, 5-25 s on two under load).
        with threadpool_limits(limits=1 if n < 1000 else None):
            return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    if method == "umap":
        try:
            import umap
        except ImportError as err:
            raise ImportError("method='umap' needs the umap-learn package (pip install umap-learn); "
                              "use method='tsne' otherwise") from err
        return umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, n - 1)).fit_transform(x)
    centred = x - x.mean(axis=0)
    if n < 2:
        return np.zeros((n, 2))
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    coords = centred @ vt[:2].T
    return np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))


def _label_names(labels: Sequence, class_names: Optional[Mapping]) -> list[str]:
    names = []
    for y in labels:
        key = y.item() if hasattr(y, "item") else y
        if class_names is not None and key in class_names:
            names.append(str(class_names[key]))
        elif isinstance(key, (int, np.integer)) and key < 0:
            names.append("unlabelled")
        else:
            names.append(str(key))
    return names


def map_classes(labels: Sequence, class_names: Optional[Mapping] = None) -> list[str]:
    """The legend order of the classes of ``labels`` (numeric labels in order, then names; ``unlabelled`` last):
    class number i of this list is drawn with :func:`plm.viz._figure.class_style` ``(i)``."""
    names = _label_names(list(labels), class_names)
    first_label: dict[str, Any] = {}  # legend name -> its label (int or str)
    for y, name in zip(labels, names, strict=True):
        first_label.setdefault(name, y.item() if hasattr(y, "item") else y)
    numeric = all(isinstance(y, (int, np.integer)) for y in first_label.values())
    return sorted(first_label, key=lambda s: (s == "unlabelled", int(first_label[s]) if numeric else 0, s))


def embedding_map_png(vectors: np.ndarray, labels: Optional[Sequence | np.ndarray] = None, *, title: str = "",
                      method: str = "tsne", class_names: Optional[Mapping] = None, max_points: int = 1500,
                      seed: int = 0, coords: Optional[np.ndarray] = None, size: float = 6.0,
                      legend: bool = True) -> bytes:
    """A scatter plot of a 2-D map of ``vectors`` coloured by label, as PNG bytes.

    Args:
        vectors: embeddings (N, D).
        labels: one label per row (ints, with ``-1`` unlabelled, or strings such as sub-folder
            names); ``None`` draws one colour.
        title: figure title (the method is appended).
        method: ``"tsne"``, ``"umap"`` or ``"pca"`` (see :func:`project_2d`).
        class_names: optional label → display name mapping for the legend.
        max_points: a seeded random subset of at most this many points is drawn (t-SNE of 1,500
            points takes tens of seconds on 2 CPU cores).
        seed: subset and projection seed.
        coords: precomputed (N, 2) coordinates (skips the projection).
        size: figure side in inches.
        legend: draw the legend (beside the map, in columns, when there are more than 20 classes);
            ``False`` leaves it to the caller (an HTML legend with :func:`map_classes` and
            :func:`plm.viz._figure.class_style`).
    """
    vectors = np.asarray(vectors)
    n = len(vectors)
    labels_list = list(labels) if labels is not None else ["all"] * n
    if len(labels_list) != n:
        raise ValueError(f"got {n} vectors but {len(labels_list)} labels")
    idx = np.arange(n)
    if n > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
    xy = np.asarray(coords)[idx] if coords is not None else project_2d(vectors[idx], method, seed)
    classes = map_classes(labels_list, class_names)  # every class keeps its style whatever the sample
    names = _label_names([labels_list[i] for i in idx], class_names)
    fig = new_figure(size, size)
    ax = fig.add_subplot(1, 1, 1)
    for c, name in enumerate(classes):
        sel = np.array([nm == name for nm in names])
        if not sel.any():
            continue
        colour, marker = class_style(c)
        ax.scatter(xy[sel, 0], xy[sel, 1], s=12 if len(idx) < 1000 else 6, c="#bbbbbb" if name == "unlabelled"
                   else colour, marker=marker, label=name, alpha=0.8, linewidths=0)
    if legend and 1 < len(classes) <= 20:
        ax.legend(loc="best", fontsize=8, markerscale=1.5, frameon=True)
    elif legend and len(classes) > 20:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, markerscale=1.2, frameon=False,
                  ncol=int(np.ceil(len(classes) / 30)))
    shown = method if coords is None else "given coordinates"
    ax.set_title(f"{title} ({shown}, {len(idx)} points)" if title else f"{shown}, {len(idx)} points")
    ax.set_xticks([])
    ax.set_yticks([])
    return figure_png(fig)
