"""File names that are not valid UTF-8: carried losslessly, shown readably.

On POSIX a file name is bytes. Python hands names that do not decode as UTF-8 over as ``str``
with each undecodable byte as a lone surrogate (``surrogateescape``: byte ``0xE9`` is
``"\\udce9"``), and plm keeps that string everywhere: in embeddings and index files (NumPy
unicode arrays hold it as is) and in ``--json`` output, where ``json`` writes it as the escape
``\\udce9`` (``os.fsencode(json.load(...)[...])`` gives back the original bytes). Where a name is
shown (terminal output, HTML pages) :func:`display_path` writes each such byte as ``\\xe9``.
"""

from __future__ import annotations


def display_path(name: str) -> str:
    """``name`` with every undecodable byte written as ``\\xNN`` (valid UTF-8 text, for display only)."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # surrogates that are not escaped bytes (e.g. from a JSON file)
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
