"""Errors that the CLI reports as one clear line (exit status 2) instead of a traceback."""


class UserError(Exception):
    """Bad input from the user: a wrong flag combination, a missing file, an unusable dataset."""


class OutputError(UserError):
    """An output path cannot be used (it is an input, a folder, below a file, not plm's) or written
    (permission, read-only file system, disk full, file-size limit); the message names the path and
    the cause in one line."""


class TrainingDivergedError(UserError, FloatingPointError):
    """The training loss became NaN or infinite; the message names the epoch and step."""


class NoPretrainedWeightsError(ValueError):
    """Pretrained weights were asked for a backbone that ships none (and nothing is downloaded);
    the model factory turns it into a :class:`UserError` naming the option that gives a file."""
