"""Model identity: what an embeddings or index file records so queries are embedded the same way.

The identity is a plain JSON-able dict::

    {"source": "backbone" | "checkpoint", "backbone": "efficientnet_lite0",
     "checkpoint": "/abs/path.pt" | None, "weights": "/abs/weights.pth" | None,
     "image_size": 32 | None, "config": {...ModelConfig...}, "preprocess": {...},
     "dim": 1280, "fingerprint": "<16 hex>"}

``fingerprint`` hashes the model's config, preprocessing and every weight
(:func:`plm.evaluation.model_fingerprint`), so two identities name the same model exactly when
their fingerprints agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from plm.errors import UserError


def model_identity(model: Any, backbone: Optional[str] = None, checkpoint: Optional[str] = None,
                   weights: Optional[str] = None) -> dict[str, Any]:
    """The identity record of ``model``, built from ``--backbone NAME`` or ``--checkpoint PATH``.

    Args:
        model: the :class:`~plm.models.EmbeddingModel`.
        backbone: the backbone name when the model is a pretrained backbone.
        checkpoint: the checkpoint path when the model was loaded from one (stored absolute).
        weights: a local ImageNet weights file used with ``backbone`` (stored absolute).
    """
    from plm.evaluation import model_fingerprint

    if (backbone is None) == (checkpoint is None):
        raise ValueError("give exactly one of backbone= or checkpoint=")
    return {
        "source": "checkpoint" if checkpoint else "backbone",
        "backbone": model.config.backbone,
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
        "weights": str(Path(weights).resolve()) if weights else None,
        "image_size": model.config.image_size,
        "config": model.config.to_dict(),
        "preprocess": model.preprocess.to_dict(),
        "dim": int(model.out_dim),
        "fingerprint": model_fingerprint(model),
    }


def describe(identity: dict[str, Any]) -> str:
    """A short human-readable name: ``backbone efficientnet_lite0 @32px`` or ``checkpoint /x.pt @64px``."""
    where = identity.get("checkpoint") if identity.get("source") == "checkpoint" else identity.get("backbone")
    size = (identity.get("preprocess") or {}).get("input_size")
    return f"{identity.get('source')} {where} @{size}px ({identity.get('dim')}-d, {identity.get('fingerprint')})"


def model_from_identity(identity: dict[str, Any], checkpoint: Optional[str] = None, check: bool = True) -> Any:
    """Rebuild the model an identity names.

    Args:
        identity: a record from :func:`model_identity`.
        checkpoint: use this checkpoint file instead of the recorded path (e.g. after moving it).
        check: require the rebuilt model's fingerprint to match the recorded one.

    Raises:
        UserError: the recorded checkpoint is gone, or the model is not the one recorded.
    """
    from plm.models.factory import build_embedder

    if identity.get("source") not in ("backbone", "checkpoint"):
        raise UserError("the file records no usable model identity; re-create it with plm embed")
    ckpt = checkpoint or (identity["checkpoint"] if identity["source"] == "checkpoint" else None)
    if ckpt is not None and not Path(ckpt).is_file():
        raise UserError(f"the checkpoint the index was built with is missing: {ckpt}; "
                        f"pass --checkpoint PATH to point at its new location")
    backbone = None if ckpt else identity["backbone"]
    weights = identity.get("weights")
    model = build_embedder(backbone=backbone, checkpoint=ckpt, weights=weights, image_size=identity.get("image_size"))
    if check:
        ident = model_identity(model, backbone=backbone, checkpoint=ckpt, weights=weights)
        if ident["dim"] != identity.get("dim"):
            raise UserError(f"dimension mismatch: the index holds {identity.get('dim')}-d vectors but "
                            f"{describe(ident)} gives {ident['dim']}-d embeddings; search with the model the "
                            f"index was built with ({describe(identity)}) or rebuild the index")
        if ident["fingerprint"] != identity.get("fingerprint"):
            raise UserError(f"model mismatch: the index was built with {describe(identity)} but the model "
                            f"loaded now is {describe(ident)} (changed weights?); rebuild with plm embed + "
                            f"plm index, or pass the original checkpoint with --checkpoint")
    return model.eval()
