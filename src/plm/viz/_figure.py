"""Matplotlib figures rendered with the Agg canvas directly: no pyplot, no global state, no display."""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Tableau-like palette, then greys for "other"; colour i is _PALETTE[i % len].
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
           "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"]


#: marker shapes, cycled after the palette's colours (class i: colour i % 20, marker i // 20), and the text
#: symbol that draws each in an HTML legend
MARKERS = ("o", "s", "^", "D")
MARKER_SYMBOLS = {"o": "\u25cf", "s": "\u25a0", "^": "\u25b2", "D": "\u25c6"}


def class_style(i: int) -> tuple[str, str]:
    """(colour, marker) of class number ``i``: 80 distinct pairs, the same in every figure and legend."""
    return PALETTE[i % len(PALETTE)], MARKERS[(i // len(PALETTE)) % len(MARKERS)]


def new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    """A figure attached to an Agg canvas."""
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()
