"""``python -m plm``: the same entry point as the ``plm`` console command."""

from plm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
