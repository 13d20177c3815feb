"""CUB-200-2011, Cars-196 and SOP loaders on small fixture folders written in the official layouts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.datasets import break_files, write_cars, write_cub, write_image, write_sop
from plm.data import (
    DatasetNotFoundError,
    UnsafePathError,
    collate_skip,
    load_dataset,
)
from plm.data.cars import load_cars196
from plm.data.cub import load_cub200
from plm.data.sop import load_sop


def labels_of(ds) -> set[int]:
    return {int(y) for y in ds.labels}


# ---------------------------------------------------------------- CUB-200-2011

CUB = {1: 3, 2: 2, 3: 2, 100: 2, 101: 3, 150: 2, 200: 2}


def test_cub_splits_counts_labels_and_names(tmp_path: Path) -> None:
    folder = write_cub(tmp_path, CUB)
    train, test, everything = (load_cub200(tmp_path, s) for s in ("train", "test", "all"))
    assert len(train) == 9 and labels_of(train) == {1, 2, 3, 100}
    assert len(test) == 7 and labels_of(test) == {101, 150, 200}
    assert len(everything) == 16 and labels_of(train).isdisjoint(labels_of(test))
    assert train.class_names[101] == "Bird_101" and train.ids[0] == "001.Bird_1/Bird_1_0000.jpg"
    assert train.load_image(0).size == (24, 20)
    # the CUB_200_2011 folder itself works as root too, through load_dataset
    assert len(load_dataset("cub200", "test", root=folder)) == 7


def test_cub_val_is_carved_from_the_seen_classes(tmp_path: Path) -> None:
    write_cub(tmp_path, CUB)
    train = load_cub200(tmp_path, "train", val_classes=2)
    val = load_cub200(tmp_path, "val", val_classes=2)
    assert labels_of(val) == {3, 100} and labels_of(train) == {1, 2}
    assert labels_of(val).isdisjoint(labels_of(train)) and len(val) + len(train) == 9
    with pytest.raises(ValueError, match="val-classes"):
        load_cub200(tmp_path, "val")
    with pytest.raises(ValueError, match="val_classes must be in"):
        load_cub200(tmp_path, "train", val_classes=4)


def test_cub_missing_root_and_index_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="(?s)does not exist.*images.txt.*image_class_labels.txt"):
        load_cub200(tmp_path / "nowhere")
    folder = write_cub(tmp_path, {1: 1, 101: 1})
    (folder / "image_class_labels.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="image_class_labels.txt"):
        load_cub200(tmp_path)
    with pytest.raises(ValueError, match="needs --data-root"):
        load_dataset("cub200", "test", root=None)


def test_cub_malformed_index_names_file_and_line(tmp_path: Path) -> None:
    folder = write_cub(tmp_path, {1: 1, 101: 1})
    (folder / "image_class_labels.txt").write_text("1 1\n2\n")
    with pytest.raises(ValueError, match=r"image_class_labels.txt:2: expected 2 fields"):
        load_cub200(tmp_path)
    (folder / "image_class_labels.txt").write_text("1 one\n2 101\n")
    with pytest.raises(ValueError, match="class id must be an integer"):
        load_cub200(tmp_path)
    (folder / "image_class_labels.txt").write_text("1 1\n")
    with pytest.raises(ValueError, match="no class for image id"):
        load_cub200(tmp_path)


@pytest.mark.parametrize("entry", ["../../outside.jpg", "/etc/passwd", "001.Bird_1/../../../x.jpg"])
def test_cub_entries_leaving_the_root_are_refused(tmp_path: Path, entry: str) -> None:
    folder = write_cub(tmp_path, {1: 1, 101: 1})
    (folder / "images.txt").write_text(f"1 {entry}\n2 101.Bird_101/Bird_101_0000.jpg\n")
    with pytest.raises(UnsafePathError):
        load_cub200(tmp_path, "all")


def test_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    folder = write_cub(tmp_path / "data", {1: 1, 101: 1})
    write_image(tmp_path / "secret.jpg", seed=1)
    link = folder / "images" / "001.Bird_1" / "link.jpg"
    os.symlink(tmp_path / "secret.jpg", link)
    (folder / "images.txt").write_text("1 001.Bird_1/link.jpg\n2 101.Bird_101/Bird_101_0000.jpg\n")
    with pytest.raises(UnsafePathError, match="leaves the dataset root"):
        load_cub200(tmp_path / "data", "all")


# ---------------------------------------------------------------- Cars-196

CARS = {1: 2, 50: 3, 98: 2, 99: 2, 196: 3}


def test_cars_splits_from_a_real_struct_layout(tmp_path: Path) -> None:
    write_cars(tmp_path, CARS)
    train, test = load_cars196(tmp_path, "train"), load_cars196(tmp_path, "test")
    # the official 'test' flag (set on every other image) is ignored: all of classes 1-98 train
    assert len(train) == 7 and labels_of(train) == {1, 50, 98}
    assert len(test) == 5 and labels_of(test) == {99, 196}
    assert train.class_names[196] == "Car model 196"
    assert train.ids[0] == "car_ims/000001.jpg" and train.load_image(0).mode == "RGB"
    val = load_dataset("cars196", "val", root=tmp_path, val_classes=1)
    assert labels_of(val) == {98} and len(load_cars196(tmp_path, "all")) == 12


def test_cars_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="(?s)cars_annos.mat.*car_ims"):
        load_cars196(tmp_path)
    (tmp_path / "cars_annos.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(ValueError, match="cannot read"):
        load_cars196(tmp_path)
    from scipy.io import savemat

    savemat(tmp_path / "cars_annos.mat", {"something_else": np.zeros(3)})
    with pytest.raises(ValueError, match="no struct array 'annotations'"):
        load_cars196(tmp_path)


def test_cars_path_leaving_the_root_is_refused(tmp_path: Path) -> None:
    write_cars(tmp_path, {1: 1, 99: 1}, paths=["car_ims/000001.jpg", "../elsewhere/000002.jpg"])
    with pytest.raises(UnsafePathError):
        load_cars196(tmp_path, "test")


# ---------------------------------------------------------------- Stanford Online Products

def test_sop_splits_and_val(tmp_path: Path) -> None:
    folder = write_sop(tmp_path, train={1: 2, 2: 3, 3: 2, 4: 2}, test={11: 2, 12: 4})
    train, test = load_sop(tmp_path, "train"), load_sop(folder, "test")
    assert len(train) == 9 and labels_of(train) == {1, 2, 3, 4}
    assert len(test) == 6 and labels_of(test) == {11, 12}
    assert test.ids[0] == "chair_final/11_0.JPG" and test.load_image(0).size == (24, 20)
    val = load_sop(tmp_path, "val", val_classes=2)
    train2 = load_sop(tmp_path, "train", val_classes=2)
    assert labels_of(val) == {3, 4} and labels_of(train2) == {1, 2}
    assert len(load_dataset("sop", "all", root=tmp_path)) == 15


def test_sop_bad_inputs(tmp_path: Path) -> None:
    folder = write_sop(tmp_path, train={1: 2}, test={2: 2})
    (folder / "Ebay_test.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="Ebay_test.txt"):
        load_sop(tmp_path, "test")
    (folder / "Ebay_test.txt").write_text("image_id class_id super_class_id path\n9 1 1 bicycle_final/1_0.JPG\n")
    with pytest.raises(ValueError, match="share 1 class"):
        load_sop(tmp_path, "all")
    (folder / "Ebay_test.txt").write_text("image_id class_id super_class_id path\n9 2 1 ../../x.JPG\n")
    with pytest.raises(UnsafePathError):
        load_sop(tmp_path, "test")
    (folder / "Ebay_test.txt").write_text("image_id class_id super_class_id path\n9 2\n")
    with pytest.raises(ValueError, match="Ebay_test.txt:2: expected 4 fields"):
        load_sop(tmp_path, "test")


# ---------------------------------------------------------------- unreadable images: skipped, counted, reported

def test_unreadable_images_are_skipped_and_counted(tmp_path: Path) -> None:
    from plm.models.preprocess import PreprocessConfig, build_transform

    write_cub(tmp_path, {1: 4, 101: 5})
    ds = load_cub200(tmp_path, "test")
    break_files(ds.root, ds.ids[:4])
    ds.transform = build_transform(PreprocessConfig(16, 18, (0.5,) * 3, (0.5,) * 3))
    assert [ds[i] is None for i in range(5)] == [True, True, True, True, False]
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_skip)
    batches = list(loader)
    assert [b[3][0] for b in batches] == [3, 1]  # dropped per batch
    assert sum(len(b[2]) for b in batches) == 1 and batches[1][2].tolist() == [4]
    assert batches[0][0].shape == (0,)


def test_embed_dataset_reports_skipped_ids(tmp_path: Path) -> None:
    from plm.evaluation import embed_dataset
    from plm.models import ModelConfig, create_model

    write_cub(tmp_path, {1: 4, 101: 5})
    ds = load_cub200(tmp_path, "test")
    break_files(ds.root, ds.ids[1:5])
    model = create_model(ModelConfig(embed_dim=8, image_size=32), pretrained=False)
    emb = embed_dataset(model, ds, batch_size=2, cache_dir=False, progress=False)
    assert emb.skipped == ds.ids[1:5] and emb.ids == [ds.ids[0]]
    assert emb.vectors.shape == (1, 8) and emb.labels.tolist() == [101]
