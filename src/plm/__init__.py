"""plm: unsupervised deep metric learning with piecewise-linear manifolds.

The package is layered; a module imports only from its own layer or lower ones (bottom → top,
:data:`LAYERS`; ``tests/test_layers.py`` checks every import against it):

- L0 ``plm.errors``, ``plm._compat``, ``plm.utils``: errors, I/O, the shared :class:`~plm.utils.registry.Registry`
- L1 ``plm.data``, ``plm.models``, ``plm.neighbors``: datasets, backbones and the one model factory, the
  one exact k-NN (``neighbors/exact.py``) and the candidate lists built on it
- L2 ``plm.evaluation``: retrieval metrics, embedding a dataset
- L3 ``plm.manifold``: the piecewise-linear manifold similarity
- L4 ``plm.estimators``: similarity estimators (PL, STML's contextual similarity, k-means, …)
- L5 ``plm.losses``: loss modules usable in any training loop (never imports ``plm.training``)
- L6 ``plm.training``: the trainer, pipelines and checkpoints
- L7 ``plm.viz``: figures and HTML pages
- L8 ``plm.search``: embedding stores, vector indexes, the search server
- L9 ``plm.commands``, ``plm.cli``, ``plm.demo``, ``plm.__main__``: the CLI layer
"""

from types import ModuleType

__version__ = "0.1.0"


def import_torchvision() -> ModuleType:
    """torchvision, importable in your own code too: on a CPU build of torch beside torchvision's CUDA wheel
    (what ``scripts/install.sh`` installs), a plain ``import torchvision`` fails with ``RuntimeError:
    operator torchvision::nms does not exist``; after this call it works in the process (models,
    transforms; not ``torchvision.ops.nms`` nor ``torchvision.io`` decoding). See :mod:`plm._compat`."""
    from plm._compat import import_torchvision as _import

    return _import()


#: the layer order, bottom → top: each entry is one layer's top-level modules (see the docstring)
LAYERS: tuple[tuple[str, ...], ...] = (
    ("plm.errors", "plm._compat", "plm.utils"),
    ("plm.data", "plm.models", "plm.neighbors"),
    ("plm.evaluation",),
    ("plm.manifold",),
    ("plm.estimators",),
    ("plm.losses",),
    ("plm.training",),
    ("plm.viz",),
    ("plm.search",),
    ("plm.commands", "plm.cli", "plm.demo", "plm.__main__"),
)
