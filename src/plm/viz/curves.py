"""Training curves from a list of per-epoch dicts (``[{"epoch": 1, "loss": 0.7, "R@1": 0.5}, …]``)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from plm.viz._figure import PALETTE, figure_png, new_figure


def _number(v: Any) -> Optional[float]:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def curve_points(history: Sequence[Mapping[str, Any]], key: str, x: str = "epoch") -> list[tuple[float, float]]:
    """The (x, value) points of one metric; rows without a numeric ``key`` are skipped.

    A row without a numeric ``x`` is placed at its position (1, 2, …); ``x = 0`` (e.g. the untrained
    model's epoch 0) is a real coordinate.
    """
    points = []
    for j, row in enumerate(history):
        value, xv = _number(row.get(key)), _number(row.get(x))
        if value is not None:
            points.append((float(j + 1) if xv is None else xv, value))
    return points


def training_curves_png(history: Sequence[Mapping[str, Any]], keys: Optional[Sequence[str]] = None, *,
                        x: str = "epoch", title: str = "Training", columns: int = 3) -> bytes:
    """One small plot per metric against ``x``, as PNG bytes.

    Args:
        history: one dict per epoch; missing, non-numeric and non-finite values are skipped.
        keys: metrics to plot (default: every numeric key except ``x``, in first-seen order).
        x: the x-axis key; when absent from a row, its position (1, 2, …) is used.
        title: figure title.
        columns: plots per row.

    Raises:
        ValueError: empty history, or no numeric metric to plot.
    """
    if not history:
        raise ValueError("history is empty: pass one dict per epoch, e.g. [{'epoch': 1, 'loss': 0.7}]")
    if keys is None:
        keys = []
        for row in history:
            keys += [k for k, v in row.items() if k != x and k not in keys and _number(v) is not None]
    keys = list(keys)
    if not keys:
        raise ValueError(f"no numeric metric to plot in history (keys: {sorted(set().union(*history))})")
    cols = max(1, min(columns, len(keys)))
    rows = math.ceil(len(keys) / cols)
    fig = new_figure(3.6 * cols, 2.8 * rows)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        pts = curve_points(history, key, x)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, color=PALETTE[i % len(PALETTE)])
        ax.set_title(key, fontsize=10)
        ax.set_xlabel(x, fontsize=8)
        if pts and all(float(p[0]).is_integer() for p in pts):  # epochs and steps: no 1.5 ticks
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return figure_png(fig)
