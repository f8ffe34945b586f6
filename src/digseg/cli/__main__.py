"""`python -m digseg.cli ...`: the `digseg` command."""

from .commands import main

raise SystemExit(main())
