"""--help of every command: a help line per flag, defaults shown once, one worked example, one --quiet."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from plm.cli import build_parser, main


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


COMMANDS = sorted(_subparsers())


def test_the_new_commands_are_registered() -> None:
    assert {"export", "map", "serve", "backbones"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_reads_well(name: str) -> None:
    parser = _subparsers()[name]
    text = parser.format_help()
    assert "(default: None)" not in text and "(default: False)" not in text
    for line_block in re.split(r"\n  (?=-)", text):
        assert line_block.count("(default") <= 1, line_block
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"plm {name}: {action.option_strings or action.dest} has no help"
    assert f"example:\n  plm {name}" in text
    assert "-q, --quiet" in text or "--quiet" in text


def test_old_spellings_still_parse_but_are_hidden() -> None:
    parsers = _subparsers()
    args = build_parser().parse_args(["index", "e.npz", "--out", "i.npz", "--M", "8", "-k", "5"])
    assert args.m == 8 and args.recall_k == 5
    args = build_parser().parse_args(["index", "e.npz", "--out", "i.npz"])
    assert args.m == 32 and args.recall_k == 10
    index_help = parsers["index"].format_help()
    assert "--M " not in index_help and "--hnsw-m" in index_help and "--recall-k" in index_help
    assert build_parser().parse_args(["train", "--no-progress"]).quiet is True
    assert build_parser().parse_args(["train"]).quiet is False
    assert "--no-progress" not in parsers["train"].format_help()
    assert build_parser().parse_args(["search", "i.npz", "q.jpg", "-k", "3"]).k == 3


def test_backbones_lists_sizes_and_weights(capsys: pytest.CaptureFixture, tmp_path) -> None:
    import json

    assert main(["backbones", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_lite0" in out and "googlenet" in out and "resnet50" in out
    rows = {r["name"]: r for r in json.loads((tmp_path / "b.json").read_text())}
    assert rows["efficientnet_lite0"] == {**rows["efficientnet_lite0"], "input_size": 224, "feature_dim": 1280,
                                          "weights": True}
    assert rows["googlenet"]["feature_dim"] == 1024 and rows["googlenet"]["input_size"] == 227
    assert rows["resnet50"]["feature_dim"] == 2048 and rows["resnet50"]["weights"] is False
    assert "--weights" in rows["resnet50"]["note"]
    # issue 24: torchvision's classifiers by name, with the file that stands in for their download
    assert rows["vit_b_16"]["feature_dim"] == 768 and rows["convnext_tiny"]["feature_dim"] == 768
    assert rows["resnet50"]["file"] == "resnet50-11ad3fa6.pth" and rows["resnet50"]["source"] == "file"


_IMPORT_PROBE = """
import sys
from plm.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exit:
    status = exit.code
heavy = sorted(m for m in ("torch", "numpy", "PIL", "scipy", "sklearn", "matplotlib") if m in sys.modules)
print("HEAVY:" + ",".join(heavy), file=sys.stderr)
raise SystemExit(status)
"""


@pytest.mark.parametrize("argv", [["--help"], *([name, "--help"] for name in COMMANDS)], ids=lambda a: " ".join(a))
def test_help_imports_neither_torch_nor_numpy(argv: list[str]) -> None:
    import os
    import subprocess
    import sys

    import plm

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(plm.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, *argv], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: plm" in done.stdout
    heavy = done.stderr.rsplit("HEAVY:", 1)[1].strip()
    assert heavy == "", f"plm {' '.join(argv)} imported {heavy}"


def test_python_m_plm_help_imports_no_torch() -> None:
    import os
    import subprocess
    import sys

    import plm

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(plm.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    for argv in (["--help"], ["train", "--help"]):
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "plm", *argv], capture_output=True, text=True,
                              env=env, timeout=120)
        assert done.returncode == 0 and "usage: plm" in done.stdout, done.stderr[-2000:]
        imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
        assert "plm.cli" in imported and "torch" not in imported and "numpy" not in imported
