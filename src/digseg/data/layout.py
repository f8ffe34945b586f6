"""Helpers of the readers of official on-disk layouts: listing and pairing files (folder entries only, one
`os.scandir` per folder; DataError naming the dataset and paths at fault) and label lookup tables."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import Sample, SegmentationDataset
from .io import IMAGE_EXTENSIONS

Candidates = Callable[[str, Path], Sequence[Path]]  # (stem, file) -> partner paths to try, preferred first


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
    """{stem: path} of the non-hidden files directly in `folders` whose name ends with one of `suffixes` (any case),
    sorted by stem within each folder, folders in the order given. The stem is the name without the matched suffix,
    so a suffix such as `"_leftImg8bit.png"` yields the sample id."""
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
    """One Sample per image ({stem: path}); `label_candidates(stem, image)` lists its possible labels, best first."""
    return [Sample(stem, image, label) for stem, image, label in _pair(ds, images, label_candidates, "image", "label")]


def pair_by_label(ds: SegmentationDataset, labels: Mapping[str, Path], image_candidates: Candidates) -> list[Sample]:
    """One Sample per label file (the labels choose the samples); `image_candidates(stem, label)` as above."""
    return [Sample(stem, image, label) for stem, label, image in _pair(ds, labels, image_candidates, "label", "image")]


class ImagesFirst(SegmentationDataset):
    """A reader whose images choose the samples: `base/<image_dir>/<stem><suffix>` (a suffix of `image_suffixes`)
    with the label `base/<label_dir>/<name>`, the first of `label_names` (formatted with the stem) that exists.
    `{split}` in the folders is the layout's split name; `base` is the first of root/<inner_roots> that is a
    folder, else root."""

    inner_roots: tuple[str, ...] = ()
    image_dir, label_dir = "images/{split}", "annotations/{split}"
    image_suffixes: tuple[str, ...] = IMAGE_EXTENSIONS
    label_names: tuple[str, ...] = ("{}.png",)

    @property
    def base(self) -> Path:
        return pick_root(self.root, *self.inner_roots)

    def layout_hint(self) -> str:
        split = self.splits[self.split]
        suffix = self.image_suffixes[0] if len(self.image_suffixes) == 1 else ".*"
        images = self.base / self.image_dir.format(split=split) / f"<stem>{suffix}"
        labels = " or ".join(str(self.base / self.label_dir.format(split=split) / name.format("<stem>"))
                             for name in self.label_names)
        hint = f"expected images {images} and labels {labels}"
        return hint + (f"; root may be the folder holding {self.inner_roots[0]}/ or that folder itself"
                       if self.inner_roots else "")

    def find_samples(self) -> list[Sample]:
        split = self.splits[self.split]
        images = list_files(self, self.base / self.image_dir.format(split=split), self.image_suffixes)
        labels = self.base / self.label_dir.format(split=split)
        if images:  # none: "no images found", from the base class
            require_dir(self, labels, "label")
        return pair_by_image(self, images, lambda stem, _: [labels / name.format(stem) for name in self.label_names])


def make_lut(pairs: Mapping[int, int], default: int = 255) -> np.ndarray:
    """int64 lookup table of 256 entries: `pairs` {stored value: class id}, `default` elsewhere (-1: invalid)."""
    lut = np.full(256, default, dtype=np.int64)
    lut[list(pairs)] = list(pairs.values())
    return lut


def remap(ds: SegmentationDataset, raw: np.ndarray, lut: np.ndarray, path: Path, strict: bool = True) -> np.ndarray:
    """Stored values mapped through `lut` (a `make_lut` table) as one array operation. Values outside the table, or
    whose entry is -1, raise DataError naming `path` and the values when `strict`; otherwise they become 255."""
    raw = np.asarray(raw)
    if raw.dtype == np.uint8:  # every value is inside the table
        out = lut[raw]
        bad = out < 0
    else:
        values = raw.astype(np.int64, copy=False)
        inside = (values >= 0) & (values < len(lut))
        out = lut[np.where(inside, values, 0)]
        bad = ~inside | (out < 0)
    if not bad.any():
        return out
    if strict:
        values = np.unique(raw[bad]).tolist()[:5]
        raise DataError(f"label {path} has values {values} that are not valid stored labels of {ds.name}")
    out[bad] = 255
    return out
