"""Base class of the dataset readers (`@register_dataset`, `DATASETS` by name) and their helpers: listing and pairing
files (DataError naming the dataset and paths), `StandardLayout` and label lookup tables."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .io import IMAGE_EXTENSIONS, image_to_tensor, load_image, load_label, read_class_list


class MetricKind(StrEnum):
    """How `digseg eval` scores a dataset (its `metric`); a reader may write the value ("semantic")."""

    SEMANTIC = "semantic"  # one confusion matrix; mIoU over classes whose union > 0 (mmsegmentation)
    OPEN_VOCAB = "open_vocab"  # the same matrix; means over classes present in the ground truth (CAT-Seg)
    ROAD = "road"  # IoU, precision, recall, F1 of class 1
    MEDICAL = "medical"  # per-image foreground Dice and IoU of each target, averaged over images


@dataclass(frozen=True)
class Sample:
    """One image and its label: files, or strings naming a table's cells (`digseg.data.hf`) with `row` its index."""

    stem: str
    image: Path | str
    label: Path | str
    row: int = -1  # a table's row; -1 for files


class LazySamples(Sequence):
    """The samples `make(i)` of `indices`, made when indexed (a table's million rows cost no million objects)."""

    def __init__(self, make: Callable[[int], Sample], indices: Sequence[int]) -> None:
        self.make, self.indices = make, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return LazySamples(self.make, self.indices[i])
        return self.make(self.indices[i])


def read_class_file(filename: str) -> list[str]:
    """Class names shipped in `digseg/data/classes/<filename>`, read by the class-file rule (`read_class_list`)."""
    with resources.as_file(resources.files("digseg.data").joinpath("classes", filename)) as path:
        return read_class_list(path)


class SegmentationDataset(Dataset):
    name: ClassVar[str] = ""
    metric: ClassVar[MetricKind] = MetricKind.SEMANTIC  # how `digseg eval` scores it
    class_names: ClassVar[list[str]] = []
    ignore_index: ClassVar[int] = 255
    splits: ClassVar[dict[str, str]] = {"train": "train", "val": "val"}  # our split name -> the layout's
    prompt_template: ClassVar[str] = "{}"  # default prompt per class name, e.g. "a photo of a {}."
    label_lut: ClassVar[np.ndarray | None] = None  # stored value -> class id (`make_lut`); None: stored as class ids
    strict_lut: ClassVar[bool] = True  # values outside `label_lut`: DataError (else ignored)
    converted: ClassVar[str] = ""  # label files ending with it already hold class ids
    first_channel: ClassVar[bool] = False  # labels read by their first channel (masks whose channels differ by noise)
    layout_hint = "see README: datasets"  # where images and labels are expected, for error messages

    def __init__(self, root: str | Path, split: str = "val", size: int | None = None) -> None:
        self.root = Path(root).expanduser()
        if split not in self.splits:
            raise ConfigError(f"{self.name} has no split {split!r}; choose from {', '.join(self.splits)}")
        if not self.root.is_dir():
            raise DataError(f"{self.name}: data root not found: {self.root}")
        self.split, self.size = split, size
        self.samples: list[Sample] = self.find_samples()
        if not self.samples:
            raise DataError(f"{self.name}: no images found for split {split!r} under {self.root} "
                            f"({self.layout_hint})")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.samples)

    def read_image(self, sample: Sample) -> Image.Image:
        """The sample's RGB image, stored pixels (override for images that are not files)."""
        return load_image(sample.image)

    def read_raw_label(self, sample: Sample) -> np.ndarray:
        """The label file as class ids, through `label_lut` (override for labels that are not images, e.g. XML)."""
        raw, path = load_label(sample.label, self.first_channel), sample.label
        if self.label_lut is None or (self.converted and path.name.endswith(self.converted)):
            return raw
        return remap(self, raw, self.label_lut, path, self.strict_lut)

    def read_label(self, sample: Sample) -> np.ndarray:
        """int64 [H, W] class ids with `ignore_index`; DataError naming the file if missing or out of range."""
        label = self.read_raw_label(sample).astype(np.int64)
        bad = label[(label >= self.num_classes) | (label < 0)]
        bad = bad[bad != self.ignore_index]
        if bad.size:
            raise DataError(f"label {sample.label} has values {sorted(set(bad.tolist()))[:5]} outside the "
                            f"{self.num_classes} classes of {self.name}")
        return label

    def load_pair(self, i: int) -> tuple[Image.Image, np.ndarray]:
        """Native-size (RGB image, int64 label [H, W]); DataError naming the file on any problem."""
        sample = self.samples[i]
        image, label = self.read_image(sample), self.read_label(sample)
        if label.shape != (image.height, image.width):
            raise DataError(f"label {sample.label} is {label.shape[1]}x{label.shape[0]} but image {sample.image} "
                            f"is {image.width}x{image.height}")
        return image, label

    def __getitem__(self, i: int) -> dict:
        """{"image": float [3, H, W] in [-1, 1], "label": int64 [H, W], "stem": str}, squashed to `size` x `size`."""
        image, label = self.load_pair(i)
        if self.size:
            image = image.resize((self.size, self.size), Image.BILINEAR)
            label = np.asarray(Image.fromarray(label.astype(np.int32)).resize((self.size, self.size), Image.NEAREST))
        return {"image": image_to_tensor(image), "label": torch.from_numpy(label.astype(np.int64)),
                "stem": self.samples[i].stem}


DATASETS: dict[str, type[SegmentationDataset]] = {}


