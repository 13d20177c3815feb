"""plm embed: folder embedding, incremental re-runs, unreadable files, model identity."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers.shapes import make_shapes_folder
from plm.cli import main
from plm.errors import UserError
from plm.search import EmbeddingStore, embed_folder, model_identity

BACKBONE = ["--backbone", "efficientnet_lite0", "--image-size", "32"]


@pytest.fixture(scope="module")
def model():
    from plm.models import ModelConfig, create_model

    return create_model(ModelConfig(backbone="efficientnet_lite0", embed_dim=None, pooling="avg", image_size=32))


@pytest.fixture
def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every image file the dataset loader decodes (the model's input), by path."""
    import plm.data.base as base

    seen: list[str] = []
    real = base.open_image

    def counting(path):
        seen.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(base, "open_image", counting)
    return seen


def _add_corrupt_files(root: Path) -> None:
    (root / "circles" / "zero.jpg").write_bytes(b"")
    good = (root / "squares" / "square_001.jpg").read_bytes()
    (root / "squares" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "triangles" / "notes.jpg").write_text("this is a text file renamed to .jpg\n")


def test_embed_cli_writes_documented_npz(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_shapes_folder(tmp_path / "imgs", per_class=4)
    out = tmp_path / "emb.npz"
    assert main(["embed", str(tmp_path / "imgs"), *BACKBONE, "--out", str(out), "--quiet"]) == 0
    assert "12 images, 1280-d" in capsys.readouterr().out
    with np.load(out, allow_pickle=False) as z:  # plain arrays only: loads without pickle
        assert set(z.files) == {"vectors", "paths", "labels", "sizes", "mtimes_ns", "skipped", "skipped_sizes",
                                "skipped_mtimes_ns", "meta"}
        assert z["vectors"].shape == (12, 1280) and z["vectors"].dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(z["vectors"], axis=1), 1.0, atol=1e-5)
        assert list(z["paths"]) == sorted(z["paths"]) and z["paths"][0].startswith("circles/")
    store = EmbeddingStore.load(out)
    assert store.class_names == {0: "circles", 1: "squares", 2: "triangles"}
    assert sorted(set(store.labels.tolist())) == [0, 1, 2]
    assert store.labels[store.paths.index("squares/square_000.png")] == 1
    assert store.model["backbone"] == "efficientnet_lite0" and store.model["image_size"] == 32
    assert store.model["preprocess"]["input_size"] == 32 and store.root == str((tmp_path / "imgs").resolve())


def test_incremental_embeds_only_new_changed_and_drops_deleted(tmp_path: Path, model, count_decodes) -> None:
    root = tmp_path / "imgs"
    make_shapes_folder(root, per_class=4)
    ident = model_identity(model, backbone="efficientnet_lite0")
    first, stats = embed_folder(model, root, ident, progress=False)
    assert (stats.embedded, stats.reused, len(count_decodes)) == (12, 0, 12)

    count_decodes.clear()
    added = make_shapes_folder(root, per_class=1, seed=7, start=50)  # 3 new files
    changed = root / "circles" / "circle_001.jpg"
    make_shapes_folder(tmp_path / "other", per_class=1, seed=9, classes=("squares",))
    shutil.copy(next((tmp_path / "other" / "squares").iterdir()), changed)
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 5_000_000_000))
    (root / "triangles" / "triangle_002.png").unlink()
    second, stats = embed_folder(model, root, ident, previous=first, progress=False)
    assert sorted(count_decodes) == sorted([p.name for p in added] + [changed.name])
    assert (stats.embedded, stats.reused, stats.dropped, stats.skipped) == (4, 10, 1, 0)
    assert len(second) == 14 and "triangles/triangle_002.png" not in second.paths
    # reused rows are byte-identical; the changed file got a new vector equal to a fresh embedding
    i_old, i_new = first.paths.index("squares/square_000.png"), second.paths.index("squares/square_000.png")
    assert np.array_equal(first.vectors[i_old], second.vectors[i_new])
    fresh, _ = embed_folder(model, root, ident, progress=False)
    np.testing.assert_allclose(second.vectors, fresh.vectors, atol=1e-5)
    assert second.paths == fresh.paths

    count_decodes.clear()
    third, stats = embed_folder(model, root, ident, previous=second, progress=False)
    assert count_decodes == [] and (stats.embedded, stats.reused) == (0, 14)


