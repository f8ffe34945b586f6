"""Readers for domain datasets in their official on-disk layouts (docs/datasets.md): "cityscapes", "bdd100k",
"deepglobe-roads", "refuge2", "phenobench", "monuseg" and "folder" (a user's own image/mask pairs)."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import DataError
from .base import (MetricKind, Sample, SegmentationDataset, StandardLayout, list_files, make_lut, pair_files,
                   pick_root, register_dataset, subfolders)
from .io import load_image, read_class_list, read_list_file
from .splits import (BY_HASH, BY_SPLIT_FILE, BY_SPLIT_FOLDERS, BY_SPLIT_LISTS, DEFAULT_VAL_FRACTION, FOLDER_DATASET,
                     is_held_out, split_options)

CITYSCAPES_CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle"]


@register_dataset
class Cityscapes(StandardLayout):
    name = "cityscapes"
    class_names = CITYSCAPES_CLASSES
    splits = {"train": "train", "val": "val", "test": "test"}
    converted, strict_lut = "_labelTrainIds.png", False
    # cityscapesScripts helpers/labels.py: labelId -> trainId for the 19 evaluated classes; all others are ignored (255)
    label_lut = make_lut({7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                          26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18})
    image_dir, label_dir, nested = "leftImg8bit/{split}", "gtFine/{split}", True  # <split>/<city>/<id>_...
    image_suffixes, label_names = ("_leftImg8bit.png",), ("{}_gtFine_labelTrainIds.png", "{}_gtFine_labelIds.png")


@register_dataset
class BDD100K(StandardLayout):
    name = "bdd100k"
    class_names = CITYSCAPES_CLASSES
    image_dir, label_dir = "images/10k/{split}", "labels/sem_seg/masks/{split}"
    image_suffixes = (".jpg", ".jpeg", ".png")


@register_dataset
class DeepGlobeRoads(StandardLayout):
    name = "deepglobe-roads"
    metric = MetricKind.ROAD
    class_names = ["background", "road"]
    splits = {"train": "train", "val": "valid", "test": "test"}
    image_dir = label_dir = "{split}"
    image_suffixes, label_names = ("_sat.jpg",), ("{}_mask.png",)
    first_channel, label_lut = True, (np.arange(65536) >= 128).astype(np.int64)  # road = white (8 or 16 bits)


@register_dataset
class REFUGE2(StandardLayout):
    name = "refuge2"
    metric = MetricKind.MEDICAL
    class_names = ["background", "optic disc", "optic cup"]
    splits = {"train": "train", "val": "val", "test": "test"}
    medical_targets = {"disc": (1, 2), "cup": (2,)}
    image_dir, label_dir = "{split}/images", "{split}"
    image_suffixes, label_names = (".jpg", ".jpeg", ".png"), ("mask/{}.bmp", "masks/{}.bmp")
    first_channel = True  # 8-bit BMP: 255 bg -> 0, 128 rim -> 1, 0 cup -> 2, others to the nearest
    label_lut = np.array([2 if v <= 64 else 1 if v < 192 else 0 for v in range(256)], dtype=np.uint8)


@register_dataset
class PhenoBench(StandardLayout):
    name = "phenobench"
    class_names = ["soil", "crop", "weed"]
    image_dir, label_dir = "{split}/images", "{split}/semantics"
    label_lut, strict_lut = make_lut({0: 0, 1: 1, 2: 2, 3: 1, 4: 2}), False  # 3 partial crop -> crop, 4 -> weed


@register_dataset
class FolderPairs(SegmentationDataset):
    """A user's images/<stem>.*, masks/<stem>.png and classes.txt, split by `digseg.data.splits` (`split_rule`)."""

    name = FOLDER_DATASET
    splits = {"train": "train", "val": "val", "test": "test"}
    layout_hint = ("expected images/<stem>.* and masks/<stem>.png (or images/<split>/ and masks/<split>/) and "
                   "classes.txt (one class name per line)")

    def __init__(self, root: str | Path, split: str = "val", size: int | None = None,
                 val_fraction: float | None = None, split_file: str | Path | None = None,
                 train_split_file: str | Path | None = None) -> None:
        split_options(self.name, val_fraction, split_file, train_split_file)  # ConfigError for a bad combination
        self.val_fraction = float(DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction)
        if train_split_file is not None and split == "train":  # the training list names split train's images
            split_file, train_split_file = train_split_file, None
        self.split_file = Path(split_file).expanduser() if split_file is not None else None
        self.train_split_file = Path(train_split_file).expanduser() if train_split_file is not None else None
        super().__init__(root, split=split, size=size)

    def __repr__(self) -> str:
        count = f"{len(self)} image{'' if len(self) == 1 else 's'}"
        return f"FolderPairs({str(self.root)!r}, split={self.split!r}): {count} {self.split_rule}"

    def find_samples(self) -> list[Sample]:
        classes = self.root / "classes.txt"
        self.class_names = read_class_list(classes)
        if len(self.class_names) > self.ignore_index:
            raise DataError(f"class list {classes} lists {len(self.class_names)} classes; at most {self.ignore_index} "
                            f"are supported because mask value {self.ignore_index} means 'ignore'")
        images, self.split_rule, self.split_by = self._images_of_split()
        if self.train_split_file is not None:  # less the images the training list names
            training = set(read_list_file(self.train_split_file, "split", DataError))
            kept = {stem: path for stem, path in images.items() if stem not in training}
            if images and not kept:
                raise DataError(f"{self.name}: split {self.split!r} of {self.root} is empty: the training list "
                                f"{self.train_split_file} names all of its {len(images)} images; leave some out of "
                                f"the list, or add images")
            if len(kept) < len(images) and self.split_by != BY_SPLIT_FILE:
                self.split_rule += (f", less the {len(images) - len(kept)} listed in the training list "
                                    f"{self.train_split_file}")
            images = kept
        masks = self.root / "masks"  # masks/<stem>.png, or masks/<split>/<stem>.png for a split folder's image
        return pair_files(self, images, lambda stem, image: [
            masks / image.parent.relative_to(self.root / "images") / f"{stem}.png"])

    def _images_of_split(self) -> tuple[dict[str, Path], str, str]:
        """{stem: image} of this split, and the rule that chose them in words and by name."""
        if self.split_file is not None:
            return self._listed_images(self.split_file), f"listed in {self.split_file}", BY_SPLIT_FILE
        name, lists = self.splits[self.split], self.root / "splits"
        present = sorted(p.name for p in lists.glob("*.txt")) if lists.is_dir() else []
        if present:
            if f"{name}.txt" not in present:
                raise DataError(f"{self.name}: split {self.split!r} has no split file {lists / f'{name}.txt'}; the "
                                f"split files there are {', '.join(present)}")
            return self._listed_images(lists / f"{name}.txt"), f"listed in {lists / f'{name}.txt'}", BY_SPLIT_LISTS
        folders = [folder.name for folder in subfolders(self.root / "images")]
        if folders:
            if name not in folders:
                raise DataError(f"{self.name}: split {self.split!r} has no folder {self.root / 'images' / name}; "
                                f"the split folders there are {', '.join(folders)}")
            return list_files(self, self.root / "images" / name), f"in images/{name}/", BY_SPLIT_FOLDERS
        if self.split not in ("train", "val"):
            raise DataError(f"{self.name}: {self.root} has no split {self.split!r}: a flat folder splits into train "
                            f"and val only; put those images in images/{self.split}/ and masks/{self.split}/, or "
                            f"list them in splits/{self.split}.txt or a split file")
        images = list_files(self, self.root / "images")
        if self.train_split_file is not None:  # a flat folder's val: every image the training list leaves out
            return images, f"not listed in the training list {self.train_split_file}", BY_SPLIT_FILE
        want_val = self.split == "val"
        chosen = {stem: path for stem, path in images.items() if is_held_out(stem, self.val_fraction) == want_val}
        if images and not chosen:
            raise DataError(f"{self.name}: split {self.split!r} of {self.root} is empty: val_fraction "
                            f"{self.val_fraction:g} holds out {'none' if want_val else 'all'} of its {len(images)} "
                            f"images (by file-name hash); add images, give {'a larger' if want_val else 'a smaller'} "
                            f"--val-fraction (data.val_fraction), or split the folder with images/{{train,val}}/ and "
                            f"masks/{{train,val}}/ or a split file")
        return chosen, f"by file-name hash, val_fraction {self.val_fraction:g}", BY_HASH

    def _listed_images(self, split_file: Path) -> dict[str, Path]:
        """The images a split file names, in its order, looked up among images/* and the split folders."""
        stems = dict.fromkeys(read_list_file(split_file, "split", DataError))
        images = list_files(self, [self.root / "images", *subfolders(self.root / "images")])
        missing = [stem for stem in stems if stem not in images]
        if missing:
            more = f" ({len(missing) - 1} more listed stems have none)" if len(missing) > 1 else ""
            raise DataError(f"{self.name}: split file {split_file} lists {missing[0]!r}, which has no image in "
                            f"{self.root / 'images'}{more}")
        return {stem: images[stem] for stem in stems}


