"""Prompts for class names: templates, template ensembles, synonyms ("wall, walls", as ADE20K's and PASCAL-Context's
class names list them; a class is conditioned on the mean text features of every template x synonym prompt)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import DigsegError

# A compact template ensemble in the spirit of CLIP's prompt engineering (written for segmentation crops).
ENSEMBLE_TEMPLATES = (
    "a photo of a {}.", "a photo of the {}.", "a photo of a small {}.", "a photo of a large {}.",
    "a cropped photo of a {}.", "a close-up photo of a {}.", "a bright photo of a {}.", "a dark photo of a {}.",
    "a blurry photo of a {}.", "a good photo of a {}.", "there is a {} in the scene.", "a {} in the scene.",
)
TEMPLATE_SETS = {"single": ("{}",), "photo": ("a photo of a {}.",), "ensemble": ENSEMBLE_TEMPLATES}
BACKGROUND = "background"  # the class a binary prompt's "not the prompt" pixels get, and never queried on its own
FOREGROUND = "foreground"  # a binary query's class 1 when the prompts differ between images


def is_background(name: str) -> bool:
    """Whether class `name` is "background" (any case, blanks ignored): never queried alone, left untinted."""
    return name.strip().lower() == BACKGROUND


def synonyms(name: str) -> list[str]:
    """'wall, walls' -> ['wall', 'walls'] (order kept, blanks and repeats dropped)."""
    out = list(dict.fromkeys(filter(None, (p.strip() for p in name.split(",")))))
    if not out:
        raise DigsegError(f"empty class name {name!r}")
    return out


def resolve_templates(templates: str | Sequence[str] | None, default: str) -> list[str]:
    """None -> [default]; a set name ('single', 'photo', 'ensemble') or a list of templates containing '{}'."""
    if templates is None:
        return [default]
    if isinstance(templates, str):
        if templates in TEMPLATE_SETS:
            return list(TEMPLATE_SETS[templates])
        templates = [templates]
    templates = list(templates)
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        raise DigsegError(f"prompt templates must contain '{{}}'; got {bad or templates!r}")
    return templates


def class_prompts(name: str, templates: Sequence[str]) -> list[str]:
    """Every template x synonym prompt of one class."""
    return [t.format(s) for t in templates for s in synonyms(name)]


def palette_prompt(class_names: Sequence[str]) -> str:
    """The text that conditions palette mode: the model's class list."""
    return ", ".join(class_names)


@dataclass(frozen=True)
class Queries:
    """What a pipeline call asks. mode: "binary" (a prompt per image: foreground / background), "palette" (the
    model's own closed class list, one pass) or "per_class" (one binary query per class of any list)."""

    mode: str
    table: list[list[str]]  # [Q] queries, each its prompt variants (templates, synonyms), averaged when encoded
    query_ids: list[list[int]]  # [N] images, each the ids into `table` it is asked
    class_names: list[str]  # the output's classes: label i is class_names[i]


def resolve_queries(num_images: int, prompt, classes, templates, default_template: str,
                    own_classes: Sequence[str] | None) -> Queries:
    """The `prompt` / `classes` / `templates` arguments of a pipeline call over `num_images` images -> Queries.
    No prompt and no classes (or `classes` equal to the model's own list `own_classes`) is palette mode."""
    if prompt is not None and classes is not None:
        raise DigsegError("give either prompt or classes, not both")
    if prompt is not None:
        prompts = [prompt] * num_images if isinstance(prompt, str) else list(prompt)
        if len(prompts) != num_images:
            raise DigsegError(f"got {len(prompts)} prompts for {num_images} images")
        for p in prompts:
            if not isinstance(p, str) or not p.strip():
                raise DigsegError(f"empty prompt {p!r}: give a class name or a phrase")
        unique = list(dict.fromkeys(p.strip() for p in prompts))
        table = [[t.format(p) for t in resolve_templates(templates, default_template)] for p in unique]
        names = [BACKGROUND, prompts[0]] if len(unique) == 1 else [BACKGROUND, FOREGROUND]
        return Queries("binary", table, [[unique.index(p.strip())] for p in prompts], names)
    own = list(own_classes or [])
    if classes is None or (own and list(classes) == own):
        if len(own) < 2:
            raise DigsegError("this model has no class list: pass prompt=... or classes=[...]")
        return Queries("palette", [[palette_prompt(own)]], [[0]] * num_images, own)
    classes = list(classes)
    if not classes:
        raise DigsegError("classes is empty")
    chosen = resolve_templates(templates, default_template)
    table = [class_prompts(c, chosen) for c in classes]  # DigsegError for an empty name
    return Queries("per_class", table, [list(range(len(classes)))] * num_images, classes)
