"""End-to-end training on digits (frozen mode, 32 px): learning, resume, checkpoints, CLI, folders."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.cli import FROZEN
from plm.cli import main
from plm.training import default_config, train
from plm.training.selection import PRETRAINED, RunSelection
from plm.training.trainer import Trainer

#: the tests of this file were written for frozen mode (the default, mode auto, fine-tunes small sets)

@pytest.fixture(scope="module")
def _digits_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("digits-features")


@pytest.fixture
def shared_cache(_digits_cache, monkeypatch):
    """One feature cache for every digits run of the module (the backbone never changes)."""
    monkeypatch.setenv("PLM_CACHE_DIR", str(_digits_cache))


@pytest.fixture(scope="module")
def finished_run(_digits_cache, tmp_path_factory):
    """A finished one-epoch run (tests copy it before touching it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLM_CACHE_DIR", str(_digits_cache))
        result = train(tiny(epochs=1), out, progress=False)
    return out, result


def _copy_run(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run[0], out)
    return out


def tiny(**kw):
    # a small centred head keeps these tests fast; the default full-width head has tests of its own
    over = {"epochs": 3, "mode": "frozen", "log": {"progress": False, "tensorboard": False},
            "sampler": {"batch_size": 30, "k": 5, "batches_per_epoch": 8},
            "model": {"embed_dim": 128, "head_init": "pca"}, "proxies": {"num": 8}, "eval": {"nmi": False}}
    for key, value in kw.items():
        if isinstance(value, dict):
            over[key] = {**over.get(key, {}), **value}
        else:
            over[key] = value
    return default_config("digits", **over)


def _states(path):
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {f"{part}.{k}": v for part in ("student_state", "teacher_state", "method_state")
            for k, v in ckpt[part].items()}


@pytest.mark.slow
def test_pipeline_starts_from_the_pca_head_unless_resuming(shared_cache, monkeypatch) -> None:
    from plm.models.embedding import EmbeddingHead
    from plm.training.distributed import init_distributed
    from plm.training.pipeline import build_pipeline
    from plm.training.splits import load_splits

    cfg = tiny()
    splits = load_splits(cfg)
    ctx = init_distributed("cpu")
    pipe = build_pipeline(cfg, splits, torch.device("cpu"), ctx, progress=False)
    ref = EmbeddingHead(pipe.train_features.shape[1], cfg.model.embed_dim)
    ref.init_pca(pipe.train_features)
    assert torch.equal(pipe.student.linear.weight, ref.linear.weight)
    assert torch.equal(pipe.teacher.module.linear.weight, ref.linear.weight)  # the teacher starts as the student
    ortho = build_pipeline(tiny(model={"head_init": "orthogonal"}), splits, torch.device("cpu"), ctx, progress=False)
    assert not torch.allclose(ortho.student.linear.weight, ref.linear.weight)

    def refuse(*_a, **_k):
        raise AssertionError("init_pca must not run when resuming")

    monkeypatch.setattr(EmbeddingHead, "init_pca", refuse)
    build_pipeline(cfg, splits, torch.device("cpu"), ctx, progress=False, fresh=False)


@pytest.mark.slow
def test_finetune_mode_trains_the_backbone_from_the_pca_head(tmp_path, shared_cache) -> None:
    from plm.evaluation import embed_dataset
    from plm.models import EmbeddingModel, ModelConfig
    from plm.models.embedding import EmbeddingHead
    from plm.training.distributed import init_distributed
    from plm.training.pipeline import build_pipeline
    from plm.training.splits import load_splits

    cfg = tiny(mode="finetune", epochs=1, sampler={"batch_size": 20, "k": 5, "batches_per_epoch": 2},
               data={"limit": 120})
    splits = load_splits(cfg)
    pipe = build_pipeline(cfg, splits, torch.device("cpu"), init_distributed("cpu"), progress=False)
    m = cfg.model
    feats = embed_dataset(EmbeddingModel(pipe.model.backbone, ModelConfig(m.backbone, None, m.pooling, False,
                                                                          m.image_size)),
                          splits.train, features=True, progress=False).vectors
    ref = EmbeddingHead(feats.shape[1], m.embed_dim)
    ref.init_pca(torch.from_numpy(feats))
    torch.testing.assert_close(pipe.model.head.linear.weight, ref.linear.weight)
    before = {k: v.clone() for k, v in pipe.model.backbone.state_dict().items()}
    result = train(cfg, tmp_path / "run", progress=False)
    # the trained weights are in last.pt (best.pt may be the untrained model, epoch 0, when no epoch beats it)
    last = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)["model_state"]
    after = {k[len("backbone."):]: v for k, v in last.items() if k.startswith("backbone.")}
    changed = [k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])]
    assert changed, "fine-tuning left the backbone unchanged"
    assert all(np.isfinite(h["loss"]) for h in result.history if h["epoch"] > 0)
    assert (tmp_path / "run" / "metrics.json").is_file()


