"""The CLI: discovery, help, errors reported as one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from plm.cli import build_parser, main


def test_help_lists_eval() -> None:
    text = build_parser().format_help()
    assert "eval" in text


def test_python_dash_m_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "plm", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("plm ")


@pytest.mark.parametrize("joined", [False, True])
def test_the_entry_point_skips_finalisation_only_after_a_process_group(monkeypatch, joined: bool) -> None:
    """After ``torchrun … -m plm`` a gloo thread may free its last tensors while the interpreter shuts down and
    abort the finished process; the entry point then ends with ``os._exit`` and the command's status."""
    import plm.training.distributed as distributed
    from plm import cli

    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(distributed, "_JOINED", joined)
    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    monkeypatch.setattr(sys, "argv", ["plm"])  # no command: help, status 2
    with pytest.raises(SystemExit) as stop:
        cli.console_main()
    assert stop.value.code == 2
    assert exits == ([2] if joined else [])


def test_eval_digits_json(tmp_path) -> None:
    out = tmp_path / "m.json"
    assert main(["eval", "--dataset", "digits", "--backbone", "efficientnet_lite0", "--image-size", "32",
                 "--limit", "200", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["dataset"] == "digits" and data["split"] == "test" and data["num_queries"] == 200
    assert set(data["recall_at"]) == {"1", "2", "4", "8"}
    assert 0.5 < data["recall_at"]["1"] <= 1.0
    assert data["recall_at"]["1"] <= data["recall_at"]["8"]
    for key in ("map_at_r", "r_precision", "nmi"):
        assert 0.0 <= data[key] <= 1.0


def test_missing_dataset_root_is_one_clear_line(tmp_path, capsys) -> None:
    code = main(["eval", "--dataset", "fashion-mnist", "--data-root", str(tmp_path / "nope"),
                 "--backbone", "efficientnet_lite0"])
    assert code == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte.gz" in err and "Traceback" not in err


def test_googlenet_without_weights_explains(capsys) -> None:
    assert main(["eval", "--dataset", "digits", "--backbone", "googlenet", "--limit", "20"]) == 2
    assert "--weights FILE" in capsys.readouterr().err


@pytest.mark.parametrize("given", [None, "0"])
def test_the_entry_point_asks_torch_for_huge_pages_unless_told_otherwise(monkeypatch, given) -> None:
    from plm import cli

    monkeypatch.setenv(cli.HUGE_PAGES, "unset below")  # so that the test's end restores the environment
    if given is None:
        monkeypatch.delenv(cli.HUGE_PAGES)
    else:
        monkeypatch.setenv(cli.HUGE_PAGES, given)
    monkeypatch.setattr(sys, "argv", ["plm"])
    with pytest.raises(SystemExit):
        cli.console_main()
    assert os.environ[cli.HUGE_PAGES] == (given or "1")
