"""Readers for domain datasets in their official on-disk layouts (see DESIGN.md "Datasets: official layouts"):
"cityscapes", "bdd100k", "deepglobe-roads", "refuge2", "phenobench", "folder" (a user's own image/mask pairs, split
as `digseg.data.splits` describes), and "monuseg" (`digseg.data.medical`, imported at the end of this module).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import MetricKind, Sample, SegmentationDataset, register_dataset
from .io import read_class_list, read_list_file
from .layout import ImagesFirst, list_files, make_lut, pair_by_image, read_first_channel, remap, require_dir
from .splits import (BY_HASH, BY_SPLIT_FILE, BY_SPLIT_FOLDERS, BY_SPLIT_LISTS, DEFAULT_VAL_FRACTION, FOLDER_DATASET,
                     is_held_out, split_options)

CITYSCAPES_CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle"]

# cityscapesScripts helpers/labels.py: labelId -> trainId for the 19 evaluated classes; all others
# (0..6 unlabeled/ego vehicle/..., 9 parking, 10 rail track, 14-16, 18 polegroup, 29 caravan, 30 trailer,
# -1 license plate) are ignored (255).
CITYSCAPES_LUT = make_lut({7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                           25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18})


@register_dataset
class Cityscapes(SegmentationDataset):
    name = "cityscapes"
    metric = MetricKind.SEMANTIC
    class_names = CITYSCAPES_CLASSES
    splits = {"train": "train", "val": "val", "test": "test"}

    def layout_hint(self) -> str:
        return ("expected leftImg8bit/<split>/<city>/<id>_leftImg8bit.png and "
                "gtFine/<split>/<city>/<id>_gtFine_labelTrainIds.png (or _gtFine_labelIds.png)")

    def find_samples(self) -> list[Sample]:
        split = self.splits[self.split]
        image_root = require_dir(self, self.root / "leftImg8bit" / split, "image")
        cities = sorted(d for d in image_root.iterdir() if d.is_dir() and not d.name.startswith("."))
        images = list_files(self, cities, ("_leftImg8bit.png",))
        labels = self.root / "gtFine" / split  # gtFine/<split>/<city>/, as leftImg8bit/
        return pair_by_image(self, images, lambda stem, image: [
            labels / image.parent.name / f"{stem}_gtFine_{ids}.png" for ids in ("labelTrainIds", "labelIds")])

    def convert_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if path.name.endswith("_labelIds.png"):
            return remap(self, raw, CITYSCAPES_LUT, path, strict=False)
        return raw  # labelTrainIds: already 0..18 / 255


@register_dataset
class BDD100K(ImagesFirst):
    name = "bdd100k"
    metric = MetricKind.SEMANTIC
    class_names = CITYSCAPES_CLASSES
    splits = {"train": "train", "val": "val"}
    image_dir, label_dir = "images/10k/{split}", "labels/sem_seg/masks/{split}"
    image_suffixes = (".jpg", ".jpeg", ".png")


@register_dataset
class DeepGlobeRoads(ImagesFirst):
    name = "deepglobe-roads"
    metric = MetricKind.ROAD
    class_names = ["background", "road"]
    splits = {"train": "train", "val": "valid", "test": "test"}
    image_dir = label_dir = "{split}"
    image_suffixes, label_names = ("_sat.jpg",), ("{}_mask.png",)

    def read_raw_label(self, sample: Sample) -> np.ndarray:
        return (read_first_channel(sample.label) >= 128).astype(np.int64)  # road = white


REFUGE2_LUT = np.array([2 if v <= 64 else 1 if v < 192 else 0 for v in range(256)], dtype=np.uint8)  # nearest


@register_dataset
class REFUGE2(ImagesFirst):
    name = "refuge2"
    metric = MetricKind.MEDICAL
    class_names = ["background", "optic disc", "optic cup"]
    splits = {"train": "train", "val": "val", "test": "test"}
    medical_targets = {"disc": (1, 2), "cup": (2,)}
    image_dir, label_dir = "{split}/images", "{split}"
    image_suffixes, label_names = (".jpg", ".jpeg", ".png"), ("mask/{}.bmp", "masks/{}.bmp")

    def read_raw_label(self, sample: Sample) -> np.ndarray:
        raw = np.clip(read_first_channel(sample.label).astype(np.int64), 0, 255)  # >255 is nearest to 255
        return REFUGE2_LUT[raw].astype(np.int64)  # 255 bg -> 0, 128 rim -> 1, 0 cup -> 2; others to nearest


@register_dataset
class PhenoBench(ImagesFirst):
    name = "phenobench"
    metric = MetricKind.SEMANTIC
    class_names = ["soil", "crop", "weed"]
    splits = {"train": "train", "val": "val"}
    image_dir, label_dir = "{split}/images", "{split}/semantics"
    LUT = make_lut({0: 0, 1: 1, 2: 2, 3: 1, 4: 2})  # 3 partial crop -> crop, 4 partial weed -> weed

    def convert_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        return remap(self, raw, self.LUT, path, strict=False)


@register_dataset
class FolderPairs(SegmentationDataset):
    """A user's own data: root/images/<stem>.*, root/masks/<stem>.png (value = class id, 255 ignore) and
    root/classes.txt (at most 255 classes), or the same per split in images/<split>/ and masks/<split>/, split by
    the rules of `digseg.data.splits`. `split_rule` says which rule chose the images, in words, `split_by` by its
    name in `SPLIT_RULES`. `class_names` is per instance."""

    name = FOLDER_DATASET
    metric = MetricKind.SEMANTIC
    splits = {"train": "train", "val": "val", "test": "test"}

    def __init__(self, root: str | Path, split: str = "val", size: int | None = None,
                 val_fraction: float | None = None, split_file: str | Path | None = None,
                 train_split_file: str | Path | None = None) -> None:
        split_options(self.name, val_fraction, split_file, train_split_file)  # ConfigError for a bad combination
        self.val_fraction = float(DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction)
        if train_split_file is not None and split == "train":  # the training list names split train's images
            split_file, train_split_file = train_split_file, None
        self.split_file = Path(split_file).expanduser() if split_file is not None else None
        self.train_split_file = Path(train_split_file).expanduser() if train_split_file is not None else None
        self.split_rule = self.split_by = ""  # set by find_samples
        super().__init__(root, split=split, size=size)

    def __repr__(self) -> str:
        count = f"{len(self)} image{'' if len(self) == 1 else 's'}"
        return f"FolderPairs({str(self.root)!r}, split={self.split!r}): {count} {self.split_rule}"

    def layout_hint(self) -> str:
        return ("expected images/<stem>.* and masks/<stem>.png (or images/<split>/ and masks/<split>/) and "
                "classes.txt (one class name per line)")

    def find_samples(self) -> list[Sample]:
        classes = self.root / "classes.txt"
        self.class_names = read_class_list(classes)
        if len(self.class_names) > self.ignore_index:
            raise DataError(f"class list {classes} lists {len(self.class_names)} classes; at most {self.ignore_index} "
                            f"are supported because mask value {self.ignore_index} means 'ignore'")
        images, self.split_rule, self.split_by = self._images_of_split()
        if self.train_split_file is not None:
            images = self._less_training_images(images)
        masks = self.root / "masks"  # masks/<stem>.png, or masks/<split>/<stem>.png for a split folder's image
        return pair_by_image(self, images, lambda stem, image: [
            masks / image.parent.relative_to(self.root / "images") / f"{stem}.png"])

    def _images_of_split(self) -> tuple[dict[str, Path], str, str]:
        """{stem: image} of this split, and the rule that chose them in words and by name."""
        if self.split_file is not None:
            return self._listed_images(self.split_file), f"listed in {self.split_file}", BY_SPLIT_FILE
        listed = self._split_list_in_root()
        if listed is not None:
            return self._listed_images(listed), f"listed in {listed}", BY_SPLIT_LISTS
        folders = self._split_folders()
        if folders:
            return self._split_folder_images(folders), f"in images/{self.splits[self.split]}/", BY_SPLIT_FOLDERS
        if self.train_split_file is not None:  # a flat folder's val: every image the training list leaves out
            return (self._held_out_images(everything=True), f"not listed in the training list {self.train_split_file}",
                    BY_SPLIT_FILE)
        return self._held_out_images(), f"by file-name hash, val_fraction {self.val_fraction:g}", BY_HASH

    def _less_training_images(self, images: dict[str, Path]) -> dict[str, Path]:
        """`images` without those the training list names; DataError when that leaves none."""
        training = set(read_list_file(self.train_split_file, "split", DataError))
        kept = {stem: path for stem, path in images.items() if stem not in training}
        if images and not kept:
            raise DataError(f"{self.name}: split {self.split!r} of {self.root} is empty: the training list "
                            f"{self.train_split_file} names all of its {len(images)} images; leave some out of the "
                            f"list, or add images")
        if len(kept) < len(images) and self.split_by != BY_SPLIT_FILE:
            left_out = len(images) - len(kept)
            self.split_rule += f", less the {left_out} listed in the training list {self.train_split_file}"
        return kept

    def _split_list_in_root(self) -> Path | None:
        """root/splits/<split>.txt when root/splits/ holds .txt files, else None; DataError when this split has none."""
        folder = self.root / "splits"
        present = sorted(p.name for p in folder.glob("*.txt")) if folder.is_dir() else []
        if not present:
            return None
        wanted = folder / f"{self.splits[self.split]}.txt"
        if wanted.name not in present:
            raise DataError(f"{self.name}: split {self.split!r} has no split file {wanted}; the split files there "
                            f"are {', '.join(present)}")
        return wanted

    def _split_folders(self) -> list[str]:
        """The names of the folders in images/ (split folders), sorted; [] for a flat folder."""
        images = self.root / "images"
        if not images.is_dir():
            return []
        return sorted(p.name for p in images.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _listed_images(self, split_file: Path) -> dict[str, Path]:
        """The images a split file names, in its order, looked up among images/* and the split folders."""
        stems = dict.fromkeys(read_list_file(split_file, "split", DataError))
        folders = [self.root / "images", *(self.root / "images" / name for name in self._split_folders())]
        images = list_files(self, folders)
        missing = [stem for stem in stems if stem not in images]
        if missing:
            more = f" ({len(missing) - 1} more listed stems have none)" if len(missing) > 1 else ""
            raise DataError(f"{self.name}: split file {split_file} lists {missing[0]!r}, which has no image in "
                            f"{self.root / 'images'}{more}")
        return {stem: images[stem] for stem in stems}

    def _split_folder_images(self, folders: list[str]) -> dict[str, Path]:
        """The images in images/<split>/; DataError naming the split folders when it is not one of them."""
        name = self.splits[self.split]
        if name not in folders:
            raise DataError(f"{self.name}: split {self.split!r} has no folder {self.root / 'images' / name}; the "
                            f"split folders there are {', '.join(folders)}")
        return list_files(self, self.root / "images" / name)

    def _held_out_images(self, everything: bool = False) -> dict[str, Path]:
        """A flat folder's val images (held out by file-name hash; `everything`: all of them, for the training
        list to leave its own out) or the rest (train)."""
        if self.split not in ("train", "val"):
            raise DataError(f"{self.name}: {self.root} has no split {self.split!r}: a flat folder splits into train "
                            f"and val only; put those images in images/{self.split}/ and masks/{self.split}/, or "
                            f"list them in splits/{self.split}.txt or a split file")
        images = list_files(self, self.root / "images")
        if everything:
            return images
        want_val = self.split == "val"
        chosen = {stem: path for stem, path in images.items() if is_held_out(stem, self.val_fraction) == want_val}
        if images and not chosen:
            change = "a larger" if want_val else "a smaller"
            raise DataError(f"{self.name}: split {self.split!r} of {self.root} is empty: val_fraction "
                            f"{self.val_fraction:g} holds out {'none' if want_val else 'all'} of its {len(images)} "
                            f"images (by file-name hash); add images, give {change} --val-fraction "
                            f"(data.val_fraction), or split the folder with images/{{train,val}}/ and "
                            f"masks/{{train,val}}/ or a split file")
        return chosen


from . import medical as _medical  # noqa: E402,F401  (registers "monuseg")
