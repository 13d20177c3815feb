"""Each backbone's own preprocessing, so callers never guess input size or normalisation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class PreprocessConfig:
    """Input size and normalisation a backbone expects (timm's ``data_config`` idea).

    Attributes:
        input_size: side of the square crop fed to the network.
        resize_size: side the shorter edge is resized to before the centre crop at test time.
        mean: per-channel mean subtracted after scaling pixels to [0, 1].
        std: per-channel standard deviation divided by after subtracting ``mean``.
        crop_scale: RandomResizedCrop scale range used for training augmentation.
        interpolation: resampling of the resize, ``bilinear`` or ``bicubic`` (as the weights were trained).
    """

    input_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_scale: tuple[float, float] = (0.16, 1.0)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")

    def with_input_size(self, size: int) -> PreprocessConfig:
        """The same config at another resolution, keeping the resize/crop ratio."""
        if size <= 0:
            raise ValueError(f"image size must be positive, got {size}")
        ratio = self.resize_size / self.input_size
        return replace(self, input_size=size, resize_size=max(size, int(round(size * ratio))))

    def to_dict(self) -> dict:
        """Plain-dict form for configs and checkpoints (``interpolation`` only when not bilinear, so the
        records, and with them the fingerprints, of files written before it existed stay valid)."""
        out = asdict(self)
        if out["interpolation"] == "bilinear":
            del out["interpolation"]
        return out


def _to_tensor(img: Image.Image, mean: tuple, std: tuple) -> torch.Tensor:
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    t = torch.from_numpy(arr).permute(2, 0, 1)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (t - m) / s


def build_transform(cfg: PreprocessConfig, train: bool = False) -> Callable[[Image.Image], torch.Tensor]:
    """A PIL-image → normalised CHW tensor transform for ``cfg``.

    Test time: resize the shorter side to ``resize_size``, centre-crop ``input_size``.
    Training: RandomResizedCrop(``input_size``, scale=``crop_scale``) and a horizontal flip.
    """
    from plm._compat import import_torchvision

    import_torchvision()
    from torchvision import transforms as T

    mode = T.InterpolationMode(cfg.interpolation)
    if train:
        geo = T.Compose([T.RandomResizedCrop(cfg.input_size, scale=cfg.crop_scale, interpolation=mode),
                         T.RandomHorizontalFlip()])
    else:
        geo = T.Compose([T.Resize(cfg.resize_size, interpolation=mode), T.CenterCrop(cfg.input_size)])

    def transform(img: Image.Image) -> torch.Tensor:
        return _to_tensor(geo(img.convert("RGB")), cfg.mean, cfg.std)

    return transform
