"""Progress in a log (non-TTY): plain lines, no carriage returns; a tqdm bar only on a terminal."""

from __future__ import annotations

import io

import pytest

from plm.utils import progress as prog


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_line_progress_prints_one_plain_line_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(range(0, 1000, 10))  # every call to monotonic() advances 10 s
    monkeypatch.setattr(prog.time, "monotonic", lambda: float(next(clock)))
    out = _Stream(tty=False)
    bar = prog.LineProgress(total=5, desc="embed photos", unit="batch", stream=out, interval=25)
    for _ in range(5):
        bar.update(1)
    bar.set_postfix(loss="0.1234")
    bar.close()
    bar.close()  # once only
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # issue 24: a slow rate is not "0.1 batch/s" (it was "0.0 batch/s" above 20 s a batch), and the time left shows
    assert lines[0] == "embed photos: 3/5 batch (60%), 30 s, 10.0 s/batch, ETA 20 s"
    assert len(lines) == 2 and lines[-1].startswith("embed photos: done, 5 batch in ") and "loss=0.1234" in lines[-1]


@pytest.mark.parametrize("count,seconds,text", [(3, 30, "10.0 s/batch"), (120, 30, "4.0 batch/s"),
                                                 (1, 1, "1.0 batch/s"), (0, 5, "")])
def test_rates_never_round_to_zero(count: int, seconds: float, text: str) -> None:
    assert prog.format_rate(count, seconds, "batch") == text


@pytest.mark.parametrize("seconds,text", [(4.4, "4 s"), (185, "3 min 05 s"), (7620, "2 h 07 min")])
def test_durations_read_well(seconds: float, text: str) -> None:
    assert prog.format_duration(seconds) == text


def test_short_passes_stay_silent_and_disable_prints_nothing() -> None:
    out = _Stream(tty=False)
    bar = prog.LineProgress(range(3), desc="quick", stream=out, interval=30)
    assert list(bar) == [0, 1, 2] and out.getvalue() == ""
    quiet = prog.LineProgress(range(3), desc="x", stream=out, interval=0, disable=True)
    assert list(quiet) == [0, 1, 2] and out.getvalue() == ""


def test_progress_is_tqdm_on_a_terminal_and_lines_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prog.sys, "stderr", _Stream(tty=False))
    assert isinstance(prog.progress(range(2), desc="a"), prog.LineProgress)
    monkeypatch.setattr(prog.sys, "stderr", _Stream(tty=True))
    bar = prog.progress(range(2), desc="a")
    assert type(bar).__name__ == "tqdm" or "tqdm" in type(bar).__module__
    bar.close()


def test_plm_embed_in_a_log_writes_lines_not_bars(tmp_path, monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    from helpers.shapes import make_shapes_folder
    from plm.cli import main

    make_shapes_folder(tmp_path / "imgs", per_class=3)
    monkeypatch.setenv("PLM_PROGRESS_INTERVAL", "0")
    args = ["embed", str(tmp_path / "imgs"), "--out", str(tmp_path / "e.npz"), "--backbone", "efficientnet_lite0",
            "--image-size", "32", "--batch-size", "2", "--full"]
    assert main(args) == 0
    err = capfd.readouterr().err
    assert "\r" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("embed folder/all: ")]
    # issue 24: counted in images (9 of them in 5 batches), with a rate in images per second and an ETA
    assert len(lines) >= 2 and lines[-1].startswith("embed folder/all: done, 9 img in ")
    assert " img/s" in lines[0] or " s/img" in lines[0]
    assert "ETA " in lines[0] and lines[0].startswith("embed folder/all: ") and "/9 img (" in lines[0]
    assert main([*args, "--quiet"]) == 0
    assert "embed folder/all" not in capfd.readouterr().err
