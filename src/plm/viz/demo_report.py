"""The demo's ``report.html``: results, how the run was made, curves, maps and galleries, readable at page width.

Built from plain data (:class:`ReportData`), so it can be tested without training anything:

- "This run": the command, seeds, plm / torch versions and the date;
- the results table, with a note under any method whose numbers equal another row's (``initial`` when
  model selection kept the untrained head; the note gives the run's own verdict when known);
- training curves;
- the two embedding maps side by side (each about half the page wide) with one HTML legend, class by class
  the same colour and marker in both;
- the retrieval galleries as HTML: for each query one row, the pretrained features' results beside the
  trained model's, captions as text at the page's font size (nothing drawn over a tile).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from PIL import Image

from plm.viz.html import Page, Section, Tile, escape

REPORT_CSS = """
.runinfo td:first-child{font-weight:600}.runinfo td{text-align:left}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:6px 10px;margin:6px 0;font-size:.92em}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:16px;align-items:start}
.pair figure{margin:0}.pair figure img{width:100%;height:auto}
.maplegend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:.9em;margin:8px 0}
.maplegend .sym{font-size:1.1em;margin-right:4px}
.cmp{display:grid;grid-template-columns:92px 1fr 1fr;gap:6px 14px;align-items:start;margin:8px 0}
.cmp .colhead{font-weight:600;font-size:.95em;border-bottom:2px solid #ddd;padding-bottom:2px}
.cmp .strip{display:flex;flex-wrap:wrap;gap:4px}
.cmp .tile{width:84px;font-size:12px}
.cmp .tile img,.cmp .tile .missing{width:72px;height:72px;border-width:3px}
"""


@dataclass
class ReportViews:
    """The test split seen two ways: the pretrained features and the trained model's embeddings.

    Attributes:
        load_image: item index → its image.
        labels: (N,) class of each item.
        class_names: label → name.
        before: (N, D) L2-normalised pretrained features.
        after: (N, E) the trained model's embeddings.
    """

    load_image: Callable[[int], Image.Image]
    labels: np.ndarray
    class_names: Mapping[int, str]
    before: np.ndarray
    after: np.ndarray


@dataclass
class ReportData:
    """Everything the page shows.

    Attributes:
        dataset: the demo's dataset.
        methods: row name → metrics (``recall_at``, ``map_at_r``, ``r_precision``, ``nmi``).
        trained: the method whose embeddings the maps and galleries show.
        histories: method → its per-epoch rows.
        views: the test split's features and embeddings.
        info: "this run" lines, in order (``command``, ``seeds``, ``plm``, ``torch``, ``date`` …).
        verdicts: method → the one line its training run ended with (why it kept what it kept).
        notes: other notes (a fallback dataset …).
        queries_per_class: gallery rows per class.
        k: results per gallery row.
        max_queries: gallery rows at most.
    """

    dataset: str
    methods: dict[str, dict[str, Any]]
    trained: str
    histories: dict[str, list[dict[str, Any]]]
    views: ReportViews
    info: dict[str, str]
    verdicts: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    queries_per_class: int = 1
    k: int = 6
    max_queries: int = 60


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("map_at_r", "r_precision")
    return a.get("recall_at") == b.get("recall_at") and all(a.get(k) == b.get(k) for k in keys)


def equal_rows(methods: Mapping[str, dict[str, Any]]) -> dict[str, str]:
    """Each row whose metrics equal an earlier row's, with that row (``{"kmeans": "initial"}``)."""
    names = list(methods)
    out = {}
    for i, name in enumerate(names):
        twin = next((other for other in names[:i] if _same(methods[other], methods[name])), None)
        if twin is not None:
            out[name] = twin
    return out


def _results(page: Page, data: ReportData) -> None:
    from plm.utils.tables import metrics_headers, metrics_row

    ks = list(next(iter(data.methods.values()))["recall_at"])
    sec = page.section("Results", "Recall@K, MAP@R, R-precision and NMI on the unseen classes (means over seeds "
                                  "where several were run). pretrained: the backbone's L2-normalised features; "
                                  "initial: the untrained embedding head every method starts from.")
    sec.table(metrics_headers(ks), [metrics_row(name, m, ks) for name, m in data.methods.items()])
    for name, twin in equal_rows(data.methods).items():
        why = data.verdicts.get(name) or ("model selection kept the untrained head: no trained epoch beat it on "
                                          "the validation classes" if twin == "initial" else "")
        sec.raw(f'<p class="note"><b>{escape(name)}</b> has exactly the numbers of <b>{escape(twin)}</b>: '
                f"{escape(why or 'the two rows score the same model')}.</p>")
    for note in data.notes:
        sec.raw(f'<p class="note">{escape(note)}</p>')


def _maps(page: Page, data: ReportData) -> None:
    from plm.viz._figure import MARKER_SYMBOLS, class_style
    from plm.viz.html import png_data_uri
    from plm.viz.maps import embedding_map_png, map_classes

    v = data.views
    sec = page.section("Embedding maps (t-SNE, unseen classes)",
                       f"Left: the pretrained backbone's features. Right: after {data.trained} training. "
                       f"Each class has one colour and marker in both maps.")
    figures = []
    for title, vectors in (("pretrained features", v.before), (f"{data.trained} embedding", v.after)):
        png = embedding_map_png(vectors, v.labels, title=title, class_names=v.class_names, max_points=1500,
                                legend=False, size=6.0)
        figures.append(f'<figure><img src="{png_data_uri(png)}" alt="{escape(title)} map">'
                       f"<figcaption>{escape(title)}</figcaption></figure>")
    sec.raw(f'<div class="pair maps">{"".join(figures)}</div>')
    keys = []
    for c, name in enumerate(map_classes(list(v.labels), v.class_names)):
        colour, marker = class_style(c)
        keys.append(f'<span class="key"><span class="sym" style="color:{colour}">{MARKER_SYMBOLS[marker]}</span>'
                    f"{escape(name)}</span>")
    sec.raw(f'<div class="maplegend">{"".join(keys)}</div>')


def _tiles(v: ReportViews, row: Any, caption: Callable[[int], str]) -> str:
    tiles = [Tile(v.load_image(j), caption(j), f"d={d:.3f}",
                  None if row.correct is None else ("right" if ok else "wrong"))
             for j, d, ok in zip(row.results, row.distances, row.correct or [None] * len(row.results), strict=True)]
    return f'<div class="strip">{"".join(t.render(72) for t in tiles)}</div>'


def _galleries(page: Page, data: ReportData) -> None:
    from plm.viz.gallery import retrieval_rows

    v = data.views
    rng = np.random.default_rng(0)
    queries = [int(i) for c in np.unique(v.labels)
               for i in rng.choice(np.flatnonzero(v.labels == c), size=min(data.queries_per_class,
                                                                           int((v.labels == c).sum())),
                                   replace=False)][:data.max_queries]
    sec = page.section("Retrieval galleries (unseen classes)",
                       f"One row per query (blue), with its {data.k} nearest test images by the pretrained features "
                       f"(middle) and by {data.trained} (right); green: the query's class, red: another class.")
    sec.legend([("query", "query"), ("right", "result of the query's class"), ("wrong", "result of another class")])

    def caption(i: int) -> str:
        return str(v.class_names.get(int(v.labels[i]), int(v.labels[i])))

    before = retrieval_rows(v.before, queries, k=data.k, labels=v.labels)
    after = retrieval_rows(v.after, queries, k=data.k, labels=v.labels)
    cells = [f'<div class="colhead">query</div><div class="colhead">pretrained</div>'
             f'<div class="colhead">{escape(data.trained)}</div>']
    for b, a in zip(before, after, strict=True):
        query = Tile(v.load_image(b.query), caption(b.query), "query", "query").render(72)
        cells.append(f'<div class="qcell">{query}</div>{_tiles(v, b, caption)}{_tiles(v, a, caption)}')
    sec.raw(f'<div class="cmp">{"".join(cells)}</div>')


def _curves(page: Page, data: ReportData) -> None:
    from plm.viz.curves import training_curves_png

    sec = page.section("Training curves", "Per epoch: losses and the validation MAP@R used for model selection "
                                          "(validation classes are held-out seen classes).")
    for name, history in data.histories.items():
        keys = [key for key in ("loss", "loss_point", "loss_proxy", "loss_neighbourhood", "val_map_at_r")
                if any(key in row for row in history)]
        sec.figure(training_curves_png(history, keys or None, title=name), caption=name)


def _run_info(page: Page, data: ReportData) -> Section:
    sec = page.section("This run")
    rows = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in data.info.items())
    return sec.raw(f'<table class="runinfo"><tbody>{rows}</tbody></table>')


def demo_report_page(data: ReportData) -> Page:
    """The report page (write it with ``.write(path)``)."""
    page = Page("plm demo: zero-shot retrieval without labels",
                subtitle=f"{data.dataset}: trained on the seen classes with labels hidden, evaluated on the unseen "
                         f"classes", css=REPORT_CSS)
    _results(page, data)
    _run_info(page, data)
    _galleries(page, data)
    _maps(page, data)
    _curves(page, data)
    return page


def run_info(command: Sequence[str], seeds: Sequence[int], extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The "this run" lines: the command as typed, seeds, plm and torch versions, the date (UTC)."""
    import datetime
    import shlex

    import torch

    import plm

    return {"command": shlex.join(command), "seeds": ", ".join(str(s) for s in seeds),
            "plm": plm.__version__, "torch": str(torch.__version__),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), **(extra or {})}
