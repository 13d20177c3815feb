"""The ``plm`` command line. Each subcommand lives in its own module under :mod:`plm.commands`.

A command module defines ``NAME`` (the subcommand), ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``; modules are discovered automatically, and heavy imports (torch) stay
inside ``run`` so that ``plm --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from typing import Optional, Sequence

import plm
import plm.commands


def _command_modules() -> list:
    mods = [importlib.import_module(f"plm.commands.{m.name}") for m in pkgutil.iter_modules(plm.commands.__path__)
            if not m.name.startswith("_")]
    return sorted((m for m in mods if hasattr(m, "NAME")), key=lambda m: m.NAME)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="plm", description="Unsupervised deep metric learning with piecewise-linear manifolds.")
    parser.add_argument("--version", action="version", version=f"plm {plm.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``plm`` and ``python -m plm``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from plm.errors import UserError

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


if __name__ == "__main__":
    raise SystemExit(main())