def test_other_model_reembeds_everything(tmp_path: Path, model, count_decodes) -> None:
    root = tmp_path / "imgs"
    make_shapes_folder(root, per_class=2)
    first, _ = embed_folder(model, root, model_identity(model, backbone="efficientnet_lite0"), progress=False)
    from plm.models import ModelConfig, create_model

    other = create_model(ModelConfig(backbone="efficientnet_lite0", embed_dim=None, pooling="avg", image_size=48))
    count_decodes.clear()
    second, stats = embed_folder(other, root, model_identity(other, backbone="efficientnet_lite0"), previous=first,
                                 progress=False)
    assert "model changed" in stats.reason and stats.embedded == 6 and stats.reused == 0 and len(count_decodes) == 6
    assert second.model["image_size"] == 48


def test_unreadable_files_skipped_listed_counted_and_not_retried(tmp_path: Path, capsys, count_decodes) -> None:
    root = tmp_path / "imgs"
    make_shapes_folder(root, per_class=3)
    _add_corrupt_files(root)
    (root / "squares" / "README.txt").write_text("not an image extension\n")
    out = tmp_path / "emb.npz"
    assert main(["embed", str(root), *BACKBONE, "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "skipped 3 unreadable" in text and "ignored 1 non-image" in text
    for name in ("circles/zero.jpg: zero-byte file", "squares/truncated.jpg", "triangles/notes.jpg",
                 "squares/README.txt"):
        assert name in text
    store = EmbeddingStore.load(out)
    assert len(store) == 9 and store.skipped == ["circles/zero.jpg", "squares/truncated.jpg", "triangles/notes.jpg"]
    assert not any(p in store.paths for p in store.skipped)

    count_decodes.clear()
    assert main(["embed", str(root), *BACKBONE, "--out", str(out), "--quiet"]) == 0
    assert count_decodes == [] and "skipped 3 unreadable" in capsys.readouterr().out


def test_all_unreadable_is_a_clear_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(b"")
    assert main(["embed", str(tmp_path / "imgs"), *BACKBONE, "--out", str(tmp_path / "e.npz")]) == 2
    err = capsys.readouterr().err
    assert "could be read" in err and "Traceback" not in err and not (tmp_path / "e.npz").exists()


def test_refuses_to_overwrite_a_foreign_file(tmp_path: Path, capsys) -> None:
    make_shapes_folder(tmp_path / "imgs", per_class=1)
    out = tmp_path / "precious.npz"
    np.savez(out, data=np.arange(3))
    assert main(["embed", str(tmp_path / "imgs"), *BACKBONE, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "exists and is not a plm embeddings file" in err and len(err.strip().splitlines()) == 1
    with np.load(out) as z:
        assert list(z["data"]) == [0, 1, 2]


def test_missing_folder_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["embed", str(tmp_path / "nope"), *BACKBONE, "--out", str(tmp_path / "e.npz")]) == 2
    err = capsys.readouterr().err
    assert "image folder not found" in err and len(err.strip().splitlines()) == 1


def test_store_rejects_inconsistent_arrays() -> None:
    with pytest.raises(ValueError, match="one row per path"):
        EmbeddingStore(np.zeros((2, 4)), ["a.jpg"], [0], [1], [1], root="/r", model={})
    with pytest.raises(UserError, match="file not found"):
        EmbeddingStore.load("/nonexistent/emb.npz")
