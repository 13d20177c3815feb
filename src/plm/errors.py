"""Errors that the CLI reports as one clear line (exit status 2) instead of a traceback."""


class UserError(Exception):
    """Bad input from the user: a wrong flag combination, a missing file, an unusable dataset."""
