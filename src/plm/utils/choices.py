"""The fixed choice lists of the command line and the configs, in one module that imports nothing.

The command line reads them here (so ``plm … --help`` needs neither numpy nor torch), and the
modules that act on them import them from here: one list per choice, never a copy.
"""

from __future__ import annotations

#: where a model runs (:func:`plm.utils.device.resolve_device`)
DEVICES = ("auto", "cpu", "cuda")
#: mixed precision of forward passes (:func:`plm.utils.device.amp_dtype`)
AMP_MODES = ("off", "auto", "bf16", "fp16")
#: training modes: ``auto`` picks frozen or finetune by cost (:class:`plm.training.config.TrainConfig`)
MODES = ("auto", "frozen", "finetune")
#: dataset splits: seen classes, held-out seen classes, unseen classes, everything
SPLITS = ("train", "val", "test", "all")
#: the datasets ``plm demo`` can run on
DEMO_DATASETS = ("glyphs", "fashion-mnist", "digits")
#: the PL model's options (:class:`plm.manifold.config.ManifoldConfig`)
CRITERIA = ("residual_variance", "relative_residual", "candidate_residual", "relative_candidate_residual")
SYMMETRIZE = ("mean", "max", "min", "geometric")
ON_BREACH = ("skip", "stop")
NORMALIZATIONS = ("none", "row_max", "row_minmax", "row_rank")
#: how STML's contextual similarity enters the PL target (``loss.context_mode``,
#: :func:`plm.estimators.stml.contextual_target`)
CONTEXT_MODES = ("raise", "mix")
#: vector index kinds and metrics (:class:`plm.search.index.VectorIndex`)
INDEX_KINDS = ("exact", "hnsw", "ivf", "pq")
INDEX_METRICS = ("cosine", "l2")
#: 2-D map projections (:func:`plm.viz.maps.project_2d`)
MAP_METHODS = ("tsne", "umap", "pca")
