"""Errors that the command line turns into one readable line and exit code 2."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """A problem with what the user gave (file, option, model, output folder).

    The message names the file when there is one, so that the user knows what to fix.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)


class CancelledError(Exception):
    """The run was cancelled by the caller (e.g. the Slicer module's Cancel button)."""
