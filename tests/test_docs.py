"""The project's pages: every relative Markdown link resolves, and no file speaks of the machine it was written on
(absolute paths of a development machine) instead of the project."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# files a user reads: sources, docs, benchmarks, configs
SHIPPED = sorted(p for folder in ("src", "docs", "benchmarks", "configs") for p in (ROOT / folder).rglob("*")
                 if p.is_file() and p.suffix in {".py", ".md", ".sh", ".yaml", ".txt"}) + [ROOT / "README.md"]
MACHINE_PATH = re.compile(r"(?<![\w.])/(work|check|root|home/\w+)/")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or an anchor of the same page
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.exists():
            broken.append(target)
        elif not path.is_relative_to(ROOT):
            broken.append(f"{target} (outside the repository)")
    assert not broken, f"{page.name}: {broken}"


def test_no_file_names_a_development_machine_path():
    found = [f"{p.relative_to(ROOT)}:{n}" for p in SHIPPED
             for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if MACHINE_PATH.search(line)]
    assert not found, found


# how the project was made is not the project: words that only describe the development environment
DEVELOPMENT_TALK = re.compile(r"\b(sessions?\b(?! ?(cookie|state|id))|lent\b|device tool|give_back|development machine|"
                              r"machines? we develop|our machines|other jobs)", re.I)


def test_no_file_speaks_of_the_development_environment():
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()[:80]}" for p in SHIPPED if p.suffix != ".txt"
             for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if DEVELOPMENT_TALK.search(line)]
    assert not found, "\n".join(found)
