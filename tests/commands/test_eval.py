"""``plm eval`` end to end on a CUB-layout fixture: JSON keys, skipped files, the feature cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.datasets import break_files, write_cub
from plm.cli import main
from plm.models.embedding import EmbeddingModel

JSON_KEYS = {"dataset", "split", "num_queries", "num_left_out", "recall_at", "map_at_r", "r_precision", "nmi",
             "skipped"}
CLASSES = {1: 3, 2: 3, 101: 4, 102: 4, 103: 3}


def run_eval(root: Path, out: Path, *extra: str) -> dict:
    code = main(["eval", "--dataset", "cub200", "--data-root", str(root), "--backbone", "efficientnet_lite0",
                 "--image-size", "32", "--batch-size", "4", "--json", str(out), *extra])
    assert code == 0
    return json.loads(out.read_text())


@pytest.fixture
def forward_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts images through EmbeddingModel.forward."""
    calls: list[int] = []
    original = EmbeddingModel.forward

    def counting(self, x):
        calls.append(int(x.shape[0]))
        return original(self, x)

    monkeypatch.setattr(EmbeddingModel, "forward", counting)
    return calls


def test_eval_cub_fixture_json_and_cache(tmp_path: Path, forward_calls: list[int], capsys) -> None:
    write_cub(tmp_path, CLASSES)
    first = run_eval(tmp_path, tmp_path / "a.json")
    assert set(first) == JSON_KEYS
    assert first["dataset"] == "cub200" and first["split"] == "test" and first["skipped"] == 0
    assert first["num_queries"] == 11 and set(first["recall_at"]) == {"1", "2", "4", "8"}
    assert all(0.0 <= v <= 1.0 for v in first["recall_at"].values())
    assert first["recall_at"]["1"] <= first["recall_at"]["8"]
    for key in ("map_at_r", "r_precision", "nmi"):
        assert 0.0 <= first[key] <= 1.0
    assert sum(forward_calls) == 11
    assert "cub200 / test: 11 queries, 3 classes" in capsys.readouterr().out
    from plm.evaluation import default_cache_dir

    files = list(default_cache_dir().glob("cub200-test-embeddings-*.npz"))
    assert len(files) == 1
    # second run: features come from the cache, the model never runs
    forward_calls.clear()
    second = run_eval(tmp_path, tmp_path / "b.json")
    assert forward_calls == [] and second == first
    # --no-cache embeds again
    third = run_eval(tmp_path, tmp_path / "c.json", "--no-cache", "--no-nmi")
    assert sum(forward_calls) == 11 and third["nmi"] is None and third["recall_at"] == first["recall_at"]


def test_eval_reports_skipped_files(tmp_path: Path, caplog) -> None:
    from plm.data.cub import load_cub200

    write_cub(tmp_path, CLASSES)
    ids = load_cub200(tmp_path, "test").ids
    break_files(tmp_path / "CUB_200_2011" / "images", ids[:4])
    with caplog.at_level("WARNING"):
        out = run_eval(tmp_path, tmp_path / "m.json", "--recall-at", "1", "3", "--no-nmi")
    assert out["skipped"] == 4 and out["num_queries"] == 7 and set(out["recall_at"]) == {"1", "3"}
    assert "skipped 4 unreadable image(s)" in caplog.text


def test_eval_val_split_and_limit(tmp_path: Path) -> None:
    write_cub(tmp_path, CLASSES)
    out = run_eval(tmp_path, tmp_path / "v.json", "--split", "val", "--val-classes", "1", "--no-nmi")
    assert out["split"] == "val" and out["num_queries"] == 3  # class 2 only
    out = run_eval(tmp_path, tmp_path / "l.json", "--limit", "5", "--no-nmi")
    assert out["num_queries"] == 5


@pytest.mark.parametrize("args,message", [
    (["--dataset", "cub200", "--backbone", "efficientnet_lite0"], "needs --data-root"),
    (["--dataset", "cub200", "--data-root", "{tmp}/missing", "--backbone", "efficientnet_lite0"], "images.txt"),
    (["--dataset", "folder", "--data-root", "{tmp}/flat", "--backbone", "efficientnet_lite0", "--split", "all"],
     "need class labels"),
])
def test_eval_errors_are_one_line(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    from PIL import Image

    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "b.png")
    code = main(["eval", *[a.format(tmp=tmp_path) for a in args]])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
