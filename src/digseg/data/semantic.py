"""Readers for the standard semantic / open-vocabulary benchmarks, in their official on-disk layouts.

- ade20k-150: `[root/]ADEChallengeData2016/images/{training,validation}/*.jpg` + `annotations/<split>/<stem>.png`,
  0 = unlabelled, 1..150 classes (reduce_zero_label: 0 -> 255, v -> v-1).
- ade20k-847: `[root/]ADE20K_2021_17_01/images_detectron2/<split>/*.jpg` + `annotations_detectron2/<split>/<stem>.tif`,
  uint16 0..846, 65535 = ignore.
- pascal-context-59: `[root/]VOCdevkit/VOC2010/JPEGImages/<stem>.jpg` + `annotations_detectron2/pc59_val/<stem>.png`
  (train: `pc59_train`), 0..58, 255 = ignore (the label files choose the samples).
- pascal-context-459: `[root/]VOCdevkit/VOC2010/JPEGImages/<stem>.jpg` + `annotations_detectron2/pc459_val/<stem>.tif`,
  uint16 0..458, 65535 = ignore (the label files choose the samples).
- coco-stuff-171: `root/images/{train2017,val2017}/*.jpg` + `annotations/<split>/<stem>.png` with raw ids 0..181 (255
  unlabelled; the 11 unused thing ids -> 255), or already converted `<stem>_labelTrainIds.png` (0..170), used as is.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import Sample, SegmentationDataset, read_class_file, register_dataset
from .io import IMAGE_EXTENSIONS

PHOTO_PROMPT = "a photo of a {}."


# ---- shared helpers
def _pick_root(root: Path, *candidates: str) -> Path:
    """The first of `root/<candidate>` that is a folder, else `root` itself (root may already be that folder)."""
    for candidate in candidates:
        if (root / candidate).is_dir():
            return root / candidate
    return root


def _list_files(ds: SegmentationDataset, folder: Path, suffixes: tuple[str, ...], what: str) -> dict[str, Path]:
    """{stem: path} of the files in `folder` with one of `suffixes` (case-insensitive), sorted by stem.

    Raises DataError naming the folder when it is missing, and both files when two share a stem.
    """
    if not folder.is_dir():
        raise DataError(f"{ds.name}: {what} folder for split {ds.split!r} not found: {folder} ({ds.layout_hint()})")
    found: dict[str, Path] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(".") or not name.lower().endswith(suffixes) or not entry.is_file():
                continue
            path = folder / name
            stem = path.stem
            if stem in found:
                raise DataError(f"{ds.name}: two {what} files share the stem {stem!r}: {found[stem]} and {path}")
            found[stem] = path
    return dict(sorted(found.items()))


def _names_in(folder: Path) -> set[str]:
    with os.scandir(folder) as entries:
        return {entry.name for entry in entries}


def _samples_by_image(ds: SegmentationDataset, image_dir: Path, label_dir: Path,
                      label_names: Callable[[str], list[str]]) -> list[Sample]:
    """One sample per image; `label_names(stem)` lists acceptable label file names, best first."""
    images = _list_files(ds, image_dir, IMAGE_EXTENSIONS, "image")
    if not label_dir.is_dir():
        raise DataError(f"{ds.name}: label folder for split {ds.split!r} not found: {label_dir} ({ds.layout_hint()})")
    present = _names_in(label_dir)
    samples, missing = [], []
    for stem, image in images.items():
        label = next((label_dir / n for n in label_names(stem) if n in present), None)
        if label is None:
            missing.append((image, label_dir / label_names(stem)[-1]))
        else:
            samples.append(Sample(stem, image, label))
    if missing:
        image, expected = missing[0]
        more = f" ({len(missing) - 1} more images without labels)" if len(missing) > 1 else ""
        raise DataError(f"{ds.name}: image {image} has no label (expected {expected}){more}")
    return samples


def _samples_by_label(ds: SegmentationDataset, image_dir: Path, label_dir: Path, label_suffix: str,
                      image_suffix: str = ".jpg") -> list[Sample]:
    """One sample per label file; each needs `image_dir/<stem><image_suffix>`."""
    labels = _list_files(ds, label_dir, (label_suffix,), "label")
    if not image_dir.is_dir():
        raise DataError(f"{ds.name}: image folder not found: {image_dir} ({ds.layout_hint()})")
    present = _names_in(image_dir)
    samples, missing = [], []
    for stem, label in labels.items():
        if stem + image_suffix in present:
            samples.append(Sample(stem, image_dir / (stem + image_suffix), label))
        else:
            missing.append((label, image_dir / (stem + image_suffix)))
    if missing:
        label, expected = missing[0]
        more = f" ({len(missing) - 1} more labels without images)" if len(missing) > 1 else ""
        raise DataError(f"{ds.name}: label {label} has no image (expected {expected}){more}")
    return samples


def _remap(ds: SegmentationDataset, raw: np.ndarray, lut: np.ndarray, path: Path) -> np.ndarray:
    """Map stored values through `lut` (entries of -1 mark invalid stored values) -> DataError naming the file."""
    raw = raw.astype(np.int64, copy=False)
    inside = (raw >= 0) & (raw < len(lut))
    out = lut[np.where(inside, raw, 0)]
    bad = ~inside | (out < 0)
    if bad.any():
        values = sorted(set(np.unique(raw[bad]).tolist()))[:5]
        raise DataError(f"label {path} has values {values} that are not valid stored labels of {ds.name}")
    return out


def _reduce_zero_label_lut() -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int64)
    lut[1:151] = np.arange(150)
    lut[0] = lut[255] = 255  # 0 = unlabelled; 255 as in mmsegmentation's reduce_zero_label
    return lut


# COCO-Stuff-164k raw ids (0-based COCO category id - 1) that no image uses: the 11 dropped thing ids.
COCO_UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)


def _coco_stuff_lut() -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int64)
    used = np.setdiff1d(np.arange(182), COCO_UNUSED_IDS)
    lut[used] = np.arange(len(used))  # 171 contiguous ids, as mmsegmentation's clsID_to_trID
    lut[list(COCO_UNUSED_IDS)] = 255
    lut[255] = 255
    return lut


# ---- readers
@register_dataset
class ADE20K150(SegmentationDataset):
    name = "ade20k-150"
    metric = "semantic"
    class_names = read_class_file("ade20k_150.txt")
    splits = {"train": "training", "val": "validation"}
    prompt_template = PHOTO_PROMPT
    _lut = _reduce_zero_label_lut()

    @property
    def base(self) -> Path:
        return _pick_root(self.root, "ADEChallengeData2016")

    def layout_hint(self) -> str:
        d = self.splits[self.split]
        return (f"expected images {self.base}/images/{d}/*.jpg and labels {self.base}/annotations/{d}/<stem>.png; "
                "root may be the folder holding ADEChallengeData2016/ or that folder itself")

    def find_samples(self) -> list[Sample]:
        d = self.splits[self.split]
        return _samples_by_image(self, self.base / "images" / d, self.base / "annotations" / d,
                                 lambda stem: [stem + ".png"])

    def convert_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        return _remap(self, raw, self._lut, path)


@register_dataset
class ADE20K847(SegmentationDataset):
    name = "ade20k-847"
    metric = "open_vocab"
    class_names = read_class_file("ade20k_847.txt")
    ignore_index = 65535
    splits = {"train": "training", "val": "validation"}
    prompt_template = PHOTO_PROMPT

    @property
    def base(self) -> Path:
        return _pick_root(self.root, "ADE20K_2021_17_01")

    def layout_hint(self) -> str:
        d = self.splits[self.split]
        return (f"expected images {self.base}/images_detectron2/{d}/*.jpg and uint16 labels "
                f"{self.base}/annotations_detectron2/{d}/<stem>.tif; root may be the folder holding "
                "ADE20K_2021_17_01/ or that folder itself")

    def find_samples(self) -> list[Sample]:
        d = self.splits[self.split]
        return _samples_by_image(self, self.base / "images_detectron2" / d, self.base / "annotations_detectron2" / d,
                                 lambda stem: [stem + ".tif"])


class _PascalContext(SegmentationDataset):
    label_suffix = ".png"

    @property
    def base(self) -> Path:
        return _pick_root(self.root, "VOCdevkit/VOC2010", "VOC2010")

    def layout_hint(self) -> str:
        return (f"expected labels {self.base}/annotations_detectron2/{self.splits[self.split]}/<stem>"
                f"{self.label_suffix} and images {self.base}/JPEGImages/<stem>.jpg; root may be the folder "
                "holding VOCdevkit/, VOCdevkit/ or VOC2010/ itself")

    def find_samples(self) -> list[Sample]:
        return _samples_by_label(self, self.base / "JPEGImages",
                                 self.base / "annotations_detectron2" / self.splits[self.split], self.label_suffix)


@register_dataset
class PascalContext59(_PascalContext):
    name = "pascal-context-59"
    metric = "open_vocab"
    class_names = read_class_file("pascal_context_59.txt")
    splits = {"train": "pc59_train", "val": "pc59_val"}
    prompt_template = PHOTO_PROMPT


@register_dataset
class PascalContext459(_PascalContext):
    name = "pascal-context-459"
    metric = "open_vocab"
    class_names = read_class_file("pascal_context_459.txt")
    ignore_index = 65535
    splits = {"train": "pc459_train", "val": "pc459_val"}
    prompt_template = PHOTO_PROMPT
    label_suffix = ".tif"


@register_dataset
class COCOStuff171(SegmentationDataset):
    name = "coco-stuff-171"
    metric = "semantic"
    class_names = read_class_file("coco_stuff_171.txt")
    splits = {"train": "train2017", "val": "val2017"}
    prompt_template = PHOTO_PROMPT
    _lut = _coco_stuff_lut()
    CONVERTED = "_labelTrainIds.png"

    def layout_hint(self) -> str:
        d = self.splits[self.split]
        return (f"expected images {self.root}/images/{d}/*.jpg and labels {self.root}/annotations/{d}/<stem>.png "
                f"(raw ids 0..181) or <stem>{self.CONVERTED} (0..170)")

    def find_samples(self) -> list[Sample]:
        d = self.splits[self.split]
        return _samples_by_image(self, self.root / "images" / d, self.root / "annotations" / d,
                                 lambda stem: [stem + self.CONVERTED, stem + ".png"])

    def convert_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if path.name.endswith(self.CONVERTED):
            return raw  # already contiguous train ids (255 = ignore)
        return _remap(self, raw, self._lut, path)