@register_dataset
class MoNuSeg(StandardLayout):
    """H&E tissue tiles with Aperio XML nucleus outlines, rasterised on read; "val" reads the test data (no val)."""

    name = "monuseg"
    metric = MetricKind.MEDICAL
    class_names = ["background", "nucleus"]
    splits = {"train": "MoNuSegTrainingData", "val": "MoNuSegTestData", "test": "MoNuSegTestData"}
    medical_targets = {"nucleus": (1,)}
    image_dir = label_dir = "{split}"
    image_suffixes, label_names = (".tif", ".tiff"), ("Annotations/{}.xml", "{}.xml")

    def folders(self) -> tuple[Path, Path]:  # images in <split>/Tissue Images/ (the training data) or in <split>/
        images, labels = super().folders()
        return pick_root(images, "Tissue Images"), labels

    def read_raw_label(self, sample: Sample) -> np.ndarray:
        """1 inside (and on) any Region's Vertex polygon, 0 elsewhere; DataError for bad XML or vertices."""
        canvas, path = Image.new("L", load_image(sample.image).size, 0), sample.label
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError) as exc:
            raise DataError(f"cannot read annotation {path}: {exc}") from exc
        draw = ImageDraw.Draw(canvas)
        for region in root.iter("Region"):
            points = []
            for vertex in region.iter("Vertex"):
                try:
                    points.append((float(vertex.attrib["X"]), float(vertex.attrib["Y"])))
                    if not all(math.isfinite(v) for v in points[-1]):
                        raise ValueError("not finite")
                except (KeyError, ValueError) as exc:
                    raise DataError(f"annotation {path}: a vertex of region {region.get('Id', '?')} has no valid "
                                    f"finite X / Y ({vertex.attrib})") from exc
            if len(points) >= 2:  # 2 points draw a line; a single point is skipped
                draw.polygon(points, fill=1, outline=1)
        return np.asarray(canvas, dtype=np.uint8).astype(np.int64)
