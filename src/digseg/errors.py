"""User-facing errors: `DigsegError` marks a problem with the user's input (a file, a value, a folder), which the
CLI prints on one line (exit status 2, no traceback); anything else is a bug and keeps its traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def read_json(path: Path, format: str | None = None, what: str = "") -> Any:
    """The JSON value in file `path`; with `format`, an object whose "format" is `format` (`what` the file is, e.g.
    "a DiGSeg adapter config"). Otherwise a DigsegError in one line that names `path`."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DigsegError(f"cannot read {path}: {first_line(exc)}") from exc
    if format is not None and (not isinstance(value, dict) or value.get("format") != format):
        raise DigsegError(f"{path}: not {what} (format {format!r} expected)")
    return value
