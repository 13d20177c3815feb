"""Fashion-MNIST from its IDX files: zero-shot split classes 0-4 (seen) / 5-9 (unseen).

Where the files are looked for, in order: the ``root`` given, ``$PLM_DATA_ROOT/fashion-mnist``,
Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``) and the plm
download cache (``~/.cache/plm/datasets/fashion-mnist``). When none has them, plm tries the
official download into the cache and otherwise raises :class:`DatasetNotFoundError` saying how
to get the files.
"""

from __future__ import annotations

import gzip
import http.client
import os
import struct
import urllib.request
import zlib
from pathlib import Path
from typing import Optional

import numpy as np

from plm.data.base import ArrayImageDataset, DatasetNotFoundError, class_split, datasets_cache

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
CLASS_NAMES = {0: "T-shirt/top", 1: "Trouser", 2: "Pullover", 3: "Dress", 4: "Coat",
               5: "Sandal", 6: "Shirt", 7: "Sneaker", 8: "Bag", 9: "Ankle boot"}


def cache_dir() -> Path:
    """Download cache: ``$PLM_CACHE_DIR/datasets/fashion-mnist`` (default ``~/.cache/plm``)."""
    return datasets_cache("fashion-mnist")


def _has_files(folder: Path) -> bool:
    return all((folder / f).is_file() for pair in FILES.values() for f in pair)


def _candidates(root: Optional[str | os.PathLike]) -> list[Path]:
    if root is not None:
        return [Path(root).expanduser(), Path(root).expanduser() / "fashion-mnist"]
    found = []
    if os.environ.get("PLM_DATA_ROOT"):
        found.append(Path(os.environ["PLM_DATA_ROOT"]) / "fashion-mnist")
    return found + [DEBIAN_DIR, cache_dir()]


def _download(target: Path, timeout: float = 20.0) -> None:
    """Fetch the four files into ``target``, each written under a temporary name, checked, then renamed."""
    target.mkdir(parents=True, exist_ok=True)
    for pair in FILES.values():
        for name in pair:
            dest = target / name
            if dest.is_file():
                continue
            tmp = target / (name + ".part")
            try:
                with urllib.request.urlopen(URL + name, timeout=timeout) as resp, open(tmp, "wb") as fh:
                    fh.write(resp.read())
                read_idx(tmp)  # a proxy's HTML page or a cut-off transfer is refused here
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)


def find_fashion_mnist(root: Optional[str | os.PathLike] = None, download: bool = True) -> Path:
    """The folder holding the four IDX ``.gz`` files, downloading them if allowed and possible.

    Raises:
        DatasetNotFoundError: not found and not downloadable; the message says how to get them.
    """
    candidates = _candidates(root)
    for folder in candidates:
        if _has_files(folder):
            return folder
    expected = ", ".join(f for pair in FILES.values() for f in pair)
    if root is not None:
        raise DatasetNotFoundError(f"Fashion-MNIST not found in {root}: expected the files {expected} there "
                                   f"(on Debian/Ubuntu: `apt-get install dataset-fashion-mnist`, then "
                                   f"--data-root {DEBIAN_DIR})")
    error = "download disabled"
    if download:
        try:
            _download(cache_dir())
            return cache_dir()
        except (OSError, ValueError, http.client.HTTPException) as err:
            error = f"download from {URL} failed: {err}"
    raise DatasetNotFoundError(
        "Fashion-MNIST not found (looked in " + ", ".join(map(str, candidates)) + f"; {error}). "
        "On Debian/Ubuntu run `apt-get install dataset-fashion-mnist`, or download "
        f"{expected} from {URL} into a folder and pass --data-root FOLDER."
    )


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (unsigned-byte images or labels) into a numpy array.

    Raises:
        ValueError: not gzip, not an unsigned-byte IDX file, truncated, or with extra data.
    """
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        raise ValueError(f"{path} is not a complete gzip file ({type(err).__name__}: {err}); "
                         f"delete it and get it again") from err
    if len(data) < 4:
        raise ValueError(f"{path} is truncated: {len(data)} bytes, not even an IDX header")
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3):
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {magic:#x})")
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path} is truncated inside its IDX header")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    expected = int(np.prod(dims))
    if arr.size != expected:
        state = "truncated" if arr.size < expected else "longer than its header says"
        raise ValueError(f"{path} is {state}: expected {expected} values for shape {dims}, found {arr.size}")
    return arr.reshape(dims)


def load_fashion_mnist(split: str = "train", root: Optional[str | os.PathLike] = None, val_classes: int = 0,
                       download: bool = True) -> ArrayImageDataset:
    """Fashion-MNIST zero-shot split: ``train``/``val`` from the training file (classes 0-4),
    ``test`` from the official test file (classes 5-9), ``all`` = both files."""
    folder = find_fashion_mnist(root, download=download)
    keep = set(class_split(range(10), split, n_train=5, val_classes=val_classes))
    parts = ["train", "test"] if split == "all" else ["test" if split == "test" else "train"]
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    ids: list[str] = []
    for part in parts:
        img_file, lbl_file = FILES[part]
        x, y = read_idx(folder / img_file), read_idx(folder / lbl_file).astype(np.int64)
        if len(x) != len(y):
            raise ValueError(f"{folder}: {img_file} and {lbl_file} disagree on the number of items")
        sel = np.flatnonzero(np.isin(y, sorted(keep)))
        images.append(x[sel])
        labels.append(y[sel])
        ids.extend(f"{part}:{i}" for i in sel)
    ds = ArrayImageDataset(np.concatenate(images), np.concatenate(labels), ids, "fashion-mnist", split)
    ds.class_names = CLASS_NAMES
    return ds
