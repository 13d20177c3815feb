"""Plain-text tables and metric rows, shared by the CLI commands and the demo's report."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], left: Sequence[int] = (0,)) -> str:
    """A plain-text table with aligned columns (floats to 4 decimals, None as '-'); the columns ``left``
    (text) are aligned left, the others right."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False)))
            for r in cells]
    return "\n".join(line.rstrip() for line in out)


def metrics_row(name: str, metrics: dict[str, Any], ks: Optional[Sequence[str]] = None) -> list[Any]:
    """One table row: name, Recall@K…, MAP@R, R-precision, NMI."""
    ks = ks or list(metrics["recall_at"])
    return [name, *(metrics["recall_at"][k] for k in ks), metrics["map_at_r"], metrics.get("r_precision"),
            metrics.get("nmi")]


def metrics_headers(ks: Sequence[str]) -> list[str]:
    """Headers matching :func:`metrics_row`."""
    return ["method", *(f"R@{k}" for k in ks), "MAP@R", "R-prec", "NMI"]
