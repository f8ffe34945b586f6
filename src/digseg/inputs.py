"""Which image files a command line names: files, folders and glob patterns.

`digseg predict --image a.jpg photos/ 'shots/**/*.png'` -> the image paths, in order, each once.
"""

from __future__ import annotations

import glob
from pathlib import Path

from .data.io import IMAGE_EXTENSIONS
from .errors import ConfigError

_GLOB_CHARS = set("*?[")


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def expand_image_inputs(items: list[str]) -> list[Path]:
    """Files, folders and glob patterns -> image paths, in the order given, duplicates dropped.

    - an existing folder: its image files (by extension, not recursive), sorted by name;
    - an existing file, or a name without glob characters: kept as is (a missing or unreadable
      file fails later, in `load_image`, naming it);
    - a pattern with ``*``, ``?`` or ``[``: `glob.glob(pattern, recursive=True)` (so ``**`` spans
      folders), image files only, sorted.

    A folder or a pattern that yields no image raises `ConfigError` naming it. A file reached twice
    (a folder and a pattern that overlap) is kept once, at its first place.
    """
    extensions = ", ".join(IMAGE_EXTENSIONS)
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and is_image_name(q))
            if not found:
                raise ConfigError(f"folder {p} contains no images ({extensions})")
        elif not p.exists() and _GLOB_CHARS & set(item):
            found = sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file() and is_image_name(Path(m)))
            if not found:
                raise ConfigError(f"pattern {item!r} matches no images ({extensions})")
        else:
            found = [p]
        paths.extend(found)
    unique: dict[Path, Path] = {}
    for path in paths:
        unique.setdefault(path.resolve(), path)
    if not unique:
        raise ConfigError("no input images given")
    return list(unique.values())


def unique_stems(paths: list[Path]) -> list[str]:
    """Output name stems, one per path: the file's stem, with -2, -3, ... added where stems repeat
    (``a/x.png`` and ``b/x.jpg`` -> ``x``, ``x-2``)."""
    taken = {p.stem for p in paths}
    seen: set[str] = set()
    stems = []
    for p in paths:
        stem = p.stem
        if stem in seen:
            n = 2
            while f"{p.stem}-{n}" in taken or f"{p.stem}-{n}" in seen:
                n += 1
            stem = f"{p.stem}-{n}"
        seen.add(stem)
        stems.append(stem)
    return stems


def display_names(paths: list[Path]) -> list[str]:
    """How each input is named in summaries and the report: its file name, or the path as given when
    two inputs share a file name."""
    counts: dict[str, int] = {}
    for p in paths:
        counts[p.name] = counts.get(p.name, 0) + 1
    return [p.name if counts[p.name] == 1 else str(p) for p in paths]
