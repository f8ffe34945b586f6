"""Readers for domain datasets in their official on-disk layouts (see DESIGN.md "Datasets: official layouts").

Registered names: "cityscapes", "bdd100k", "deepglobe-roads", "refuge2", "phenobench", "folder" (a user's
own image/mask pairs), and "monuseg" (in `digseg.data.medical`, imported at the end of this module).

`find_samples` only lists folders (sorted); pixel checks (sizes, label range) run when a sample is read.
Label conversions are 256-entry (or slightly larger) lookup tables applied to the whole array at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from ..errors import DataError
from .base import Sample, SegmentationDataset, register_dataset
from .folder import read_class_names
from .io import IMAGE_EXTENSIONS, load_label

# ---------------------------------------------------------------------------------------------- helpers


def apply_lut(raw: np.ndarray, lut: np.ndarray, default: int = 255) -> np.ndarray:
    """Map stored values through `lut` (index = stored value); values outside the table -> `default`."""
    raw = np.asarray(raw)
    if raw.dtype == np.uint8 and lut.size >= 256:
        return lut[raw]
    values = raw.astype(np.int64)
    inside = (values >= 0) & (values < lut.size)
    out = np.full(values.shape, default, dtype=lut.dtype)
    out[inside] = lut[values[inside]]
    return out


def make_lut(pairs: dict[int, int], size: int = 256, default: int = 255) -> np.ndarray:
    lut = np.full(size, default, dtype=np.uint8)
    for src, dst in pairs.items():
        lut[src] = dst
    return lut


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


class DomainDataset(SegmentationDataset):
    """Shared listing helpers for the readers below (not registered itself)."""

    def split_dir(self, *parts: str) -> Path:
        """`root/<parts>` that must exist, else DataError naming it."""
        folder = self.root.joinpath(*parts)
        if not folder.is_dir():
            raise DataError(f"{self.name}: split folder not found: {folder} ({self.layout_hint()})")
        return folder

    @staticmethod
    def list_files(folder: Path, suffixes: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
        """Sorted non-hidden files directly in `folder` whose name ends with one of `suffixes` (any case)."""
        ends = tuple(s.lower() for s in suffixes)
        return sorted(f for f in folder.iterdir()
                      if f.is_file() and not f.name.startswith(".") and f.name.lower().endswith(ends))

    def pair(self, images: list[Path], label_for: Callable[[Path], tuple[str, Sequence[Path]]]) -> list[Sample]:
        """One Sample per image; `label_for(image)` -> (stem, candidate label paths, preferred first).
        DataError for an image with no label (naming the image and the expected path) or a repeated stem."""
        samples: list[Sample] = []
        seen: dict[str, Path] = {}
        for image in images:
            stem, candidates = label_for(image)
            if stem in seen:
                raise DataError(f"{self.name}: two images share the stem {stem!r}: {seen[stem]} and {image}")
            seen[stem] = image
            label = next((c for c in candidates if c.is_file()), None)
            if label is None:
                raise DataError(f"{self.name}: image {image} has no label; expected {candidates[0]}")
            samples.append(Sample(stem, image, label))
        return samples


CITYSCAPES_CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle"]

# cityscapesScripts helpers/labels.py: labelId -> trainId for the 19 evaluated classes; all others
# (0..6 unlabeled/ego vehicle/..., 9 parking, 10 rail track, 14-16, 18 polegroup, 29 caravan, 30 trailer,
# -1 license plate) are ignored (255).
CITYSCAPES_ID_TO_TRAINID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                            25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_LUT = make_lut(CITYSCAPES_ID_TO_TRAINID)

# ---------------------------------------------------------------------------------------------- readers


@register_dataset
class Cityscapes(DomainDataset):
    name = "cityscapes"
    metric = "semantic"
    class_names = CITYSCAPES_CLASSES
    splits = {"train": "train", "val": "val", "test": "test"}
    IMAGE_SUFFIX = "_leftImg8bit.png"

    def layout_hint(self) -> str:
        return ("expected leftImg8bit/<split>/<city>/<id>_leftImg8bit.png and "
                "gtFine/<split>/<city>/<id>_gtFine_labelTrainIds.png (or _gtFine_labelIds.png)")

    def find_samples(self) -> list[Sample]:
        split = self.splits[self.split]
        image_root = self.split_dir("leftImg8bit", split)
        label_root = self.root / "gtFine" / split
        images: list[Path] = []
        for city in sorted(d for d in image_root.iterdir() if d.is_dir() and not d.name.startswith(".")):
            images += self.list_files(city, (self.IMAGE_SUFFIX,))

        def label_for(image: Path) -> tuple[str, list[Path]]:
            stem = image.name[: -len(self.IMAGE_SUFFIX)]
            city = label_root / image.parent.name
            return stem, [city / f"{stem}_gtFine_labelTrainIds.png", city / f"{stem}_gtFine_labelIds.png"]

        return self.pair(images, label_for)

    def convert_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if path.name.endswith("_labelIds.png"):
            return apply_lut(raw, CITYSCAPES_LUT)
        return raw  # labelTrainIds: already 0..18 / 255


@register_dataset
class BDD100K(DomainDataset):
    name = "bdd100k"
    metric = "semantic"
    class_names = CITYSCAPES_CLASSES
    splits = {"train": "train", "val": "val"}

    def layout_hint(self) -> str:
        return "expected images/10k/<split>/<stem>.jpg and labels/sem_seg/masks/<split>/<stem>.png (trainIds)"

    def find_samples(self) -> list[Sample]:
        split = self.splits[self.split]
        images = self.list_files(self.split_dir("images", "10k", split), (".jpg", ".jpeg", ".png"))
        labels = self.root / "labels" / "sem_seg" / "masks" / split
        return self.pair(images, lambda im: (im.stem, [labels / f"{im.stem}.png"]))


@register_dataset
class DeepGlobeRoads(DomainDataset):
    name = "deepglobe-roads"
    metric = "road"
    class_names = ["background", "road"]
    splits = {"train": "train", "val": "valid", "test": "test"}
    IMAGE_SUFFIX = "_sat.jpg"

    def layout_hint(self) -> str:
        return "expected <split>/<id>_sat.jpg with <id>_mask.png beside it (split folders train, valid, test)"

    def find_samples(self) -> list[Sample]:
        folder = self.split_dir(self.splits[self.split])
        images = self.list_files(folder, (self.IMAGE_SUFFIX,))

        def label_for(image: Path) -> tuple[str, list[Path]]:
            stem = image.name[: -len(self.IMAGE_SUFFIX)]
            return stem, [folder / f"{stem}_mask.png"]

        return self.pair(images, label_for)

    def read_raw_label(self, sample: Sample) -> np.ndarray:
        return (read_first_channel(sample.label) >= 128).astype(np.int64)  # road = white


REFUGE2_LUT = np.array([2 if v <= 64 else 1 if v < 192 else 0 for v in range(256)], dtype=np.uint8)  # nearest


@register_dataset
class REFUGE2(DomainDataset):
    name = "refuge2"
    metric = "medical"
    class_names = ["background", "optic disc", "optic cup"]
    splits = {"train": "train", "val": "val", "test": "test"}
    medical_targets = {"disc": (1, 2), "cup": (2,)}

    def layout_hint(self) -> str:
        return "expected <split>/images/<stem>.jpg and <split>/mask/<stem>.bmp (or <split>/masks/)"

    def find_samples(self) -> list[Sample]:
        folder = self.split_dir(self.splits[self.split])
        images = self.list_files(self.split_dir(self.splits[self.split], "images"), (".jpg", ".jpeg", ".png"))
        return self.pair(images, lambda im: (im.stem, [folder / "mask" / f"{im.stem}.bmp",
                                                       folder / "masks" / f"{im.stem}.bmp"]))

    def read_raw_label(self, sample: Sample) -> np.ndarray:
        raw = np.clip(read_first_channel(sample.label).astype(np.int64), 0, 255)  # >255 is nearest to 255
        return REFUGE2_LUT[raw].astype(np.int64)  # 255 bg -> 0, 128 rim -> 1, 0 cup -> 2; others to nearest


@register_dataset
class PhenoBench(DomainDataset):
    name = "phenobench"
    metric = "semantic"
    class_names = ["soil", "crop", "weed"]
    splits = {"train": "train", "val": "val"}
    LUT = make_lut({0: 0, 1: 1, 2: 2, 3: 1, 4: 2})  # 3 partial crop -> crop, 4 partial weed -> weed

    def layout_hint(self) -> str:
        return "expected <split>/images/<stem>.png and <split>/semantics/<stem>.png"

    def find_samples(self) -> list[Sample]:
        split = self.splits[self.split]
        images = self.list_files(self.split_dir(split, "images"))
        semantics = self.root / split / "semantics"
        return self.pair(images, lambda im: (im.stem, [semantics / f"{im.stem}.png"]))

    def convert_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        return apply_lut(raw, self.LUT)


@register_dataset
class FolderPairs(DomainDataset):
    """A user's own data: root/images/<stem>.*, root/masks/<stem>.png (value = class id, 255 ignore) and
    root/classes.txt (one name per line). Every split is the whole folder; `class_names` is per instance."""

    name = "folder"
    metric = "semantic"
    splits = {"train": ".", "val": ".", "test": "."}

    def layout_hint(self) -> str:
        return "expected images/<stem>.*, masks/<stem>.png and classes.txt (one class name per line)"

    def find_samples(self) -> list[Sample]:
        self.class_names = read_class_names(self.root / "classes.txt")  # instance attribute, set before use
        images = self.list_files(self.split_dir(self.splits[self.split], "images"))
        masks = self.root / "masks"
        return self.pair(images, lambda im: (im.stem, [masks / f"{im.stem}.png"]))


from . import medical as _medical  # noqa: E402,F401  (registers "monuseg"; imports the helpers above)
