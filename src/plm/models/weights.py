"""Where a backbone's pretrained weights come from: a local file, the standard cache, or a download.

For a backbone asked for with its pretrained weights and no file:

1. the standard cache: torchvision's files in torch hub's ``checkpoints`` folder
   (``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``), timm's in the
   Hugging Face hub cache (``$HF_HOME/hub``, by default ``~/.cache/huggingface/hub``): used offline;
2. otherwise, unless ``PLM_OFFLINE`` is set, a download into that cache (the same places torchvision
   and timm use, so either finds plm's files and plm finds theirs);
3. otherwise :class:`~plm.errors.NoPretrainedWeightsError`, which names the file to pass instead
   (``--weights FILE`` / ``model.backbone_weights``) and where to put it to make it the cache.

Every file is read without unpickling anything (:func:`read_weights`: ``torch.load(weights_only=True)``,
or safetensors).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from plm.errors import NoPretrainedWeightsError

log = logging.getLogger(__name__)


def offline() -> bool:
    """Whether downloads are off: ``PLM_OFFLINE`` set to anything but ``0`` / empty (tests and CI set it)."""
    return os.environ.get("PLM_OFFLINE", "").strip() not in ("", "0")


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's published weights live.

    Attributes:
        backbone: the plm backbone name (``resnet50``, ``timm:convnext_tiny.fb_in1k``).
        url: the download address (a file URL, or the Hugging Face repository page).
        file_name: the file's name, as a user would download it.
        cache_path: where the standard cache keeps it (the file a user may put there by hand).
        hf_repo: the Hugging Face repository (timm), or ``None`` (torchvision's files).
    """

    backbone: str
    url: str
    file_name: str
    cache_path: Path
    hf_repo: Optional[str] = None


def torch_hub_source(backbone: str, url: str) -> WeightsSource:
    """A torchvision weights file: cached in torch hub's ``checkpoints`` folder under its own name."""
    name = url.rsplit("/", 1)[-1]
    return WeightsSource(backbone, url, name, Path(torch.hub.get_dir()) / "checkpoints" / name)


def hf_hub_folder() -> Path:
    """The Hugging Face hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def hf_source(backbone: str, repo: str, file_name: str = "model.safetensors") -> WeightsSource:
    """A file of a Hugging Face repository (timm's weights), cached in the hub's layout."""
    folder = hf_hub_folder() / ("models--" + repo.replace("/", "--"))
    return WeightsSource(backbone, f"https://huggingface.co/{repo}", file_name, folder / "snapshots" / "<revision>" /
                         file_name, hf_repo=repo)


def cached_file(source: WeightsSource) -> Optional[Path]:
    """The cached copy of ``source``'s file, or ``None``."""
    if source.hf_repo is None:
        return source.cache_path if source.cache_path.is_file() else None
    folder = hf_hub_folder() / ("models--" + source.hf_repo.replace("/", "--"))
    try:
        revision = (folder / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        revision = ""
    candidates = [folder / "snapshots" / revision / source.file_name] if revision else []
    candidates += sorted((folder / "snapshots").glob(f"*/{source.file_name}"))
    return next((p for p in candidates if p.is_file()), None)


def download(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` (atomically, checking the SHA-256 prefix in torchvision's file names)."""
    found = re.search(r"-([a-f0-9]{6,})\.", dest.name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(dest), hash_prefix=found.group(1) if found else None,
                                   progress=log.isEnabledFor(logging.INFO))


def hf_download(repo: str, file_name: str) -> Path:
    """Download one file of a Hugging Face repository into the hub cache; returns its path there."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo, file_name))


def pretrained_file(source: WeightsSource) -> Path:
    """The local file of ``source``'s weights: the cached copy, else a fresh download into the cache.

    Raises:
        NoPretrainedWeightsError: not cached, and offline or the download failed.
    """
    found = cached_file(source)
    if found is not None:
        return found
    if offline():
        raise NoPretrainedWeightsError.for_source(source, "not in the cache, and downloads are off (PLM_OFFLINE)")
    log.info("downloading %s's weights from %s", source.backbone, source.url)
    try:
        if source.hf_repo is None:
            download(source.url, source.cache_path)
            return source.cache_path
        return hf_download(source.hf_repo, source.file_name)
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise NoPretrainedWeightsError.for_source(source, f"not in the cache, and the download failed "
                                                          f"({type(err).__name__}: {reason[:120]})") from err


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, never unpickling objects: a safetensors file, or a ``torch.save``
    file read with ``weights_only=True``; common wrappers (``state_dict``, ``model``, ``module.``) unwrapped.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a weights file, or one holding pickled objects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise ValueError(f"{path} is a safetensors file: pip install safetensors to read it") from err
        try:
            obj: object = load_file(str(path))
        except Exception as err:  # noqa: BLE001 - a damaged file of any sort
            raise ValueError(f"{path} is not a readable safetensors file ({type(err).__name__}: {err})") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - report any decode failure the same way
            from plm.utils.io import torch_load_error

            raise torch_load_error(path, err, "weights") from None
    for key in ("state_dict", "model_state", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}