@pytest.mark.slow
def test_finetune_steps_are_the_same_with_recomputed_activations(tmp_path, shared_cache) -> None:
    states, terms = {}, {}
    for setting in ("off", "on"):
        cfg = tiny(mode="finetune", recompute=setting, sampler={"batch_size": 20, "k": 5, "batches_per_epoch": 2},
                   data={"limit": 120})
        trainer = Trainer(cfg, tmp_path / setting, progress=False)
        assert trainer.pipeline.model.backbone.recompute is (setting == "on")
        trainer.start_epoch_state(0)
        pipe = trainer.pipeline
        before = {k: v.clone() for k, v in pipe.model.backbone.state_dict().items()}
        terms[setting] = [trainer.step(inputs, positions) for inputs, positions in pipe.batches(trainer.sampler)]
        assert any(not torch.equal(v, before[k]) for k, v in pipe.model.backbone.state_dict().items())  # it trained
        states[setting] = {**pipe.student.state_dict(),
                           **{f"teacher.{k}": v for k, v in pipe.teacher.module.state_dict().items()}}
    assert len(terms["on"]) == 2 and terms["on"] == terms["off"]
    assert states["on"].keys() == states["off"].keys()
    for name, value in states["off"].items():  # bit for bit: the same gradients, the same random draws
        assert torch.equal(value, states["on"][name]), name


@pytest.mark.slow
def test_training_lowers_loss_and_beats_untrained(tmp_path, shared_cache) -> None:
    # from a random head, so that anything the loop learns shows (the PCA head is already a good model)
    result = train(tiny(epochs=4, optim={"lr_embedding": 3e-3}, model={"head_init": "orthogonal"}), tmp_path / "run",
                   progress=False)
    hist = result.history
    assert hist[0]["epoch"] == 0 and hist[0]["val_map_at_r"] is not None  # the untrained model
    untrained = hist[0]["val_map_at_r"]
    trained = [h for h in hist if h["epoch"] > 0]
    assert trained[-1]["loss"] < trained[0]["loss"]
    assert max(h["val_map_at_r"] for h in trained) > untrained + 0.01
    assert result.selection == "val_map_at_r"
    # the best epoch that beats the pretrained features by its margin, or the pretrained features themselves
    pretrained = hist[0]["val_pretrained"]
    qualified = [h for h in hist if h["val_map_at_r"] - pretrained > h["val_margin"]]
    expected = max(qualified, key=lambda h: h["val_map_at_r"])["epoch"] if qualified else PRETRAINED
    assert result.best_epoch == expected and result.training_helped is bool(qualified)
    # outputs
    out = tmp_path / "run"
    for name in ("config.yaml", "last.pt", "best.pt", "metrics.csv", "metrics.json", "summary.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"dataset", "split", "num_queries", "recall_at", "map_at_r", "r_precision", "nmi"} <= set(metrics)
    assert metrics["split"] == "test" and metrics == result.test_metrics
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3, 4]
    for col in ("loss", "loss_point", "loss_proxy", "loss_neighbourhood", "val_map_at_r", "lr_embedding",
                "lr_proxies", "time_s"):
        assert col in rows[0], col


