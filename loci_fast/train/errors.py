"""Errors the trainer raises for problems a user can fix; the CLI prints them without a traceback."""
from __future__ import annotations


class TrainError(RuntimeError):
    """A problem found before (or stopping) training; the message names it and the fix."""
