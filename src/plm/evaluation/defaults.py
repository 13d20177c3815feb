"""The evaluation's defaults, importable without numpy or torch (the CLI's ``--help`` shows them)."""

from __future__ import annotations

#: above this many classes NMI (k-means with one cluster per class) is skipped unless asked for
NMI_MAX_CLASSES = 1000
#: the largest distance (1 - cosine) of a near-duplicate pair for ``plm duplicates``, measured for plm embed's
#: default model (``python -m benchmarks.bench_duplicates``; docs/search.md, "Duplicates")
NEAR_DUPLICATE_DISTANCE = 0.03


def default_ks(dataset: str) -> list[int]:
    """The field's Recall@K list: 1/10/100/1000 on SOP, 1/2/4/8 elsewhere."""
    return [1, 10, 100, 1000] if dataset == "sop" else [1, 2, 4, 8]
