"""Issue 27, the output rule, for every command from one table: no command overwrites one of its
inputs, a file of another kind, or (export) a side file that is also its main output, and each
refusal is one line before any work, with every file left as it was.

The table is checked against the CLI parser: a command, or an output flag (``--out``, ``--json``,
``--html``), that is not in it fails ``test_the_table_names_every_command_and_output_flag``, so a
new writing command cannot skip the rule. The cases of map, export and backbones failed before
issue 27 (they overwrote the file with rc 0)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.cli import FROZEN, one_line_error
from helpers.shapes import embedded_collection
from plm.cli import build_parser, main
from plm.models import ModelConfig, create_model, save_model

#: the tests of this file were written for frozen mode (the default, mode auto, fine-tunes small sets)
BACKBONE = ["--backbone", "efficientnet_lite0", "--image-size", "32"]
OUT = "{out}"

#: command -> [(output flag, argv with {out} and {file} placeholders, the inputs an output may not be,
#: the extension the output is written under)]
WRITERS: dict[str, list[tuple[str, list[str], list[str], str]]] = {
    "backbones": [("--json", ["backbones", "--json", OUT], [], ".json")],
    "duplicates": [("--csv", ["duplicates", "{idx}", "--csv", OUT], ["idx"], ".csv"),
                   ("--json", ["duplicates", "{idx}", "--json", OUT], ["idx"], ".json")],
    "embed": [("--out", ["embed", "{root}", *BACKBONE, "--weights", "{ckpt}", "--out", OUT], ["ckpt"], ".npz")],
    "eval": [("--json", ["eval", "--dataset", "digits", "--checkpoint", "{ckpt}", "--json", OUT], ["ckpt"], ".json")],
    "export": [("--out", ["export", "{emb}", "--out", OUT, "--format", "csv"], ["emb"], ".csv"),
               ("--out", ["export", "{idx}", "--out", OUT, "--format", "faiss"], ["idx"], ".faiss"),
               ("--out", ["export", "{ckpt}", "--out", OUT, "--format", "safetensors"], ["ckpt"], ".safetensors")],
    "index": [("--out", ["index", "{emb}", "--out", OUT], ["emb"], ".npz")],
    "map": [("--html", ["map", "{emb}", "--html", OUT, "--method", "pca"], ["emb"], ".html")],
    "search": [("--json", ["search", "{idx}", "{query}", "--json", OUT], ["idx", "query"], ".json"),
               ("--html", ["search", "{idx}", "{query}", "--html", OUT], ["idx", "query"], ".html")],
    "similarity-report": [("--json", ["similarity-report", "--dataset", "folder", "--features", "{features}",
                                      "--json", OUT],
                           ["features"], ".json")],
}
#: commands whose --out is a folder of files with fixed names -> (argv, those names)
FOLDER_WRITERS: dict[str, tuple[list[str], list[str]]] = {
    "train": (["train", *FROZEN, "--dataset", "digits", "--epochs", "1", "--out", OUT],
              ["config.yaml", "metrics.csv", "metrics.json", "summary.json", "best.pt", "last.pt"]),
    "demo": (["demo", "--dataset", "digits", "--quick", "--out", OUT], ["results.json", "report.html"]),
}
#: commands that write no file
READ_ONLY = {"serve"}
#: files of other kinds, named with the extension the command writes (the last: a plm file, but not of the
#: kind the command writes)
FOREIGN = ["thesis", "paper", "photo", "plm-file-of-another-kind"]
#: names plm cannot honour for a command (issue 24): an output named as another format is refused
WRONG_NAMES = ["x.faiss", "x.parquet", "x.csv", "map.png", "x.npz", "x.json", "no-extension"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    made = embedded_collection(tmp_path_factory.mktemp("output-rule"))
    tmp = made["tmp"]
    save_model(create_model(ModelConfig(embed_dim=16, image_size=32), pretrained=False), tmp / "best.pt")
    with np.load(made["emb"]) as z:
        np.savez(tmp / "features.npz", vectors=z["vectors"], labels=z["labels"])
    shutil.copy(next(made["root"].rglob("*.png")), tmp / "q.png")
    return {**made, "ckpt": tmp / "best.pt", "features": tmp / "features.npz", "query": tmp / "q.png"}


@pytest.fixture
def work(files: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """Private copies of the input files, so a test that fails by overwriting one harms no other test."""
    out = dict(files, tmp=tmp_path)
    for key in ("emb", "idx", "ckpt", "features", "query"):
        out[key] = tmp_path / files[key].name
        shutil.copy(files[key], out[key])
    return out


def _argv(template: list[str], files: dict[str, Path], out: Path) -> list[str]:
    return [a.format(out=out, **{k: str(v) for k, v in files.items()}) for a in template]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(capsys: pytest.CaptureFixture, argv: list[str], *needles: str) -> str:
    assert main(argv) == 2, argv
    return one_line_error(capsys, *needles)


def _foreign(name: str, folder: Path, command: str, suffix: str) -> Path:
    path = folder / f"{name}{suffix}"
    if name == "photo":
        Image.new("RGB", (8, 8), (200, 10, 10)).save(path, format="PNG")
    elif name == "plm-file-of-another-kind":
        path = folder / f"other{suffix}"
        shutil.copy(folder / ("idx.npz" if command == "embed" else "emb.npz"), path)
    else:
        path.write_text(f"three years of work in {path.name}")
    return path


def _cases(kind: str) -> list:
    out = []
    for command, rows in WRITERS.items():
        for n, (flag, template, inputs, suffix) in enumerate(rows):
            items = {"input": inputs, "foreign": FOREIGN,
                     "name": [w for w in WRONG_NAMES if not w.endswith(suffix)]}[kind]
            for item in items:
                out.append(pytest.param(command, flag, template, item, suffix, id=f"{command}{flag}#{n}-{item}"))
    return out


# ------------------------------------------------------------------------------------ the table


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_table_names_every_command_and_output_flag() -> None:
    commands = _subcommands()
    assert set(commands) == set(WRITERS) | set(FOLDER_WRITERS) | READ_ONLY, \
        "add the new command to WRITERS, FOLDER_WRITERS or READ_ONLY above"
    for name, sub in commands.items():
        flags = {opt for a in sub._actions for opt in a.option_strings
                 if a.dest in ("out", "json", "html") or a.metavar == "OUT"}
        listed = {flag for flag, _, _, _ in WRITERS.get(name, [])} | ({"--out"} if name in FOLDER_WRITERS else set())
        assert flags == listed, f"plm {name}: output flags {sorted(flags)}, table {sorted(listed)}"


# ------------------------------------------------------------------------------------ the cases


@pytest.mark.parametrize("command,flag,template,item,suffix", _cases("input"))
def test_an_output_is_never_an_input(work, capsys, command: str, flag: str, template: list[str], item: str,
                                     suffix: str) -> None:
    before = _snapshot(work["tmp"])
    _refused(capsys, _argv(template, work, work[item]), "also an input")
    assert _snapshot(work["tmp"]) == before


@pytest.mark.parametrize("command,flag,template,item,suffix", _cases("foreign"))
def test_a_file_of_another_kind_is_never_replaced(work, capsys, command: str, flag: str, template: list[str],
                                                  item: str, suffix: str) -> None:
    target = _foreign(item, work["tmp"], command, suffix)
    before = _snapshot(work["tmp"])
    _refused(capsys, _argv(template, work, target), str(target), "--force")
    assert _snapshot(work["tmp"]) == before


@pytest.mark.parametrize("command", sorted(FOLDER_WRITERS))
def test_a_run_folder_keeps_files_of_its_names_that_plm_did_not_write(work, capsys, command: str) -> None:
    template, names = FOLDER_WRITERS[command]
    for name in names:
        folder = work["tmp"] / f"{command}-{name}"
        folder.mkdir()
        (folder / name).write_text("three years of work")
        _refused(capsys, _argv(template, work, folder), name)
        assert _snapshot(folder) == {name: b"three years of work"}


@pytest.mark.parametrize("command,flag,template,item,suffix", _cases("name"))
def test_a_name_of_another_format_is_refused(work, capsys, command: str, flag: str, template: list[str], item: str,
                                             suffix: str) -> None:
    """Issue 24, case 1: ``plm index coll.npz --out x.faiss`` wrote a plm .npz named x.faiss (rc 0)."""
    before = _snapshot(work["tmp"])
    target = work["tmp"] / item
    argv = _argv(template, work, target)
    if command == "export" and item in ("no-extension",):  # --format names the format of any other name
        assert main(argv) == 0
        return
    if suffix == ".safetensors" and item == "x.json":  # its model config would be x.json too: refused for that
        _refused(capsys, argv, "same file")
        return
    err = _refused(capsys, argv, str(target), f"name it {target.with_name(target.stem + suffix)}"
                   if item != "no-extension" else f"name it {target}{suffix}")
    if item in ("x.faiss", "x.parquet", "x.csv") and command != "export":
        assert "plm export" in err  # the command that makes such a file
    assert _snapshot(work["tmp"]) == before


@pytest.mark.parametrize("argv,needles", [
    (["index", "{emb}", "--out", "{tmp}/x.faiss"], ["x.npz", "plm export INDEX.npz --out NAME.faiss"]),
    (["embed", "{root}", *BACKBONE, "--out", "{tmp}/x.parquet"], ["x.npz", "plm export EMBEDDINGS.npz"]),
    (["map", "{emb}", "--html", "{tmp}/map.png"], ["map.html", "HTML"]),
])
def test_the_issue_commands_name_the_right_file(work, capsys, argv: list[str], needles: list[str]) -> None:
    _refused(capsys, [a.format(**{k: str(v) for k, v in work.items()}) for a in argv], *needles)
    assert not list(work["tmp"].glob("x.*")) and not (work["tmp"] / "map.png").exists()


# ----------------------------------------------------------------- export's side files (issue 27)


def test_export_side_file_equal_to_the_output_is_refused(work, capsys) -> None:
    out = work["tmp"] / "model.json"
    _refused(capsys, ["export", str(work["ckpt"]), "--out", str(out), "--format", "safetensors"], "same file")
    assert not out.exists()


def test_export_never_replaces_a_run_files_or_a_foreign_side_file(work, capsys) -> None:
    pytest.importorskip("safetensors")
    run = work["tmp"] / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"recall_at": {"1": 0.9}, "map_at_r": 0.5}')
    shutil.copy(work["ckpt"], run / "last.pt")
    before = _snapshot(run)
    # the resume checkpoint as --out, and a run's metrics.json as the model config beside --out
    _refused(capsys, ["export", str(work["ckpt"]), "--out", str(run / "last.pt"), "--format", "safetensors"],
             "PyTorch checkpoint")  # issue 24: refused by its name already, before its content is read
    _refused(capsys, ["export", str(work["ckpt"]), "--out", str(run / "metrics.safetensors")],
             "metrics.json", "plm metrics JSON")
    (work["tmp"] / "photos.ids.json").write_text('{"my": "notes"}')
    _refused(capsys, ["export", str(work["idx"]), "--out", str(work["tmp"] / "photos.faiss")], "photos.ids.json")
    assert _snapshot(run) == before and not (work["tmp"] / "photos.faiss").exists()
    assert (work["tmp"] / "photos.ids.json").read_text() == '{"my": "notes"}'


def test_export_replaces_its_own_files_and_others_with_force(work, capsys) -> None:
    pytest.importorskip("faiss")
    pytest.importorskip("safetensors")
    pytest.importorskip("pyarrow")
    for src, name in (("idx", "photos.faiss"), ("ckpt", "model.safetensors"), ("emb", "photos.parquet")):
        for _ in range(2):  # the second run replaces its own export (and side file)
            assert main(["export", str(work[src]), "--out", str(work["tmp"] / name)]) == 0
    notes = work["tmp"] / "notes.csv"
    notes.write_text("mine")
    assert main(["export", str(work["emb"]), "--out", str(notes), "--force"]) == 0
    assert notes.read_text().startswith("path,label,embedding_0")
    capsys.readouterr()
    assert main(["export", str(work["emb"]), "--out", str(notes)]) == 0  # now plm's own CSV


def test_map_and_backbones_replace_their_own_files_and_others_with_force(work) -> None:
    page, listing = work["tmp"] / "m.html", work["tmp"] / "b.json"
    for _ in range(2):
        assert main(["map", str(work["emb"]), "--html", str(page), "--method", "pca"]) == 0
        assert main(["backbones", "--json", str(listing)]) == 0
    thesis = work["tmp"] / "thesis.html"
    thesis.write_text("<html>mine</html>")
    assert main(["map", str(work["emb"]), "--html", str(thesis), "--method", "pca", "--force"]) == 0
    notes = work["tmp"] / "notes.json"
    notes.write_text('{"mine": 1}')
    assert main(["backbones", "--json", str(notes), "--force"]) == 0
