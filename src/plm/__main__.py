"""``python -m plm``: the same entry point as the ``plm`` console command."""

from plm.cli import console_main

if __name__ == "__main__":
    console_main()
