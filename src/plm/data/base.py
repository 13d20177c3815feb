"""Dataset base classes: labelled images, class-disjoint splits, safe paths, bad-file skipping.

Every dataset is an :class:`ImageDataset`: ``labels`` (int64, ``-1`` where unlabelled), ``ids``
(a stable string per item: a path relative to the root, or ``"<file>:<index>"``) and
``load_image(i)`` returning an RGB ``PIL.Image``. With a ``transform`` set, ``ds[i]`` is
``(tensor, label, i)``, or ``None`` when the file is corrupt, truncated or not an image; the
:func:`collate_skip` collate function drops those and reports their indices, so a bad file is
counted, never fatal.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from plm.utils.choices import SPLITS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset root or index file is missing; the message names the expected layout."""


class UnsafePathError(ValueError):
    """An index entry points outside the dataset root."""


class ImageLoadError(OSError):
    """An image file could not be decoded."""


def safe_join(root: Path, relative: str, resolved_root: Optional[Path] = None) -> Path:
    """``root / relative``, refusing absolute paths and anything that resolves outside ``root``.

    Symbolic links are followed before the check, so a link pointing out of the root is refused
    (whether its target exists or not). An entry that cannot be resolved at all (a symbolic link
    loop) cannot be read either: it is returned unresolved, and reading it fails like any
    unreadable image.

    Args:
        root: the dataset root.
        relative: an index entry.
        resolved_root: ``root.resolve()``, when the caller already has it (saves a system call
            per entry on large indexes).

    Raises:
        UnsafePathError: the entry would leave the dataset root, or holds a NUL byte.
    """
    if "\x00" in relative:  # no file system accepts it; os calls would raise ValueError
        raise UnsafePathError(f"index entry {relative!r} holds a NUL byte, which no file name can")
    root_resolved = resolved_root if resolved_root is not None else Path(root).resolve()
    rel = Path(relative)
    if rel.is_absolute():
        raise UnsafePathError(f"index entry {relative!r} is an absolute path; entries must stay inside {root}")
    try:
        target = (root_resolved / rel).resolve()
    except (RuntimeError, OSError):  # a symbolic link loop (RuntimeError before Python 3.13)
        lexical = Path(os.path.normpath(root_resolved / rel))
        if lexical != root_resolved and root_resolved not in lexical.parents:
            raise UnsafePathError(f"index entry {relative!r} leaves the dataset root {root}") from None
        return lexical
    if target != root_resolved and root_resolved not in target.parents:
        raise UnsafePathError(f"index entry {relative!r} leaves the dataset root {root}")
    return target


def open_image(path: Path) -> Image.Image:
    """Decode an image file fully into an RGB image.

    Raises:
        ImageLoadError: missing, zero-byte, truncated, corrupt, or not an image.
    """
    try:
        with Image.open(path) as img:
            img.load()  # force full decode so truncation is caught here
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
        raise ImageLoadError(f"cannot read image {path}: {err}") from err


def class_split(classes: Iterable[int], split: str, n_train: int, val_classes: int = 0) -> list[int]:
    """Classes of a zero-shot ``split``: the first ``n_train`` sorted classes are seen, the rest unseen.

    ``val`` is the last ``val_classes`` of the seen classes and is removed from ``train``; ``all``
    is every class. Splits are class-disjoint by construction.

    Raises:
        ValueError: unknown split, ``val`` asked for without ``val_classes``, or ``val_classes``
            leaving no training class.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    ordered = sorted(set(int(c) for c in classes))
    seen, unseen = ordered[:n_train], ordered[n_train:]
    if val_classes < 0:
        raise ValueError(f"val_classes must be ≥ 0, got {val_classes}")
    if split == "val" and val_classes == 0:
        raise ValueError("the 'val' split is carved from the seen classes: pass val_classes > 0 (--val-classes N)")
    if val_classes and val_classes >= len(seen):
        raise ValueError(f"val_classes must be in [0, {len(seen) - 1}] (there are {len(seen)} seen classes), "
                         f"got {val_classes}")
    cut = len(seen) - val_classes
    return {"train": seen[:cut], "val": seen[cut:], "test": unseen, "all": ordered}[split]


def cache_root() -> Path:
    """plm's cache folder: ``$PLM_CACHE_DIR``, default ``~/.cache/plm``."""
    return Path(os.environ.get("PLM_CACHE_DIR", Path.home() / ".cache" / "plm"))


def datasets_cache(name: str) -> Path:
    """The folder of a dataset's cache: ``cache_root()/datasets/NAME``."""
    return cache_root() / "datasets" / name


def cached_image_set(path: Path, build: Callable[[], dict], what: str) -> dict:
    """A rendered image set (``images``, ``labels``, ``ids``, ``meta``) read from its npz cache at
    ``path`` (no pickles), or built by ``build()`` and cached there atomically. A damaged cache is
    built again; a cache that cannot be written costs only a warning. ``what`` names the set in both."""
    import json
    import logging

    from plm.utils.io import atomic_write_npz

    log = logging.getLogger(__name__)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {"images": z["images"], "labels": z["labels"].astype(np.int64),
                        "ids": [str(x) for x in z["ids"]], "meta": json.loads(str(z["meta"]))}
            if len(data["images"]) == len(data["labels"]) == len(data["ids"]):
                return data
        except (OSError, ValueError, KeyError, EOFError) as err:
            log.warning("%s cache %s is damaged (%s); rendering again", what, path, err)
    data = build()
    try:
        atomic_write_npz(path, images=data["images"], labels=data["labels"], ids=np.asarray(data["ids"]),
                         meta=np.asarray(json.dumps(data["meta"])))
    except OSError as err:
        log.warning("could not cache the %s set at %s (%s); it will be rendered again next time", what, path, err)
    return data


