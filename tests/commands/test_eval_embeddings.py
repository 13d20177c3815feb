"""Issue 24, item 3: work never repeated, and per-class results.

Before issue 24 ``plm eval`` could not read an embeddings file (``--query q/ --gallery coll/`` embedded the
gallery again right after ``plm embed`` had), had no per-class results, and ``plm embed coll --checkpoint
best.pt`` ran the backbone again for a frozen-mode head whose features ``plm train`` had just cached.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.cli import FROZEN
from helpers.shapes import embedded_collection, make_shapes_folder
from plm.cli import main
from plm.models import Backbone

#: the tests of this file were written for frozen mode (the default, mode auto, fine-tunes small sets)
BACKBONE = ["--backbone", "efficientnet_lite0", "--image-size", "32"]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = embedded_collection(tmp_path_factory.mktemp("eval-emb"), per_class=5)
    make_shapes_folder(out["tmp"] / "queries", per_class=2, seed=7)
    return out


def _metrics(capsys, argv: list[str], path: Path) -> dict:
    assert main([*argv, "--json", str(path), "--no-nmi"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    return json.loads(path.read_text())


def _no_backbone(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []

    def forward(self, x):
        calls.append(len(x))
        raise AssertionError("the backbone ran")

    monkeypatch.setattr(Backbone, "forward", forward)
    return calls


def test_eval_scores_an_embeddings_file_without_running_a_model(made, tmp_path, capsys, monkeypatch) -> None:
    by_folder = _metrics(capsys, ["eval", "--dataset", "folder", "--data-root", str(made["root"]), "--split", "all",
                                  "--no-cache", *BACKBONE], tmp_path / "a.json")
    _no_backbone(monkeypatch)
    by_file = _metrics(capsys, ["eval", "--embeddings", str(made["emb"])], tmp_path / "b.json")
    assert by_file["num_queries"] == by_folder["num_queries"] == 15
    for key in ("recall_at", "map_at_r", "r_precision"):
        assert by_file[key] == pytest.approx(by_folder[key], abs=1e-6), key


def test_a_gallery_from_its_embeddings_file_is_not_embedded_again(made, tmp_path, capsys, monkeypatch) -> None:
    both_folders = _metrics(capsys, ["eval", "--query", str(made["tmp"] / "queries"), "--gallery", str(made["root"]),
                                     "--no-cache", *BACKBONE], tmp_path / "a.json")
    import plm.evaluation as evaluation

    real = evaluation.embed_dataset
    embedded: list[int] = []

    def counting(model, dataset, *args, **kwargs):
        embedded.append(len(dataset))
        return real(model, dataset, *args, **kwargs)

    monkeypatch.setattr(evaluation, "embed_dataset", counting)
    # the model comes from the file's record: no --backbone needed
    from_file = _metrics(capsys, ["eval", "--query", str(made["tmp"] / "queries"), "--gallery", str(made["emb"]),
                                  "--no-cache"], tmp_path / "b.json")
    assert embedded == [6]  # the 6 queries only; the 15 gallery images came from the file
    assert from_file["num_reference"] == 15 and from_file["recall_at"] == pytest.approx(both_folders["recall_at"])
    assert from_file["map_at_r"] == pytest.approx(both_folders["map_at_r"], abs=1e-6)


def test_files_of_two_models_are_refused(made, tmp_path, capsys) -> None:
    other = tmp_path / "other.npz"
    assert main(["embed", str(made["tmp"] / "queries"), "--backbone", "efficientnet_lite0", "--image-size", "48",
                 "--out", str(other), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", "--query", str(other), "--gallery", str(made["emb"])]) == 2
    err = capsys.readouterr().err
    assert "different models" in err and len(err.strip().splitlines()) == 1
    assert main(["eval", "--query", str(made["tmp"] / "queries"), "--gallery", str(made["emb"]),
                 "--backbone", "efficientnet_lite0", "--image-size", "48"]) == 2
    assert "cannot be compared" in capsys.readouterr().err
    assert main(["eval", "--embeddings", str(made["emb"]), "--dataset", "digits"]) == 2
    assert "--embeddings FILE alone" in capsys.readouterr().err


def test_per_class_results_match_pytorch_metric_learning(made, tmp_path, capsys) -> None:
    pml = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    from plm.search import EmbeddingStore

    out = _metrics(capsys, ["eval", "--embeddings", str(made["emb"]), "--per-class"], tmp_path / "m.json")
    store = EmbeddingStore.load(made["emb"])
    names = [store.class_names[int(y)] for y in store.labels]
    assert set(out["per_class"]) == set(names) == {"circles", "squares", "triangles"}
    calc = pml.AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), return_per_class=True,
                                  k="max_bin_count")
    theirs = calc.get_accuracy(torch.from_numpy(store.vectors), torch.from_numpy(store.labels))
    for c, name in sorted(store.class_names.items()):
        ours = out["per_class"][name]
        assert ours["num_queries"] == names.count(name)
        assert ours["recall_at"]["1"] == pytest.approx(theirs["precision_at_1"][c], abs=1e-6)
        assert ours["map_at_r"] == pytest.approx(theirs["mean_average_precision_at_r"][c], abs=1e-6)
    n = np.array([out["per_class"][c]["num_queries"] for c in out["per_class"]])
    r1 = np.array([out["per_class"][c]["recall_at"]["1"] for c in out["per_class"]])
    assert float((n * r1).sum() / n.sum()) == pytest.approx(out["recall_at"]["1"])  # per-class rows add up


@pytest.mark.slow
def test_embed_with_a_frozen_mode_checkpoint_reuses_the_features_train_cached(tmp_path, capsys,
                                                                             monkeypatch) -> None:
    from plm.search import EmbeddingStore

    root = tmp_path / "coll"
    make_shapes_folder(root, per_class=6)
    run = tmp_path / "run"
    assert main(["train", *FROZEN, "--dataset", "folder", "--data-root", str(root), "--epochs", "1", "--out", str(run),
                 "--quiet", "model.image_size=32", "model.embed_dim=16", "sampler.batch_size=12", "sampler.k=3",
                 "proxies.num=2", "eval.nmi=false"]) == 0
    capsys.readouterr()
    fresh = tmp_path / "fresh.npz"
    assert main(["embed", str(root), "--checkpoint", str(run / "best.pt"), "--no-cache", "--out", str(fresh),
                 "--quiet"]) == 0
    real_forward = Backbone.forward
    calls = _no_backbone(monkeypatch)
    reused = tmp_path / "reused.npz"
    assert main(["embed", str(root), "--checkpoint", str(run / "best.pt"), "--out", str(reused)]) == 0
    assert calls == []  # every image's backbone features came from plm train's cache
    assert "18 of the 18 embedded took their backbone features from the feature cache" in capsys.readouterr().out
    a, b = EmbeddingStore.load(fresh), EmbeddingStore.load(reused)
    assert a.paths == b.paths
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5)
    # a changed file is embedded again (its cached features no longer describe it)
    monkeypatch.setattr(Backbone, "forward", real_forward)
    victim = next(root.rglob("*.png"))
    shutil.copy(next(p for p in root.rglob("*.jpg")), victim.with_suffix(".png"))
    assert main(["embed", str(root), "--checkpoint", str(run / "best.pt"), "--out", str(tmp_path / "c.npz"),
                 "--quiet"]) == 0
    assert "17 of the 18 embedded" in capsys.readouterr().out
