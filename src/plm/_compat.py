"""The one place that works around this platform's torchvision wheel.

The torchvision 0.28.0 wheel paired with torch 2.13.0 is a CUDA build. Against the CPU build of
torch its C extension does not load, and ``import torchvision`` fails with
``RuntimeError: operator torchvision::nms does not exist``. Declaring the two operator schemas
the Python package registers fake kernels for (``nms`` and ``qnms``) lets the pure-Python parts
import: models and transforms. ``torchvision.ops.nms`` and ``torchvision.io`` decoding remain
unavailable, so plm decodes images with Pillow and never calls them.

The workaround engages only when the normal import fails with exactly that error.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # keeps the torch.library.Library alive for the process


def import_torchvision() -> ModuleType:
    """Import torchvision, defining missing operator schemas first if the C extension is absent."""
    global _library
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as err:
        if "torchvision::nms does not exist" not in str(err):
            raise
    import torch

    for name in list(sys.modules):  # drop the half-imported package before retrying
        if name == "torchvision" or name.startswith("torchvision."):
            del sys.modules[name]
    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS.values():
        _library.define(schema)
    return importlib.import_module("torchvision")
