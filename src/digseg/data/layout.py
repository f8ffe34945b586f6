"""Helpers shared by the readers of official on-disk layouts (`digseg.data.semantic`, `.domains`, `.medical`).

Listing and pairing only look at folder entries (sorted, one `os.scandir` per folder); pixels are read later.
Every problem raises `DataError` naming the dataset and the path at fault:

- a missing folder: `require_dir` / `list_files`, with the reader's `layout_hint()`;
- two files sharing a stem: `list_files`, naming both;
- an image without a label (or a label without an image): `pair_by_image` / `pair_by_label`, naming the file,
  every path that was tried, and how many more files lack their partner.

Label values are converted with lookup tables (`make_lut`, `remap`): index = stored value.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .base import Sample, SegmentationDataset
from .io import IMAGE_EXTENSIONS, load_label

Candidates = Callable[[str, Path], Sequence[Path]]  # (stem, file) -> partner paths to try, preferred first


# ---------------------------------------------------------------------------------------------- folders


def pick_root(root: Path, *candidates: str) -> Path:
    """The first of `root/<candidate>` that is a folder, else `root` itself (root may already be that folder)."""
    for candidate in candidates:
        if (root / candidate).is_dir():
            return root / candidate
    return root


def require_dir(ds: SegmentationDataset, folder: Path, what: str) -> Path:
    """`folder` if it is a folder, else DataError naming it, the split and the reader's layout hint."""
    if not folder.is_dir():
        raise DataError(f"{ds.name}: {what} folder for split {ds.split!r} not found: {folder} ({ds.layout_hint()})")
    return folder


def list_files(ds: SegmentationDataset, folders: Path | Sequence[Path], suffixes: Sequence[str] = IMAGE_EXTENSIONS,
               what: str = "image") -> dict[str, Path]:
    """{stem: path} of the non-hidden files directly in `folders` whose name ends with one of `suffixes` (any case).

    The stem is the name without the matched suffix, so a suffix such as `"_leftImg8bit.png"` yields the sample id.
    Files are sorted by stem within each folder, folders in the order given. DataError (via `require_dir`) for a
    missing folder, and naming both files when two share a stem.
    """
    ends = sorted((s.lower() for s in suffixes), key=len, reverse=True)  # longest match first
    found: dict[str, Path] = {}
    for folder in [folders] if isinstance(folders, Path) else folders:
        require_dir(ds, folder, what)
        here: dict[str, Path] = {}
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                end = next((e for e in ends if name.lower().endswith(e)), None)
                if name.startswith(".") or end is None or not entry.is_file():
                    continue
                path, stem = folder / name, name[: len(name) - len(end)]
                other = found.get(stem, here.get(stem))
                if other is not None:
                    raise DataError(f"{ds.name}: two {what} files share the stem {stem!r}: {other} and {path}")
                here[stem] = path
        found.update(sorted(here.items()))
    return found


# ---------------------------------------------------------------------------------------------- pairing


def _pair(ds: SegmentationDataset, files: Mapping[str, Path], candidates: Candidates, what: str,
          partner: str) -> list[tuple[str, Path, Path]]:
    """(stem, file, partner path) for every file; DataError for files whose candidates all do not exist."""
    listed: dict[Path, set[str]] = {}

    def exists(path: Path) -> bool:  # one listing per folder (a missing folder holds nothing)
        if path.parent not in listed:
            try:
                with os.scandir(path.parent) as entries:
                    listed[path.parent] = {e.name for e in entries if e.is_file()}
            except (FileNotFoundError, NotADirectoryError):
                listed[path.parent] = set()
        return path.name in listed[path.parent]

    pairs, missing = [], []
    for stem, path in files.items():
        tried = list(candidates(stem, path))
        found = next((c for c in tried if exists(c)), None)
        if found is None:
            missing.append((path, tried))
        else:
            pairs.append((stem, path, found))
    if missing:
        path, tried = missing[0]
        more = f" ({len(missing) - 1} more {what}s without {partner}s)" if len(missing) > 1 else ""
        expected = " or ".join(str(t) for t in tried)
        raise DataError(f"{ds.name}: {what} {path} has no {partner} (expected {expected}){more}")
    return pairs


def pair_by_image(ds: SegmentationDataset, images: Mapping[str, Path], label_candidates: Candidates) -> list[Sample]:
    """One Sample per image ({stem: path}); `label_candidates(stem, image)` lists its possible labels, best first.

    DataError naming the first image without a label, every path tried, and how many more images lack one.
    """
    return [Sample(stem, image, label) for stem, image, label in _pair(ds, images, label_candidates, "image", "label")]


def pair_by_label(ds: SegmentationDataset, labels: Mapping[str, Path], image_candidates: Candidates) -> list[Sample]:
    """One Sample per label file (the labels choose the samples); `image_candidates(stem, label)` as above."""
    return [Sample(stem, image, label) for stem, label, image in _pair(ds, labels, image_candidates, "label", "image")]


# ---------------------------------------------------------------------------------------------- label values


def make_lut(pairs: Mapping[int, int], size: int = 256, default: int = 255) -> np.ndarray:
    """int64 lookup table of `size` entries: `pairs` {stored value: class id}, `default` elsewhere
    (-1 marks stored values that are invalid for `remap(strict=True)`)."""
    lut = np.full(size, default, dtype=np.int64)
    lut[list(pairs)] = list(pairs.values())
    return lut


def remap(ds: SegmentationDataset, raw: np.ndarray, lut: np.ndarray, path: Path, strict: bool = True,
          default: int = 255) -> np.ndarray:
    """Map stored values through `lut` (index = stored value) as one array operation.

    Values outside the table, or whose entry is negative (-1 = invalid), raise DataError naming `path`, the
    dataset and the values when `strict`; otherwise they become `default`.
    """
    raw = np.asarray(raw)
    if raw.dtype == np.uint8 and len(lut) >= 256:
        out, bad = lut[raw], None
    else:
        values = raw.astype(np.int64, copy=False)
        inside = (values >= 0) & (values < len(lut))
        out, bad = lut[np.where(inside, values, 0)], ~inside
    if np.issubdtype(lut.dtype, np.signedinteger):
        bad = out < 0 if bad is None else bad | (out < 0)
    if bad is None or not bad.any():
        return out
    if strict:
        values = np.unique(raw[bad]).tolist()[:5]
        raise DataError(f"label {path} has values {values} that are not valid stored labels of {ds.name}")
    out[bad] = default
    return out


def read_first_channel(path: Path) -> np.ndarray:
    """Like `load_label`, but an RGB(A) mask whose channels differ (JPEG noise, resizing) gives its first
    channel instead of an error. Missing or corrupt files still raise `load_label`'s DataError."""
    try:
        return load_label(path)
    except DataError as exc:
        error = exc
    try:
        with open(path, "rb") as f, Image.open(f) as im:
            if im.mode in ("RGB", "RGBA", "RGBX"):
                return np.array(im.convert("RGB"))[..., 0]
    except Exception:  # unreadable: report load_label's message below
        pass
    raise error
