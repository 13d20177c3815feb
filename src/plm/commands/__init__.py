"""Subcommands of the ``plm`` CLI, one module each (discovered by :mod:`plm.cli`)."""
