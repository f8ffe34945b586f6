"""Readers for the standard semantic / open-vocabulary benchmarks (ADE20K-150/-847, PASCAL-Context-59/-459,
COCO-Stuff-171) in their official on-disk layouts; docs/datasets.md gives each layout and label convention."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import (ImagesFirst, MetricKind, Sample, SegmentationDataset, list_files, make_lut, pair_by_label,
                   pick_root, read_class_file, register_dataset, remap, require_dir)

PHOTO_PROMPT = "a photo of a {}."


# mmsegmentation's reduce_zero_label: 1..150 -> 0..149; 0 (unlabelled) and 255 -> 255; others invalid
ADE20K_LUT = make_lut({0: 255, 255: 255, **{v: v - 1 for v in range(1, 151)}}, default=-1)
# COCO-Stuff-164k raw ids (0-based COCO category id - 1) that no image uses: the 11 dropped thing ids.
COCO_UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
# the other 171 raw ids -> contiguous ids, as mmsegmentation's clsID_to_trID; unused ids and 255 -> 255
COCO_STUFF_LUT = make_lut({**{v: i for i, v in enumerate(v for v in range(182) if v not in COCO_UNUSED_IDS)},
                           **dict.fromkeys(COCO_UNUSED_IDS, 255), 255: 255}, default=-1)


@register_dataset
class ADE20K150(ImagesFirst):
    name = "ade20k-150"
    class_names = read_class_file("ade20k_150.txt")
    splits = {"train": "training", "val": "validation"}
    prompt_template = PHOTO_PROMPT
    inner_roots = ("ADEChallengeData2016",)

    def convert_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        return remap(self, raw, ADE20K_LUT, path)


@register_dataset
class ADE20K847(ImagesFirst):
    name = "ade20k-847"
    metric = MetricKind.OPEN_VOCAB
    class_names = read_class_file("ade20k_847.txt")
    ignore_index = 65535
    splits = {"train": "training", "val": "validation"}
    prompt_template = PHOTO_PROMPT
    inner_roots = ("ADE20K_2021_17_01",)
    image_dir, label_dir = "images_detectron2/{split}", "annotations_detectron2/{split}"
    label_names = ("{}.tif",)


class _PascalContext(SegmentationDataset):
    label_suffix = ".png"

    @property
    def base(self) -> Path:
        return pick_root(self.root, "VOCdevkit/VOC2010", "VOC2010")

    def layout_hint(self) -> str:
        return (f"expected labels {self.base}/annotations_detectron2/{self.splits[self.split]}/<stem>"
                f"{self.label_suffix} and images {self.base}/JPEGImages/<stem>.jpg; root may be the folder "
                "holding VOCdevkit/, VOCdevkit/ or VOC2010/ itself")

    def find_samples(self) -> list[Sample]:
        labels = list_files(self, self.base / "annotations_detectron2" / self.splits[self.split],
                            (self.label_suffix,), "label")
        images = require_dir(self, self.base / "JPEGImages", "image")
        return pair_by_label(self, labels, lambda stem, _: [images / f"{stem}.jpg"])


@register_dataset
class PascalContext59(_PascalContext):
    name = "pascal-context-59"
    metric = MetricKind.OPEN_VOCAB
    class_names = read_class_file("pascal_context_59.txt")
    splits = {"train": "pc59_train", "val": "pc59_val"}
    prompt_template = PHOTO_PROMPT


@register_dataset
class PascalContext459(_PascalContext):
    name = "pascal-context-459"
    metric = MetricKind.OPEN_VOCAB
    class_names = read_class_file("pascal_context_459.txt")
    ignore_index = 65535
    splits = {"train": "pc459_train", "val": "pc459_val"}
    prompt_template = PHOTO_PROMPT
    label_suffix = ".tif"


@register_dataset
class COCOStuff171(ImagesFirst):
    name = "coco-stuff-171"
    class_names = read_class_file("coco_stuff_171.txt")
    splits = {"train": "train2017", "val": "val2017"}
    prompt_template = PHOTO_PROMPT
    CONVERTED = "_labelTrainIds.png"
    label_names = ("{}" + CONVERTED, "{}.png")  # a converted file wins over the raw one beside it

    def convert_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if path.name.endswith(self.CONVERTED):
            return raw  # already contiguous train ids (255 = ignore)
        return remap(self, raw, COCO_STUFF_LUT, path)
