"""Checks of the command line shared by the command tests."""

from __future__ import annotations

#: the training-mode arguments of a frozen-mode run (cached backbone features, fast)
FROZEN = ("--mode", "frozen")


def one_line_error(capsys, *needles: str) -> str:
    """The stderr captured so far: one line, no traceback, holding every needle."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def without_module(monkeypatch, prefix: str) -> None:
    """Make importing ``prefix`` (and its sub-modules) fail with ImportError, as when it is not installed."""
    import builtins

    real_import = builtins.__import__

    def hidden(name, *args, **kwargs):
        if name == prefix or name.startswith(prefix + "."):
            raise ImportError(f"no {prefix} (hidden by the test)")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", hidden)