@pytest.mark.slow
def test_checkpoint_loads_with_load_model_and_plm_eval(finished_run, shared_cache, tmp_path) -> None:
    from plm.models import load_model

    out, result = finished_run
    model = load_model(out / "best.pt")  # the trained head, or the pretrained features when they were kept
    assert model.out_dim == (128 if result.best_epoch != PRETRAINED else model.backbone.feature_dim)
    expected = result.model.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    js = tmp_path / "eval.json"
    assert main(["eval", "--dataset", "digits", "--checkpoint", str(out / "best.pt"), "--limit", "100", "--no-nmi",
                 "--json", str(js)]) == 0
    assert 0.5 < json.loads(js.read_text())["recall_at"]["1"] <= 1.0


@pytest.mark.slow
def test_resume_gives_the_same_weights(tmp_path, shared_cache) -> None:
    cfg = tiny(epochs=3)
    train(cfg, tmp_path / "straight", progress=False)
    assert Trainer(cfg, tmp_path / "split", progress=False).run(stop_after=1) is None
    hist_after_one = json.loads(json.dumps(torch.load(tmp_path / "split" / "last.pt", weights_only=True)["history"]))
    assert [h["epoch"] for h in hist_after_one] == [0, 1]
    resumed = train(cfg, tmp_path / "split", progress=False, resume=True)
    a, b = _states(tmp_path / "straight" / "last.pt"), _states(tmp_path / "split" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=0), k
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3]


def test_a_run_of_an_older_version_resumes_when_its_config_lacks_newer_options(tmp_path, shared_cache) -> None:
    # a checkpoint written before an option existed holds no value for it: the default stands in
    cfg = tiny(epochs=2)
    assert Trainer(cfg, tmp_path / "run", progress=False).run(stop_after=1) is None
    last = tmp_path / "run" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    del ckpt["config"]["finetune_max_images"], ckpt["config"]["eval"]["label_free"]
    torch.save(ckpt, last)
    assert [h["epoch"] for h in train(cfg, tmp_path / "run", progress=False, resume=True).history] == [0, 1, 2]
    ckpt = torch.load(last, weights_only=True)
    del ckpt["config"]["eval"]["label_free"]
    torch.save(ckpt, last)  # an option the older version lacked, set to something else now, still differs
    with pytest.raises(ValueError, match="eval.label_free"):
        train(tiny(epochs=2, eval={"label_free": "lf_rank"}), tmp_path / "run", progress=False, resume=True)


def test_existing_run_and_changed_config_are_refused(finished_run, tmp_path, shared_cache) -> None:
    out = _copy_run(finished_run, tmp_path)
    with pytest.raises(ValueError, match="--resume"):
        train(tiny(epochs=1), out, progress=False)
    with pytest.raises(ValueError, match="loss.delta"):
        train(tiny(epochs=1, loss={"delta": 1.2}), out, progress=False, resume=True)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_checkpoint_gives_a_clear_error(finished_run, tmp_path, shared_cache, damage, capsys) -> None:
    from plm.models import load_model

    out = _copy_run(finished_run, tmp_path)
    last = out / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3] if damage == "truncate" else b"not a checkpoint" * 10)
    with pytest.raises(ValueError, match="corrupt, truncated"):
        train(tiny(epochs=1), out, progress=False, resume=True)
    with pytest.raises(ValueError, match="corrupt, truncated"):
        load_model(last)
    assert main(["eval", "--dataset", "digits", "--checkpoint", str(last)]) == 2
    err = capsys.readouterr().err
    assert "corrupt, truncated" in err and "Traceback" not in err


@pytest.mark.parametrize("overrides", [
    pytest.param(["method=stml"], marks=pytest.mark.slow),
    pytest.param(["method=kmeans", "kmeans.num_clusters=10"], marks=pytest.mark.slow),
    ["proxies.num=0"],
    ["manifold.subset_selection=false"],
    ["similarity=binary"],
], ids=["stml", "kmeans", "no-proxies", "no-subset-selection", "binary"])
def test_methods_and_ablations_train(tmp_path, shared_cache, overrides) -> None:
    cfg = default_config("digits", overrides=overrides + ["epochs=1", "sampler.batch_size=30",
                                                          "sampler.batches_per_epoch=4", "proxies.num=8",
                                                          "eval.nmi=false", "eval.baseline=false",
                                                          "log.progress=false"])
    result = train(cfg, tmp_path / "run", progress=False)
    assert np.isfinite(result.history[-1]["loss"])
    assert 0.0 < result.test_metrics["recall_at"]["1"] <= 1.0


