"""Every `digseg` command shown in README.md and docs/ (in code blocks, `\\` continuations joined) is accepted by
today's command line: a renamed or removed flag fails here, not for a reader. Commands with placeholders the
shell fills in (`$DATA`, `...`) are checked up to the command name only."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from digseg.cli.parser import build_parser

ROOT = Path(__file__).resolve().parents[1]
COMMAND = re.compile(r"^(?:\S+=\S+\s+)*(?:digseg|(?:accelerate launch|torchrun)\s.*?-m digseg\.cli)\s+(\S.*)$")


def _documented_commands() -> list[tuple[str, str]]:
    """(where, the command's arguments) for every `digseg ...` line in a code block of README.md and docs/*.md."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        in_code, pending = False, ""
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip().startswith("```"):
                in_code, pending = not in_code, ""
                continue
            text = pending + line.strip()
            if not in_code or text.startswith("#"):
                continue
            if text.endswith("\\"):
                pending = text[:-1] + " "
                continue
            pending = ""
            match = COMMAND.match(text.split(" && ")[-1])
            if match:
                found.append((f"{doc.name}:{number}", match.group(1).split(" #")[0].strip()))
    return found


COMMANDS = _documented_commands()


def test_the_docs_show_commands_of_every_kind():
    names = {shlex.split(args)[0] for _, args in COMMANDS}
    assert len(COMMANDS) > 50 and {"quickstart", "train", "predict", "eval", "check-data"} <= names


@pytest.mark.parametrize("where, args", COMMANDS, ids=[where for where, _ in COMMANDS])
def test_documented_command_parses(where, args):
    argv = shlex.split(args)
    if "..." in argv or any("$" in a for a in argv):  # a placeholder: only the command itself is checked
        argv = argv[:1] + ["--help"]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            assert not exc.code, f"{where}: digseg {args}\n{stderr.getvalue().strip()}"


def test_the_training_docs_list_every_config_field():
    """docs/training.md's section table names every field of every section (and of data.hf), so a new field cannot
    go undocumented."""
    import dataclasses

    from digseg.data.hf_options import HFOptions
    from digseg.training.config import SECTIONS

    rows = {line.split("|")[1].strip(" `"): line for line in (ROOT / "docs" / "training.md").read_text().splitlines()
            if line.startswith("| `") and line.split("|")[1].strip(" `") in SECTIONS}
    for section, cls in SECTIONS.items():
        for field in dataclasses.fields(cls):
            assert f"`{field.name}`" in rows[section], f"docs/training.md: {section}.{field.name} is not listed"
    for field in dataclasses.fields(HFOptions):
        assert f"`{field.name}`" in rows["data"], f"docs/training.md: data.hf.{field.name} is not listed"
