"""User-facing errors: `DigsegError` marks a problem with the user's input (a file, a value, a folder), which the
CLI prints on one line (exit status 2, no traceback); anything else is a bug and keeps its traceback."""

from __future__ import annotations

EXIT_SKIPPED = 3  # a batch command (`digseg predict`) finished but skipped inputs it could not read


class DigsegError(Exception):
    """A problem with user input; the message names the file or value at fault."""


class DataError(DigsegError):
    """A dataset sample (image, mask, class file) is missing, unreadable or inconsistent."""


class ConfigError(DigsegError):
    """A configuration value or command-line flag is invalid."""


def first_line(exc: BaseException) -> str:
    """The first line of `exc`'s message, or its type's name when the message is empty (never raises)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
