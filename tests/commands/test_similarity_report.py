"""``plm similarity-report`` end to end on digits, and on a features file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from plm.cli import build_parser, main


def test_listed_in_help() -> None:
    assert "similarity-report" in build_parser().format_help()


@pytest.mark.slow
def test_digits_json(tmp_path, capsys) -> None:
    out = tmp_path / "quality.json"
    assert main(["similarity-report", "--dataset", "digits", "--backbone", "efficientnet_lite0", "--image-size", "32",
                 "--limit", "150", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "purity" in printed and "correlation" in printed
    data = json.loads(out.read_text())
    assert data["dataset"] == "digits" and data["num_points"] == 150
    assert set(data["estimators"]) == {"kmeans", "hierarchical", "random_walk", "gaussian", "stml", "plm"}
    for name, r in data["estimators"].items():
        assert -1 <= r["correlation"] <= 1, name
        if name in ("random_walk", "gaussian"):
            assert r["purity"] is None
        else:
            assert 0 < r["purity"] <= 1
        assert name in printed


def _blobs_file(tmp_path, classes: int, per_class: int, dim: int, noise: float, seed: int):
    """A features file of Gaussian blobs, one per class ('vectors' + 'labels')."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    vectors = (rng.normal(size=(classes, dim))[labels] + noise * rng.normal(size=(len(labels), dim)))
    path = tmp_path / "f.npz"
    np.savez(path, vectors=vectors.astype(np.float32), labels=labels)
    return path


def test_features_file_sparse_mode_and_skip_notice(tmp_path, capsys) -> None:
    feats = _blobs_file(tmp_path, classes=20, per_class=15, dim=32, noise=0.5, seed=0)
    out = tmp_path / "q.json"
    code = main(["similarity-report", "--dataset", "digits", "--features", str(feats), "--dense-max", "100",
                 "--exact-pairs", "1000", "--eps", "0.3", "--estimators", "plm", "hierarchical", "stml",
                 "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "hierarchical skipped" in printed
    data = json.loads(out.read_text())
    assert data["correlation_method"] == "stratified" and data["plm_config"]["eps"] == 0.3
    assert data["estimators"]["hierarchical"]["purity"] is None and data["estimators"]["plm"]["mode"] == "sparse"
    assert data["estimators"]["plm"]["correlation"] > 0.3  # separable blobs


def test_batch_regime_prints_group_purity_and_passes_the_pl_options(tmp_path, capsys) -> None:
    feats = _blobs_file(tmp_path, classes=10, per_class=24, dim=16, noise=0.4, seed=1)
    out = tmp_path / "b.json"
    assert main(["similarity-report", "--dataset", "digits", "--features", str(feats), "--regime", "batch",
                 "--batches", "3", "--estimators", "plm", "gaussian", "--on-breach", "stop", "--candidates", "8",
                 "--quiet", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "purity" in printed and "group size" in printed
    data = json.loads(out.read_text())
    assert data["plm_config"]["on_breach"] == "stop" and data["plm_config"]["max_candidates"] == 8
    pl, gauss = data["estimators"]["plm"], data["estimators"]["gaussian"]
    assert 0.5 < pl["purity"] <= 1.0 and 2.0 <= pl["mean_group_size"] <= 9.0  # anchor + at most 8 candidates
    assert gauss["purity"] is None
    assert "AP − plm" in printed and data["reference"] == "plm"
    assert gauss["ap_diff"] == pytest.approx(gauss["ap"] - pl["ap"])


def test_seed_groups_need_the_batch_regime(tmp_path, capsys) -> None:
    feats = _blobs_file(tmp_path, classes=10, per_class=24, dim=16, noise=0.4, seed=1)
    out = tmp_path / "g.json"
    assert main(["similarity-report", "--dataset", "digits", "--features", str(feats), "--regime", "batch",
                 "--batches", "2", "--estimators", "plm", "--seed-groups", "--quiet", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["plm_config"]["group_size"] == 5 and data["estimators"]["plm"]["mean_group_size"] <= 5.0
    assert main(["similarity-report", "--dataset", "digits", "--features", str(feats), "--seed-groups"]) == 2
    assert "--seed-groups needs --regime batch" in capsys.readouterr().err


def test_batch_regime_rejects_a_reference_it_does_not_run(tmp_path, capsys) -> None:
    feats = _blobs_file(tmp_path, classes=10, per_class=24, dim=16, noise=0.4, seed=1)
    assert main(["similarity-report", "--dataset", "digits", "--features", str(feats), "--regime", "batch",
                 "--batches", "2", "--estimators", "gaussian", "--reference", "plm", "--quiet"]) == 2
    assert "--reference plm is not among" in capsys.readouterr().err


def test_bad_arguments_are_one_line_errors(tmp_path, capsys) -> None:
    assert main(["similarity-report", "--dataset", "digits", "--features", str(tmp_path / "none.npz")]) == 2
    assert "cannot read features" in capsys.readouterr().err
    assert main(["similarity-report", "--dataset", "digits", "--features", str(tmp_path / "x.npz"),
                 "--estimators", "bogus"]) == 2
    assert "unknown estimator" in capsys.readouterr().err
    # issue 24: without --backbone, --checkpoint or --features the backbone whose weights ship is used
    from plm.cli import build_parser

    args = build_parser().parse_args(["similarity-report", "--dataset", "digits"])
    assert args.backbone is args.checkpoint is args.features is None  # filled in by model_from_args


def test_clusters_zero_is_refused_not_taken_as_the_default(tmp_path, capsys) -> None:
    """Issue 27: ``--clusters 0`` silently meant the number of classes."""
    feats = _blobs_file(tmp_path, classes=3, per_class=8, dim=4, noise=0.4, seed=1)
    with pytest.raises(SystemExit) as exc:
        main(["similarity-report", "--dataset", "digits", "--features", str(feats), "--estimators", "kmeans",
              "--clusters", "0", "--quiet"])
    assert exc.value.code == 2
    assert "--clusters: must be an integer >= 1, got 0" in capsys.readouterr().err


def test_context_lifts_the_pl_similarity_as_training_does(tmp_path, capsys) -> None:
    """--context C scores the PL estimator with training's contextual lift; it needs dense similarities."""
    feats = _blobs_file(tmp_path, classes=10, per_class=12, dim=16, noise=0.6, seed=2)
    results = {}
    for name, extra in [("plain", []), ("lifted", ["--context", "0.25"])]:
        out = tmp_path / f"{name}.json"
        assert main(["similarity-report", "--dataset", "digits", "--features", str(feats), "--estimators", "plm",
                     "--quiet", "--json", str(out), *extra]) == 0
        results[name] = json.loads(out.read_text())
    assert results["lifted"]["context"] == 0.25 and results["lifted"]["context_mode"] == "raise"
    assert results["plain"]["context"] is None
    plain, lifted = results["plain"]["estimators"]["plm"], results["lifted"]["estimators"]["plm"]
    assert lifted["correlation"] != plain["correlation"]
    assert main(["similarity-report", "--dataset", "digits", "--features", str(feats), "--context", "0.25",
                 "--dense-max", "50"]) == 2
    assert "--context needs dense similarities" in capsys.readouterr().err
    assert main(["similarity-report", "--dataset", "digits", "--features", str(feats), "--context", "2"]) == 2
