"""User-facing errors.

A :class:`UserError` is a mistake a user can fix (a bad file, a bad flag, a corrupt checkpoint). The CLI prints
its message as one line and exits with code 2; library callers can catch it like any ``ValueError``.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in the user's input: printed as one line, exit code 2, never a traceback."""


class CheckpointError(UserError):
    """A checkpoint directory that is missing, corrupt or does not match the model."""


class DataError(UserError):
    """An input data file (FASTA, audio, token store) that cannot be used; the message names file and place."""
