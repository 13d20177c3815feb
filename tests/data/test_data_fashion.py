"""Fashion-MNIST (Debian files, download fallback, bad IDX files), digits and plain image folders."""

from __future__ import annotations

import gzip
import io
import os
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import plm.data.fashion_mnist as fm
from plm.data import DatasetNotFoundError, UnsafePathError, load_dataset
from plm.data.folder import load_image_folder

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(arr: np.ndarray) -> bytes:
    """An unsigned-byte IDX file, gzipped."""
    header = struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes())


def tiny_fashion(seed: int = 0) -> dict[str, bytes]:
    """The four files with 40 training and 20 test images, every class present."""
    rng = np.random.default_rng(seed)
    out = {}
    for part, n in (("train", 40), ("test", 20)):
        img_name, lbl_name = fm.FILES[part]
        out[img_name] = idx_bytes(rng.integers(0, 256, size=(n, 28, 28)))
        out[lbl_name] = idx_bytes(np.arange(n) % 10)
    return out


@pytest.fixture
def offline_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No Debian files, no $PLM_DATA_ROOT: only the (empty, per-test) download cache remains."""
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.delenv("PLM_DATA_ROOT", raising=False)


# ---------------------------------------------------------------- the real files (Debian package)

@pytest.mark.skipif(not (DEBIAN / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="needs `apt-get install dataset-fashion-mnist`")
def test_debian_fashion_mnist_split_sizes() -> None:
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test")
    assert len(train) == 30000 and set(train.labels.tolist()) == {0, 1, 2, 3, 4}
    assert len(test) == 5000 and set(test.labels.tolist()) == {5, 6, 7, 8, 9}
    assert train.ids[0].startswith("train:") and test.ids[0].startswith("test:")
    assert test.load_image(0).size == (28, 28) and test.load_image(0).mode == "RGB"
    val = load_dataset("fashion-mnist", "val", val_classes=1)
    assert len(val) == 6000 and set(val.labels.tolist()) == {4}
    assert test.class_names[9] == "Ankle boot"


# ---------------------------------------------------------------- download fallback

def test_offline_without_files_says_how_to_get_them(offline_defaults, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def offline(url, timeout=None):
        calls.append(url)
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(fm.urllib.request, "urlopen", offline)
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion-mnist", "test")
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message and "--data-root" in message
    assert "name resolution" in message and calls and calls[0].startswith(fm.URL)
    assert not list(fm.cache_dir().glob("*"))  # nothing half-written left behind


def test_download_from_a_server_with_tiny_files(offline_defaults, monkeypatch: pytest.MonkeyPatch) -> None:
    files = tiny_fashion()
    served = []

    def server(url, timeout=None):
        name = url.rsplit("/", 1)[-1]
        served.append(name)
        return io.BytesIO(files[name])

    monkeypatch.setattr(fm.urllib.request, "urlopen", server)
    test = load_dataset("fashion-mnist", "test")
    assert sorted(served) == sorted(files) and len(test) == 10  # classes 5-9 of 20 test images
    assert set(test.labels.tolist()) == {5, 6, 7, 8, 9}
    assert len(load_dataset("fashion-mnist", "train")) == 20
    assert sorted(p.name for p in fm.cache_dir().iterdir()) == sorted(files)
    assert len(served) == 4  # the second load found the cache


def test_download_of_garbage_is_refused(offline_defaults, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fm.urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"<html>proxy</html>"))
    with pytest.raises(DatasetNotFoundError, match="not a complete gzip file"):
        load_dataset("fashion-mnist", "test")
    assert not list(fm.cache_dir().glob("*"))


def test_given_root_without_files_names_them(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="train-images-idx3-ubyte.gz"):
        load_dataset("fashion-mnist", "test", root=tmp_path)


def test_root_with_tiny_files_and_a_fashion_mnist_subfolder(tmp_path: Path) -> None:
    for name, data in tiny_fashion().items():
        (tmp_path / "fashion-mnist").mkdir(exist_ok=True)
        (tmp_path / "fashion-mnist" / name).write_bytes(data)
    ds = load_dataset("fashion-mnist", "all", root=tmp_path)
    assert len(ds) == 60 and ds.num_classes == 10


# ---------------------------------------------------------------- bad IDX files

def test_truncated_and_corrupt_idx_files(tmp_path: Path) -> None:
    good = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    path = tmp_path / "x.gz"
    raw = gzip.decompress(idx_bytes(good))
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(ValueError, match="is truncated: expected 1568 values"):
        fm.read_idx(path)
    path.write_bytes(idx_bytes(good)[:-30])  # cut inside the gzip stream
    with pytest.raises(ValueError, match="not a complete gzip file"):
        fm.read_idx(path)
    path.write_bytes(gzip.compress(b"\x00\x00\x0d\x03" + raw[4:]))  # float IDX, not unsigned bytes
    with pytest.raises(ValueError, match="not an unsigned-byte IDX file"):
        fm.read_idx(path)
    path.write_bytes(gzip.compress(raw[:6]))
    with pytest.raises(ValueError, match="truncated inside its IDX header"):
        fm.read_idx(path)
    path.write_bytes(idx_bytes(good))
    assert np.array_equal(fm.read_idx(path), good)


def test_truncated_file_in_a_dataset_folder_is_a_clear_error(tmp_path: Path) -> None:
    files = tiny_fashion()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    img = fm.FILES["test"][0]
    raw = gzip.decompress(files[img])
    (tmp_path / img).write_bytes(gzip.compress(raw[:-5]))
    with pytest.raises(ValueError, match="truncated"):
        load_dataset("fashion-mnist", "test", root=tmp_path)


# ---------------------------------------------------------------- digits

def test_digits_splits() -> None:
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert set(train.labels.tolist()) == {0, 1, 2, 3, 4} and set(test.labels.tolist()) == {5, 6, 7, 8, 9}
    assert len(train) + len(test) == 1797
    assert test.load_image(0).size == (8, 8)
    assert train.fingerprint() != test.fingerprint()


# ---------------------------------------------------------------- plain image folders

def write_folder(root: Path, classes: list[str], per_class: int = 2) -> None:
    for c in classes:
        for k in range(per_class):
            (root / c).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (10, 10), (k * 40, 0, 0)).save(root / c / f"{k}.png")


def test_labelled_folder_splits(tmp_path: Path) -> None:
    write_folder(tmp_path, ["a", "b", "c", "d"])
    (tmp_path / "a" / ".hidden.png").write_bytes(b"")
    (tmp_path / "a" / "notes.txt").write_text("ignored")
    train = load_image_folder(tmp_path, "train")
    test = load_image_folder(tmp_path, "test")
    assert len(train) == 4 and set(train.labels.tolist()) == {0, 1}
    assert len(test) == 4 and set(test.labels.tolist()) == {2, 3}
    assert train.class_names == {0: "a", 1: "b", 2: "c", 3: "d"}
    assert set(load_image_folder(tmp_path, "val", val_classes=1).labels.tolist()) == {1}


def test_unlabelled_folder_and_errors(tmp_path: Path) -> None:
    Image.new("RGB", (10, 10)).save(tmp_path / "x.jpg")
    write_folder(tmp_path, ["sub"])
    ds = load_image_folder(tmp_path)
    assert len(ds) == 3 and (ds.labels == -1).all()
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_image_folder(tmp_path, "test")
    with pytest.raises(DatasetNotFoundError, match="image folder not found"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no images"):
        load_image_folder(tmp_path / "empty")


def test_folder_with_a_single_class_has_an_empty_test_split(tmp_path: Path) -> None:
    write_folder(tmp_path, ["only"])
    with pytest.raises(ValueError, match="holds no images"):
        load_image_folder(tmp_path, "test")


def test_folder_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_folder(root, ["a"])
    Image.new("RGB", (10, 10)).save(tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", root / "a" / "link.png")
    with pytest.raises(UnsafePathError):
        load_image_folder(root)