class ImageDataset(torch.utils.data.Dataset):
    """Base class. Subclasses set ``labels``, ``ids`` and implement :meth:`load_image`."""

    name: str = "dataset"
    split: str = "all"
    labels: np.ndarray
    ids: list[str]
    class_names: Optional[dict[int, str]] = None

    def __init__(self) -> None:
        self.transform: Optional[Callable[[Image.Image], torch.Tensor]] = None

    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, index: int) -> Image.Image:
        """The RGB image at ``index``; raises :class:`ImageLoadError` if it cannot be decoded."""
        raise NotImplementedError

    def __getitem__(self, index: int):
        if self.transform is None:
            raise RuntimeError("set dataset.transform (e.g. plm.models.build_transform) before indexing")
        try:
            img = self.load_image(index)
        except ImageLoadError:
            return None
        return self.transform(img), int(self.labels[index]), int(index)

    @property
    def num_classes(self) -> int:
        """Number of distinct labels (``-1``, unlabelled, not counted)."""
        return int(np.unique(self.labels[self.labels >= 0]).size)

    @property
    def is_labelled(self) -> bool:
        """Whether every item has a label."""
        return bool(len(self.labels)) and bool((self.labels >= 0).all())

    def fingerprint(self) -> str:
        """A hash of name, split, ids, labels and content (file sizes and times): the key of on-disk feature caches."""
        h = hashlib.sha1(f"{self.name}|{self.split}|{len(self)}".encode())
        h.update("\n".join(self.ids).encode("utf-8", "surrogateescape"))  # names need not be UTF-8
        h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        h.update(self._content_key().encode())
        return h.hexdigest()[:16]

    def _content_key(self) -> str:
        return ""

    def file_of(self, index: int) -> Optional[Path]:
        """The image file of item ``index`` (``None`` for images that are not files: rendered, in memory)."""
        return None

    def subset(self, indices: Sequence[int] | np.ndarray) -> SubsetDataset:
        """A view on ``indices`` of this dataset (same images, labels and ids)."""
        return SubsetDataset(self, indices)

    def limit(self, n: Optional[int], seed: int = 0) -> ImageDataset:
        """A seeded random subset of ``n`` items (all of them when ``n`` is None or ≥ len)."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise ValueError(f"limit must be positive, got {n}")
        idx = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        return self.subset(idx)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"classes={self.num_classes})")


class SubsetDataset(ImageDataset):
    """A subset of another dataset."""

    def __init__(self, parent: ImageDataset, indices: Sequence[int] | np.ndarray):
        super().__init__()
        self.parent = parent
        self.indices = np.asarray(indices, dtype=np.int64)
        self.name, self.split, self.class_names = parent.name, parent.split, parent.class_names
        self.labels = parent.labels[self.indices]
        self.ids = [parent.ids[i] for i in self.indices]
        self.transform = parent.transform

    def load_image(self, index: int) -> Image.Image:
        return self.parent.load_image(int(self.indices[index]))

    def file_of(self, index: int) -> Optional[Path]:
        return self.parent.file_of(int(self.indices[index]))

    def _content_key(self) -> str:
        return self.parent._content_key()


class ArrayImageDataset(ImageDataset):
    """Images held in memory as a uint8 array (N, H, W) or (N, H, W, 3)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, ids: list[str], name: str, split: str):
        super().__init__()
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"images must be uint8 (N,H,W) or (N,H,W,3), got {images.dtype} {images.shape}")
        if len(images) != len(labels) or len(images) != len(ids):
            raise ValueError("images, labels and ids must have the same length")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.ids = list(ids)
        self.name, self.split = name, split

    def load_image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index]).convert("RGB")


class FileImageDataset(ImageDataset):
    """Image files under ``root`` listed by relative path, each checked to stay inside ``root``."""

    def __init__(self, root: str | os.PathLike, relpaths: Sequence[str], labels: Sequence[int], name: str,
                 split: str, class_names: Optional[dict[int, str]] = None):
        super().__init__()
        self.root = Path(root)
        if len(relpaths) != len(labels):
            raise ValueError("relpaths and labels must have the same length")
        resolved = self.root.resolve()
        self.paths = [safe_join(self.root, p, resolved) for p in relpaths]
        self.ids = [str(p).replace(os.sep, "/") for p in relpaths]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.name, self.split, self.class_names = name, split, class_names

    def load_image(self, index: int) -> Image.Image:
        return open_image(self.paths[index])

    def file_of(self, index: int) -> Optional[Path]:
        return self.paths[index]

    def _content_key(self) -> str:
        # each file's size and modification time: replacing or repairing an image changes the key
        h = hashlib.sha1(str(self.root.resolve()).encode("utf-8", "surrogateescape"))
        for path in self.paths:
            try:
                st = os.stat(path)
                h.update(f"{st.st_size}:{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(b"-\n")
        return h.hexdigest()


def collate_skip(batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """Collate ``(tensor, label, index)`` samples, dropping ``None`` (unreadable) ones.

    Returns:
        images (B, C, H, W), labels (B,), indices (B,), and the number of dropped samples as a
        one-element list (so it survives DataLoader workers).
    """
    good = [b for b in batch if b is not None]
    dropped = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), [dropped]
    images = torch.stack([b[0] for b in good])
    labels = torch.tensor([b[1] for b in good], dtype=torch.long)
    indices = torch.tensor([b[2] for b in good], dtype=torch.long)
    return images, labels, indices, [dropped]
