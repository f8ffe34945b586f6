"""The package layout docs/architecture.md describes: every module of src/digseg sits in a package by role, and
imports run only downward (cli -> training -> evaluation -> export -> runtime -> pipelines -> models -> data -> the shared
modules).
Lazy imports inside functions count too: a cycle hidden in a function is still a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "digseg"
# the layers, lowest first; a module may import its own layer and those below it
LAYERS = ["shared", "data", "models", "pipelines", "runtime", "export", "evaluation", "training", "cli"]
SHARED = {"__init__", "errors", "distributed", "seeding", "devices", "run_lock", "hub_ids", "outputs"}  # the modules directly under digseg/


def layer_of(module: str) -> str:
    """'digseg.training.run' -> 'training'; 'digseg.errors' -> 'shared'."""
    parts = module.split(".")
    if len(parts) == 1 or not (SRC / parts[1]).is_dir():  # a shared module, or a name digseg defines (__version__)
        return "shared"
    return parts[1]


def module_name(path: Path) -> str:
    parts = ["digseg", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every digseg module `path` imports, at any depth of its code."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] if node.module or not node.level else [f"{target}.{a.name}" for a in node.names]
            found.update(n for n in names if n.split(".")[0] == "digseg")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "digseg")
    return found


MODULES = sorted(SRC.rglob("*.py"))


def test_every_module_sits_in_a_layer():
    for path in MODULES:
        assert layer_of(module_name(path)) in LAYERS, f"{path.relative_to(SRC)}: not in a package of the layout"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_run_downward(path):
    source = layer_of(module_name(path))
    upward = sorted(t for t in imports_of(path) if LAYERS.index(layer_of(t)) > LAYERS.index(source))
    assert not upward, f"{path.relative_to(SRC)} ({source}) imports from a higher layer: {upward}"


def test_no_import_cycle_between_training_modules():
    """run.py builds what trainer.py runs: the trainer must not import run (nor any module import itself back)."""
    graph = {module_name(p): {t for t in imports_of(p)} for p in MODULES}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                if reaches(nxt, goal, seen):
                    return True
        return False

    cycles = [m for m in graph if m.startswith("digseg.training.") and reaches(m, m, set())]
    assert not cycles, f"modules that import themselves back: {cycles}"


def test_docs_list_the_layers_in_order():
    """docs/architecture.md's package table names the layers this test enforces, in the same order."""
    doc = (SRC.parents[1] / "docs" / "architecture.md").read_text()
    rows = [line.split("|")[1].strip() for line in doc.splitlines() if line.startswith("| `digseg")]
    named = ["shared" if row.startswith("`digseg` (shared") else row.strip("`").split(".")[1] for row in rows]
    assert named == LAYERS