def test_cli_train_writes_outputs_and_rejects_unknown_keys(tmp_path, shared_cache, capsys) -> None:
    out = tmp_path / "cli"
    code = main(["train", *FROZEN, "--dataset", "digits", "--epochs", "1", "--seed", "3", "--out", str(out),
                 "--no-progress", "sampler.batch_size=30", "sampler.batches_per_epoch=3", "proxies.num=8",
                 "eval.nmi=false",
                 "log.tensorboard=false"])
    assert code == 0
    text = capsys.readouterr().out
    assert "pretrained" in text and "R@1" in text
    saved = (out / "config.yaml").read_text()
    assert "seed: 3" in saved and "batches_per_epoch: 3" in saved
    code = main(["train", *FROZEN, "--dataset", "digits", "--out", str(tmp_path / "x"), "loss.delt=1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown config key 'loss.delt'" in err and "loss.delta" in err and "Traceback" not in err


def test_cli_resume_uses_saved_config(tmp_path, shared_cache) -> None:
    out = tmp_path / "cli"
    args = ["train", *FROZEN, "--dataset", "digits", "--epochs", "2", "--out", str(out), "--no-progress",
            "sampler.batch_size=30", "sampler.batches_per_epoch=3", "proxies.num=8", "eval.nmi=false"]
    assert main(args) == 0
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0  # finished: re-evaluates only
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
@pytest.mark.parametrize("criterion", ["lf_agreement", "lf_rank", "train_pair_loss", "last_epoch"])
def test_an_unlabelled_folder_selects_on_a_label_free_criterion(tmp_path, shared_cache, criterion, mode) -> None:
    from sklearn.datasets import load_digits

    folder = tmp_path / "images"
    folder.mkdir()
    images = load_digits().images[:60]
    for i, img in enumerate(images):
        Image.fromarray(np.uint8(img * 15)).resize((16, 16)).save(folder / f"img{i:03d}.png")
    cfg = default_config("folder", data_root=str(folder), mode=mode, epochs=2, model={"image_size": 32},
                         sampler={"batch_size": 20, "k": 5, "batches_per_epoch": 3}, proxies={"num": 4},
                         kmeans={"num_clusters": 5}, log={"progress": False}, eval={"label_free": criterion})
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.selection == criterion and result.test_metrics is None
    assert not (tmp_path / "run" / "metrics.json").exists()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["selection"] == criterion and summary["test"] is None
    assert summary["training_helped"] is None and "cannot tell" in summary["verdict"]  # no labels to know
    rows = [h for h in result.history if (h.get("loss") is not None or criterion != "train_pair_loss")]
    if criterion == "train_pair_loss":  # the pair term, not the total that L_proxy and L_neighbourhood dominate
        expected = min(rows, key=lambda h: h["loss_point"])["epoch"]
    elif criterion == "last_epoch":
        expected = 2
    else:  # the untrained model (epoch 0) is a candidate of the label-free scores
        assert result.history[0]["epoch"] == 0 and f"{criterion}_pretrained" in result.history[0]
        expected = max(rows, key=lambda h: h[criterion])["epoch"]
    assert result.best_epoch == expected
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["epoch"] == expected
    shutil.rmtree(folder)


def _scripted_validation(monkeypatch, pretrained: float, scores: list[float]) -> None:
    """Validation AP@R arrays with the given means: the pretrained features score ``pretrained``,
    the evaluated network ``scores`` in turn (epoch 0 first); every query moves together, so the
    paired standard error of a gain is zero and the margin is ``eval.min_gain``."""
    it = iter(scores)
    monkeypatch.setattr(RunSelection, "_val_ap", lambda self, which: (np.full(
        len(self.splits.val), pretrained if which == "pretrained" else next(it)), self.splits.val.labels))


def test_the_pretrained_features_are_kept_when_no_epoch_beats_them(tmp_path, shared_cache, monkeypatch,
                                                                   caplog) -> None:
    # training that only hurts: best.pt must be the pretrained features, and the run must say so
    _scripted_validation(monkeypatch, 0.9, [0.9, 0.5, 0.6])
    with caplog.at_level("WARNING", logger="plm.training.trainer"):
        result = Trainer(tiny(epochs=2), tmp_path / "run", progress=False).run()
    assert result.best_epoch == PRETRAINED and result.training_helped is False
    assert "training did not help" in caplog.text and "training did not help" in result.verdict
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best_epoch"] == PRETRAINED and summary["training_helped"] is False
    assert summary["best_value"] == summary["val_pretrained"] == pytest.approx(0.9)
    assert "did not help" in summary["verdict"]
    # best.pt is the pretrained model: the backbone's L2-normalised pooled features, no head
    from plm.models import load_model

    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert best["epoch"] == PRETRAINED and best["model_config"]["embed_dim"] is None
    model = load_model(tmp_path / "run" / "best.pt")
    assert model.out_dim == model.backbone.feature_dim
    # and the test row is the pretrained features' row
    assert result.test_metrics == result.baseline_metrics
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and last["best"]["epoch"] == PRETRAINED


def test_a_gain_within_the_margin_does_not_count(tmp_path, shared_cache, monkeypatch) -> None:
    _scripted_validation(monkeypatch, 0.5, [0.5, 0.52, 0.53])
    result = Trainer(tiny(epochs=2, eval={"min_gain": 0.05}), tmp_path / "run", progress=False).run()
    assert result.best_epoch == PRETRAINED and result.training_helped is False


def test_a_trained_epoch_that_beats_the_pretrained_features_is_selected(tmp_path, shared_cache, monkeypatch) -> None:
    _scripted_validation(monkeypatch, 0.5, [0.5, 0.4, 0.7])
    result = Trainer(tiny(epochs=2), tmp_path / "run", progress=False).run()
    assert result.best_epoch == 2 and result.training_helped is True and "training helped" in result.verdict
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["training_helped"] is True and summary["val_pretrained"] == pytest.approx(0.5)
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["epoch"] == 2


def test_the_untrained_model_is_a_candidate_too(tmp_path, shared_cache, monkeypatch) -> None:
    _scripted_validation(monkeypatch, 0.5, [0.8, 0.6, 0.7])
    result = Trainer(tiny(epochs=2), tmp_path / "run", progress=False).run()
    assert result.best_epoch == 0 and result.training_helped is True


@pytest.mark.slow
def test_frozen_mode_trains_the_last_blocks_on_cached_views(tmp_path, shared_cache) -> None:
    from plm.models import load_model
    from plm.training.pipeline import build_model

    cfg = tiny(epochs=2, model={"train_blocks": 2, "head_init": "pca_uncentered"}, data={"views": 2},
               eval={"signals": True})
    straight = train(cfg, tmp_path / "straight", progress=False)
    pretrained = build_model(cfg).state_dict()
    student = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["student_state"]
    steps = len(build_model(cfg).backbone.units())
    changed = {k for k, v in student.items() if not torch.equal(v, pretrained[k[len("model."):]])}
    # the head and the last two steps (block 15, the head convolution) train; nothing before them moves
    assert any(k.startswith("model.head.") for k in changed)
    assert any("_blocks.15." in k for k in changed) and any("_conv_head" in k for k in changed)
    assert not any(f"_blocks.{b}." in k for k in changed for b in range(steps - 3))
    assert not any("_bn" in k and k.endswith(("weight", "bias")) for k in changed)  # BatchNorm stays frozen
    # every row records the label-free scores, the pretrained features' too
    assert {"lf_agreement", "lf_rank", "lf_agreement_pretrained"} <= set(straight.history[0])
    assert all(0.0 <= h["lf_agreement"] <= 1.0 for h in straight.history)
    # best.pt is a plain model that embeds images as the run's cached-input tail did
    from plm.data import load_dataset
    from plm.evaluation import embed_dataset, retrieval_metrics

    model = load_model(tmp_path / "straight" / "best.pt")
    emb = embed_dataset(model, load_dataset("digits", "test"), cache_dir=False, progress=False)
    again = retrieval_metrics(emb.vectors, emb.labels, ks=[1], with_nmi=False)
    assert again["map_at_r"] == pytest.approx(straight.test_metrics["map_at_r"], abs=1e-4)
    # an interrupted run resumes to the same weights
    assert Trainer(cfg, tmp_path / "split", progress=False).run(stop_after=1) is None
    train(cfg, tmp_path / "split", progress=False, resume=True)
    a, b = _states(tmp_path / "straight" / "last.pt"), _states(tmp_path / "split" / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_frozen_only_options_are_refused_in_finetune_mode() -> None:
    from plm.utils.config import ConfigError

    with pytest.raises(ConfigError, match="frozen-mode options"):
        tiny(mode="finetune", data={"views": 2})
    with pytest.raises(ConfigError, match="frozen-mode options"):
        tiny(mode="finetune", model={"train_blocks": 1})


def test_split_images_trains_on_every_class_and_holds_out_images(tmp_path, shared_cache) -> None:
    from sklearn.datasets import load_digits

    from plm.training.splits import load_splits

    digits = load_digits()
    folder = tmp_path / "labelled"
    for i, (img, label) in enumerate(zip(digits.images[:200], digits.target[:200], strict=True)):
        (folder / f"class{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.uint8(img * 15)).resize((16, 16)).save(folder / f"class{label}" / f"{i:03d}.png")
    zero_shot = load_splits(default_config("folder", data_root=str(folder)))
    assert zero_shot.train.num_classes < 10  # the zero-shot protocol trains on half of the classes
    cfg = default_config("folder", data_root=str(folder), data={"split": "images"})
    splits = load_splits(cfg)
    assert splits.train.num_classes == splits.val.num_classes == splits.test.num_classes == 10
    ids = [set(s.ids) for s in (splits.train, splits.val, splits.test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert sum(map(len, ids)) == 200
    for c in range(10):  # 20 % of each class held out, half for validation, half for test
        n = int((digits.target[:200] == c).sum())
        held = int((splits.val.labels == c).sum() + (splits.test.labels == c).sum())
        assert held == int(0.2 * n + 1e-9)
    again = load_splits(default_config("folder", data_root=str(folder), data={"split": "images"}, seed=5))
    assert again.val.ids == splits.val.ids  # the hold-out does not move with the training seed
    every = load_splits(default_config("folder", data_root=str(folder), data={"split": "images", "holdout": 0}))
    assert len(every.train) == 200 and every.val is None and every.test is None
    unlabelled = tmp_path / "flat"
    unlabelled.mkdir()
    for i in range(10):
        Image.fromarray(np.uint8(digits.images[i] * 15)).save(unlabelled / f"{i}.png")
    with pytest.raises(ValueError, match="needs a labelled dataset"):
        load_splits(default_config("folder", data_root=str(unlabelled), data={"split": "images"}))


def test_the_default_head_starts_as_the_pretrained_features(tmp_path, shared_cache) -> None:
    # the library defaults: a full-width head that starts as a rotation of the pooled features, so
    # epoch 0 ranks exactly as the pretrained features do
    cfg = default_config("digits", epochs=1, sampler={"batch_size": 30, "batches_per_epoch": 2}, proxies={"num": 8},
                         eval={"nmi": False}, log={"progress": False, "tensorboard": False})
    assert cfg.model.embed_dim is None and cfg.model.head_init == "pca_uncentered"
    result = train(cfg, tmp_path / "run", progress=False)
    row0 = result.history[0]
    assert row0["val_map_at_r"] == pytest.approx(row0["val_pretrained"], abs=1e-6)
    assert result.model.out_dim == result.model.backbone.feature_dim
