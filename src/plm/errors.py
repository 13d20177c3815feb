"""Errors that the CLI reports as one clear line (exit status 2) instead of a traceback."""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    """Bad input from the user: a wrong flag combination, a missing file, an unusable dataset."""


class OutputError(UserError):
    """An output path cannot be used (it is an input, a folder, below a file, not plm's) or written
    (permission, read-only file system, disk full, file-size limit); the message names the path and
    the cause in one line."""


class TrainingDivergedError(UserError, FloatingPointError):
    """The training loss became NaN or infinite; the message names the epoch and step."""


class NoPretrainedWeightsError(ValueError):
    """Pretrained weights were asked for a backbone whose weights are neither shipped, nor cached, nor
    downloadable now; the model factory turns it into a :class:`UserError` naming the option that
    gives a file (``--weights FILE``, ``model.backbone_weights``).

    Attributes:
        backbone: the backbone.
        reason: why there are none (``not in the cache, and the download failed (…)``).
        file_hint: the file to pass instead and where it comes from (``resnet50-11ad3fa6.pth from URL``).
        cache_hint: where a copy would be found without a download (may be empty).
    """

    def __init__(self, message: str, backbone: str = "", reason: str = "", file_hint: str = "",
                 cache_hint: str = ""):
        super().__init__(message)
        self.backbone, self.reason, self.file_hint, self.cache_hint = backbone, reason, file_hint, cache_hint

    @classmethod
    def for_source(cls, source: Any, reason: str) -> NoPretrainedWeightsError:
        """The error for a :class:`plm.models.weights.WeightsSource` that could not be had."""
        file_hint = f"{source.file_name} from {source.url}"
        cache_hint = "" if source.hf_repo else f"or copy it to {source.cache_path}"
        return cls(f"no pretrained weights for {source.backbone} here: {reason}; pass pretrained=PATH to a local "
                   f"copy ({file_hint}){', ' + cache_hint if cache_hint else ''}, or pretrained=False for an "
                   f"explicit random initialisation", source.backbone, reason, file_hint, cache_hint)
