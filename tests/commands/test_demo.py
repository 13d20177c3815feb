"""``plm demo``: the digits fallback end to end, its outputs and its command line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from plm.cli import main
from plm.demo import PRESETS, VARIANTS, _aggregate, pick_dataset, run_demo


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One quick demo run on digits (Fashion-MNIST hidden behind a missing --data-root)."""
    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--quick", "--epochs", "2", "--out", str(out), "--data-root", str(out / "no-such-folder")])
    assert code == 0
    return out


def test_missing_fashion_mnist_falls_back_to_digits(tmp_path: Path) -> None:
    name, reason = pick_dataset(str(tmp_path / "missing"), "fashion-mnist")
    assert name == "digits"
    assert "train-images-idx3-ubyte.gz" in reason


def test_missing_fonts_fall_back_and_say_why(tmp_path: Path) -> None:
    name, reason = pick_dataset(str(tmp_path / "missing"))
    assert name == "digits"
    assert "fonts-noto-core" in reason and "train-images-idx3-ubyte.gz" in reason


@pytest.mark.slow
def test_the_demo_runs_on_glyphs_by_default() -> None:
    """scripts/install.sh installs the fonts; with them the default demo dataset is glyphs."""
    name, reason = pick_dataset()
    assert (name, reason) == ("glyphs", None)


@pytest.mark.slow
def test_results_json_contract(demo_out: Path) -> None:
    data = json.loads((demo_out / "results.json").read_text())
    assert data["dataset"] == "digits"
    assert set(data["methods"]) == {"pretrained", "initial", "plm"}
    for metrics in data["methods"].values():
        assert set(metrics["recall_at"]) == {"1", "2", "4", "8"}
        values = [metrics["recall_at"][k] for k in ("1", "2", "4", "8")]
        assert values == sorted(values) and all(0.0 <= v <= 1.0 for v in values)
        assert 0.0 <= metrics["map_at_r"] <= 1.0 and 0.0 <= metrics["nmi"] <= 1.0
    assert data["seconds"] > 0
    assert any("digits" in note for note in data["notes"])


@pytest.mark.slow
def test_report_is_self_contained_with_all_figures(demo_out: Path) -> None:
    import plm

    html = (demo_out / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', html)
    # curves (1 method) + 2 t-SNE maps + galleries as tiles: 5 unseen classes, one query each, with 6 results by
    # the pretrained features and 6 by plm
    assert len(images) == 3 + 5 * (1 + 6 + 6)
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert "http://" not in html and "https://" not in html
    assert "pretrained" in html and "plm" in html
    # issue 24: how the run was made
    assert "demo --quick --epochs 2" in html and f"<td>{plm.__version__}</td>" in html
    assert "<td>seeds</td><td>0</td>" in html


@pytest.mark.slow
def test_initial_row_is_the_model_training_started_from(demo_out: Path) -> None:
    import csv

    from plm.demo import initial_head_metrics
    from plm.training.config import resolve_config

    config = resolve_config(demo_out / "runs" / "plm-seed0" / "config.yaml")
    with open(demo_out / "runs" / "plm-seed0" / "metrics.csv") as fh:
        epoch0 = next(row for row in csv.DictReader(fh) if row["epoch"] == "0")
    assert initial_head_metrics(config, "val")["map_at_r"] == pytest.approx(float(epoch0["val_map_at_r"]), abs=1e-6)
    data = json.loads((demo_out / "results.json").read_text())
    again = initial_head_metrics(config)
    assert data["methods"]["initial"]["recall_at"] == pytest.approx(again["recall_at"])
    assert data["methods"]["initial"]["map_at_r"] == pytest.approx(again["map_at_r"])
    assert data["methods"]["initial"]["map_at_r"] != data["methods"]["pretrained"]["map_at_r"]


@pytest.mark.slow
def test_each_run_writes_training_outputs(demo_out: Path) -> None:
    run = demo_out / "runs" / "plm-seed0"
    for name in ("config.yaml", "best.pt", "last.pt", "metrics.csv", "metrics.json"):
        assert (run / name).is_file(), name


def test_aggregate_mean_and_std_over_seeds() -> None:
    runs = [{"recall_at": {"1": 0.5}, "map_at_r": 0.1, "r_precision": 0.2, "nmi": 0.3},
            {"recall_at": {"1": 0.7}, "map_at_r": 0.3, "r_precision": 0.4, "nmi": 0.5}]
    agg = _aggregate(runs)
    assert agg["recall_at"]["1"] == pytest.approx(0.6)
    assert agg["std"]["recall_at"]["1"] == pytest.approx(0.1)
    assert agg["map_at_r"] == pytest.approx(0.2) and len(agg["runs"]) == 2
    assert "std" not in _aggregate(runs[:1])


def test_presets_name_known_variants() -> None:
    for preset in PRESETS.values():
        assert set(preset["methods"]) <= set(VARIANTS)


def test_unknown_method_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown demo method"):
        run_demo(tmp_path, methods=["nope"])


def test_help_states_the_presets_epochs(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    std, full = PRESETS["standard"], PRESETS["full"]
    assert (f"glyphs: {std['glyph_epochs']}, or {full['glyph_epochs']} with --full; Fashion-MNIST: "
            f"{std['epochs']}, or {full['epochs']})") in text
