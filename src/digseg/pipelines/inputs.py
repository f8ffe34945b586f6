"""Which image files a command line names: `digseg predict --image a.jpg photos/ 'shots/**/*.png' --image-list
more.txt` -> the image paths, in order, each once."""

from __future__ import annotations

import glob
from collections import Counter
from pathlib import Path

from ..data.io import IMAGE_EXTENSIONS, read_list_file
from ..errors import ConfigError


def expand_image_inputs(items: list[str]) -> list[Path]:
    """Files, folders and glob patterns -> image paths, in the order given, each file once: a folder's image files
    (not recursive) sorted; a file or a name without ``*?[`` as is (a missing one fails when read); a pattern's
    image files (`glob` with ``**``) sorted. A folder or a pattern with no image is a `ConfigError`."""
    extensions = ", ".join(IMAGE_EXTENSIONS)
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir() or (not p.exists() and set("*?[") & set(item)):
            candidates = p.iterdir() if p.is_dir() else map(Path, glob.glob(item, recursive=True))
            found = sorted(q for q in candidates if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                what = f"folder {p} contains" if p.is_dir() else f"pattern {item!r} matches"
                raise ConfigError(f"{what} no images ({extensions})")
        else:
            found = [p]
        paths.extend(found)
    if not paths:
        raise ConfigError("no input images given")
    return first_of_each(paths)


def first_of_each(paths: list[Path]) -> list[Path]:
    """`paths` with a file reached twice (by its resolved path) kept once, at its first place."""
    unique: dict[Path, Path] = {}
    for path in paths:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def read_image_list(path: str | Path) -> list[str]:
    """A text file of image paths, one a line (blank and '#' lines ignored); ConfigError when unreadable or empty."""
    return read_list_file(path, "image list", ConfigError)


def select_images(items: list[str] | None, image_list: str | Path | None = None) -> list[Path]:
    """`--image` items (`expand_image_inputs`), then the files an `--image-list` names, each once; ConfigError when
    nothing is selected or none of it exists (a typo: a few bad files are skipped and reported later)."""
    if not items and image_list is None:
        raise ConfigError("no input images: pass --image (files, folders, patterns) and/or --image-list FILE")
    paths = expand_image_inputs(items) if items else []
    if image_list is not None:
        paths = first_of_each(paths + [Path(item) for item in read_image_list(image_list)])
    return check_some_exist(paths)


def check_some_exist(paths: list[Path]) -> list[Path]:
    """`paths`, or ConfigError naming the first few when none of them exists (a typo, not a few bad files)."""
    if not any(p.exists() for p in paths):
        shown = ", ".join(str(p) for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        raise ConfigError(f"image not found: {shown}")
    return paths


def unique_stems(paths: list[Path]) -> list[str]:
    """Output name stems, one per path: -2, -3, ... added where stems repeat (a/x.png, b/x.jpg -> x, x-2)."""
    taken = {p.stem for p in paths}
    seen: set[str] = set()
    stems = []
    for p in paths:
        stem, n = p.stem, 1
        while stem in seen or (n > 1 and stem in taken):
            n += 1
            stem = f"{p.stem}-{n}"
        seen.add(stem)
        stems.append(stem)
    return stems


def display_names(paths: list[Path]) -> list[str]:
    """How each input is named in reports: its file name, or the path as given when file names repeat."""
    counts = Counter(p.name for p in paths)
    return [p.name if counts[p.name] == 1 else str(p) for p in paths]
