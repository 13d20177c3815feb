"""The ``plm`` command line. Each subcommand lives in its own module under :mod:`plm.commands`.

A command module defines ``NAME`` (the subcommand), ``HELP`` (one line), ``EXAMPLE`` (a worked
example, shown under ``--help``), ``add_arguments(parser)`` and ``run(args) -> int``; modules are
discovered automatically. Heavy imports (torch, numpy) stay inside ``run``, and ``add_arguments``
reads only light modules (the registries' names, :mod:`plm.evaluation.defaults`), so ``plm --help``
and every ``plm COMMAND --help`` import neither (``tests/commands/test_help.py`` checks). Every command gets
``-q/--quiet`` here.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
import textwrap
from collections.abc import Sequence
from typing import NoReturn, Optional

import plm
import plm.commands


def _command_modules() -> list:
    mods = [importlib.import_module(f"plm.commands.{m.name}") for m in pkgutil.iter_modules(plm.commands.__path__)
            if not m.name.startswith("_")]
    return sorted((m for m in mods if hasattr(m, "NAME")), key=lambda m: m.NAME)


class HelpFormatter(argparse.HelpFormatter):
    """Defaults shown once and only when they say something; indented text (examples) kept as written.

    A flag's default is appended as ``(default: X)`` unless it is ``None``, ``False`` or
    suppressed, or the help text already mentions its default.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text + " (default: %(default)s)"
        return text

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for para in text.strip("\n").split("\n\n"):
            lines = para.split("\n")
            if any(line.startswith(" ") for line in lines[1:]) or para.startswith(" "):
                out.append("\n".join(indent + line for line in lines))  # an example block: keep it
            else:
                out.append(textwrap.fill(" ".join(lines), width, initial_indent=indent, subsequent_indent=indent))
        return "\n\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="plm",
                                     description="Unsupervised deep metric learning with piecewise-linear manifolds.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"plm {plm.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        example = getattr(mod, "EXAMPLE", "")
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           epilog=f"example:\n  {example.strip()}" if example else None, formatter_class=HelpFormatter)
        mod.add_arguments(p)
        if "quiet" not in {a.dest for a in p._actions}:
            p.add_argument("-q", "--quiet", action="store_true",
                           help="no progress output or notices (warnings and errors still show)")
        p.set_defaults(func=mod.run)
    return parser


def _refuse_unknown(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> None:
    """Report arguments no parser took with the subcommand's own usage (and its hint, when it has
    one: a command module's ``unknown_argument_hint(args) -> str``); exits with status 2."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = getattr(args, "command", None)
    sub = action.choices.get(command, parser) if command else parser
    mod = next((m for m in _command_modules() if m.NAME == command), None)
    hint = getattr(mod, "unknown_argument_hint", None)
    extra_hint = hint(extra) if callable(hint) else ""
    sub.error(f"unrecognized arguments: {' '.join(extra)}" + (f"; {extra_hint}" if extra_hint else ""))


_INVOCATION: list[str] = []


def invocation() -> Optional[list[str]]:
    """The command line :func:`main` is running (``["plm", "demo", "--quick"]``), or ``None`` outside it
    (reports print it: how the run was made)."""
    return list(_INVOCATION) or None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``plm`` and ``python -m plm``; returns the exit status."""
    _INVOCATION[:] = ["plm", *(sys.argv[1:] if argv is None else argv)]
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        _refuse_unknown(parser, args, extra)
    level = logging.DEBUG if args.verbose else logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    logging.basicConfig(level=level, format="%(message)s")
    if not args.verbose:  # faiss's loader reports each CPU build it tries at INFO: chatter that reads like errors
        logging.getLogger("faiss").setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from plm.errors import UserError

    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if callable(reconfigure):  # file names that are not UTF-8 print as escapes
        reconfigure(errors="backslashreplace")
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError, ValueError) as err:
        print(f"plm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # permission, read-only file system, disk full … outside plm's own writers
        from plm.utils.io import describe_os_error

        where = f"{err.filename}: " if err.filename else ""
        print(f"plm {args.command}: error: {where}{describe_os_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"plm {args.command}: interrupted", file=sys.stderr)
        return 130


#: torch's CPU allocator puts every tensor of 2 MB or more in transparent huge pages when this is
#: 1 (where the kernel offers them on request, its ``madvise`` setting): a fine-tuning step at
#: 224 px, which spent most of its kernel time faulting in fresh 4 KB pages, then takes 0.55-0.70
#: times as long (docs/benchmarks.md). torch reads it at its first large allocation, so the entry
#: point sets it before any command runs.
HUGE_PAGES = "THP_MEM_ALLOC_ENABLE"


def console_main() -> NoReturn:
    """Console entry point (``plm`` and ``python -m plm``): :func:`main`, then exit with its status.

    Large tensors go in huge pages (:data:`HUGE_PAGES`, unless the environment sets it, e.g. to 0).
    A process that joined a process group (``torchrun … -m plm``) exits without the interpreter's
    finalisation, once its output is flushed: see :func:`plm.training.distributed.joined_process_group`.
    """
    os.environ.setdefault(HUGE_PAGES, "1")
    code = main()
    distributed = sys.modules.get("plm.training.distributed")  # loaded only by the commands that use it
    if distributed is not None and distributed.joined_process_group():
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    console_main()
