"""Visual reports: embedding maps, retrieval galleries, training curves, self-contained HTML.

Figure helpers return PNG bytes (matplotlib, Agg canvas, no display needed); :mod:`plm.viz.html`
embeds them in a page. A report is a few calls::

    from plm.viz import embedding_map_png, retrieval_gallery_png, retrieval_rows, training_curves_png
    from plm.viz.html import Page

    page = Page("plm demo", subtitle="fashion-mnist, unseen classes")
    page.section("Training").figure(training_curves_png(history))
    maps = page.section("Embedding maps")
    maps.figure(embedding_map_png(before.vectors, before.labels, title="backbone"))
    maps.figure(embedding_map_png(after.vectors, after.labels, title="trained"))
    rows = retrieval_rows(after.vectors, [0, 50, 100], k=5, labels=after.labels)
    page.section("Retrieval").figure(retrieval_gallery_png(rows, dataset.load_image, labels=after.labels))
    page.write("report.html")
"""

from plm.viz.curves import training_curves_png
from plm.viz.gallery import RetrievalRow, retrieval_gallery_png, retrieval_rows
from plm.viz.maps import embedding_map_png, project_2d

__all__ = [
    "RetrievalRow", "embedding_map_png", "project_2d", "retrieval_gallery_png", "retrieval_rows",
    "training_curves_png",
]
