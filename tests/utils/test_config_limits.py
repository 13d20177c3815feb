"""Issue 27, config files: size, depth and alias expansion are bounded before the YAML is built, every
problem is one short line, and integers are checked for the range they are used in. Each case failed
before issue 27 (a multi-megabyte message, a RecursionError traceback, a seed accepted until torch
overflowed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.cli import FROZEN
from plm.cli import main

#: the tests of this file were written for frozen mode (the default, mode auto, fine-tunes small sets)
MAX_SEED = 1 << 30  # plm.utils.config.MAX_SEED: 32-bit seeds (faiss, scikit-learn) with room for the epoch


def _laughs(levels: int) -> str:
    """A seed of nested aliases: each level repeats the one before nine times (9**levels scalars expanded)."""
    items = ['&l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    items += [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return f"seed: [{', '.join(items)}]\n"


def _train_refuses(capsys: pytest.CaptureFixture, argv: list[str], *needles: str) -> str:
    assert main(["train", *argv, "--print-config"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err and len(err) < 600, err[:2000]
    for needle in needles:
        assert needle in err, err
    return err


def test_nested_aliases_are_refused_in_one_short_line(tmp_path: Path, capsys) -> None:
    config = tmp_path / "laughs.yaml"
    config.write_text(_laughs(7))  # 9**7 scalars: a message of tens of megabytes before issue 27
    assert config.stat().st_size < 400
    _train_refuses(capsys, ["--config", str(config)], "laughs.yaml", "aliases")


def test_deep_nesting_is_refused_without_a_recursion_error(tmp_path: Path, capsys) -> None:
    config = tmp_path / "deep.yaml"
    config.write_text("seed: " + "[" * 5000 + "]" * 5000 + "\n")
    _train_refuses(capsys, ["--config", str(config)], "deep.yaml", "deeper than")
    _train_refuses(capsys, ["seed=" + "[" * 5000 + "]" * 5000], "deeper than")  # an override alike
    huge = tmp_path / "huge-int.yaml"
    huge.write_text("epochs: " + "9" * 5000 + "\n")
    _train_refuses(capsys, ["--config", str(huge)], "huge-int.yaml")


def test_a_run_folder_holding_a_hostile_config_yaml_is_refused(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    assert main(["train", *FROZEN, "--dataset", "digits", "--epochs", "1", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "config.yaml" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err[:2000]


@pytest.mark.parametrize("value", ["12345678901234567890123456", str(MAX_SEED + 1), "-1"])
def test_a_seed_out_of_range_is_refused_before_any_work(tmp_path: Path, capsys, value: str) -> None:
    config = tmp_path / "seed.yaml"
    config.write_text(f"seed: {value}\n")
    _train_refuses(capsys, ["--config", str(config)], "seed must be an integer from")
    _train_refuses(capsys, [f"seed={value}"], "seed")


def test_a_seed_in_range_and_other_integers_within_64_bits_are_accepted(capsys) -> None:
    assert main(["train", f"seed={MAX_SEED}", "--print-config"]) == 0
    assert f"seed: {MAX_SEED}" in capsys.readouterr().out
    _train_refuses(capsys, [f"epochs={2 ** 64}"], "epochs", "9223372036854775807")


def test_limits_of_the_yaml_reader_and_short_values() -> None:
    from plm.utils import config
    from plm.utils.config import ConfigError, load_yaml_text, short_repr

    assert config.MAX_SEED == MAX_SEED
    with pytest.raises(ConfigError, match="larger than"):
        load_yaml_text("a: 1\n" * 300_000, "big.yaml")
    with pytest.raises(ConfigError, match="contains it"):
        load_yaml_text("a: &x [1, *x]\n", "loop.yaml")
    assert load_yaml_text("a: &x [1, 2]\nb: *x\n", "ok.yaml") == {"a": [1, 2], "b": [1, 2]}
    assert short_repr(10 ** 5000) == "a 5001-digit integer"
    assert len(short_repr("x" * 10_000)) <= 100 and len(short_repr([[list(range(100))] * 100] * 100)) <= 100
