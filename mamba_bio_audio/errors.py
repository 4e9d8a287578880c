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


class TrainingStopped(Exception):  # noqa: N818 (not an error: the run stopped as asked)
    """Training stopped on SIGTERM or SIGINT after saving a resumable checkpoint; the CLI exits 128 + signal
    number (143 for SIGTERM, 130 for SIGINT)."""

    EXIT_CODES = {"SIGTERM": 143, "SIGINT": 130}

    def __init__(self, signal_name: str, step: int, out=None):
        self.signal_name = signal_name
        self.step = step
        self.out = out
        where = f" in {out}" if out is not None else ""
        super().__init__(f"stopped by {signal_name} at step {step}; the checkpoint{where} is saved, continue with "
                         f"--resume")

    @property
    def exit_code(self) -> int:
        return self.EXIT_CODES.get(self.signal_name, 1)