def register_dataset(cls: type[SegmentationDataset]) -> type[SegmentationDataset]:
    if not cls.name or cls.name in DATASETS:
        raise ValueError(f"dataset name {cls.name!r} is empty or registered twice")
    try:
        cls.metric = MetricKind(cls.metric)
    except ValueError:
        raise ValueError(f"{cls.name}: metric must be one of {', '.join(k.value for k in MetricKind)}, "
                         f"got {cls.metric!r}") from None
    DATASETS[cls.name] = cls
    return cls


def pick_root(root: Path, *candidates: str) -> Path:
    """The first of `root/<candidate>` that is a folder, else `root` itself (root may already be that folder)."""
    return next((root / c for c in candidates if (root / c).is_dir()), root)


def subfolders(folder: Path) -> list[Path]:
    """The non-hidden folders in `folder` (none when it is no folder), sorted."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) if folder.is_dir() else []


def require_dir(ds: SegmentationDataset, folder: Path, what: str) -> Path:
    """`folder` if it is a folder, else DataError naming it, the split and the reader's layout hint."""
    if not folder.is_dir():
        raise DataError(f"{ds.name}: {what} folder for split {ds.split!r} not found: {folder} ({ds.layout_hint})")
    return folder


def list_files(ds: SegmentationDataset, folders: Path | Sequence[Path], suffixes: Sequence[str] = IMAGE_EXTENSIONS,
               what: str = "image") -> dict[str, Path]:
    """{stem: path} of the non-hidden files in `folders` ending with a suffix (any case, cut off), sorted per folder."""
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


def pair_files(ds: SegmentationDataset, files: Mapping[str, Path], candidates: Callable[[str, Path], Sequence[Path]],
               by_label: bool = False) -> list[Sample]:
    """A Sample per file of `files` ({stem: path}; labels `by_label`), paired with its first existing candidate."""
    what, partner = ("label", "image") if by_label else ("image", "label")

    @functools.cache
    def listing(folder: Path) -> set[str]:  # one listing per folder (a missing folder holds nothing)
        try:
            with os.scandir(folder) as entries:
                return {e.name for e in entries if e.is_file()}
        except (FileNotFoundError, NotADirectoryError):
            return set()

    tried = {stem: list(candidates(stem, path)) for stem, path in files.items()}
    found = {stem: next((c for c in paths if c.name in listing(c.parent)), None) for stem, paths in tried.items()}
    missing = [stem for stem, partner_path in found.items() if partner_path is None]
    if missing:
        more = f" ({len(missing) - 1} more {what}s without {partner}s)" if len(missing) > 1 else ""
        expected = " or ".join(str(t) for t in tried[missing[0]])
        raise DataError(f"{ds.name}: {what} {files[missing[0]]} has no {partner} (expected {expected}){more}")
    return [Sample(stem, found[stem], path) if by_label else Sample(stem, path, found[stem])
            for stem, path in files.items()]


class StandardLayout(SegmentationDataset):
    """Images `base/<image_dir>/[<subfolder, if nested>/]<stem><suffix>` with the first existing label of `label_names`
    in `base/<label_dir>/[<subfolder>/]` (labels first: `labels_first`); `base`: the first of root/<inner_roots>."""

    inner_roots: tuple[str, ...] = ()
    image_dir, label_dir = "images/{split}", "annotations/{split}"
    image_suffixes: tuple[str, ...] = IMAGE_EXTENSIONS
    label_names: tuple[str, ...] = ("{}.png",)
    labels_first = nested = False

    def folders(self) -> tuple[Path, Path]:
        base, split = pick_root(self.root, *self.inner_roots), self.splits[self.split]
        return base / self.image_dir.format(split=split), base / self.label_dir.format(split=split)

    @property
    def layout_hint(self) -> str:  # type: ignore[override]
        images, labels = (folder / "<folder>" if self.nested else folder for folder in self.folders())
        suffix = self.image_suffixes[0] if len(self.image_suffixes) == 1 else ".*"
        labels = " or ".join(str(labels / name.format("<stem>")) for name in self.label_names)
        holding = " or ".join(f"{r}/" for r in self.inner_roots)
        return f"expected images {images / f'<stem>{suffix}'} and labels {labels}" + (
            f"; root may be the folder holding {holding} or that folder itself" if self.inner_roots else "")

    def find_samples(self) -> list[Sample]:
        images, labels = self.folders()
        if self.labels_first:
            found = list_files(self, labels, [name.format("") for name in self.label_names], "label")
            require_dir(self, images, "image")
            return pair_files(self, found, lambda stem, _: [images / f"{stem}{s}" for s in self.image_suffixes],
                              by_label=True)
        found = list_files(self, subfolders(require_dir(self, images, "image")) if self.nested else images,
                           self.image_suffixes)
        if found and not self.nested:  # none: "no images found", from the base class; nested: per image
            require_dir(self, labels, "label")
        return pair_files(self, found, lambda stem, image: [
            labels / image.parent.relative_to(images) / name.format(stem) for name in self.label_names])


def make_lut(pairs: Mapping[int, int], default: int = 255) -> np.ndarray:
    """int64 lookup table of 256 entries: `pairs` {stored value: class id}, `default` elsewhere (-1: invalid)."""
    lut = np.full(256, default, dtype=np.int64)
    lut[list(pairs)] = list(pairs.values())
    return lut


def remap(ds: SegmentationDataset, raw: np.ndarray, lut: np.ndarray, path: Path, strict: bool = True) -> np.ndarray:
    """`raw` through `lut` (`make_lut`); values outside it or mapped to -1: DataError when `strict`, else 255."""
    raw = np.asarray(raw)
    if raw.dtype == np.uint8:  # every value is inside the table: one lookup, no int64 copy
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
