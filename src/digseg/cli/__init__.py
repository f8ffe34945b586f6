"""The `digseg` command line: its commands and parser, quickstart, batch prediction with its outputs and report,
and the demo. `main` is the console script (`digseg ...`, `python -m digseg.cli ...`)."""

from .commands import main

__all__ = ["main"]
