"""Readers for the standard semantic / open-vocabulary benchmarks (ADE20K-150/-847, PASCAL-Context-59/-459,
COCO-Stuff-171) in their official on-disk layouts; docs/datasets.md gives each layout and label convention."""

from __future__ import annotations

from .base import MetricKind, StandardLayout, make_lut, read_class_file, register_dataset

# mmsegmentation's reduce_zero_label: 1..150 -> 0..149; 0 (unlabelled) and 255 -> 255; others invalid
ADE20K_LUT = make_lut({0: 255, 255: 255, **{v: v - 1 for v in range(1, 151)}}, default=-1)
# COCO-Stuff-164k raw ids (0-based COCO category id - 1) that no image uses: the 11 dropped thing ids.
COCO_UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
# the other 171 raw ids -> contiguous ids, as mmsegmentation's clsID_to_trID; unused ids and 255 -> 255
COCO_STUFF_LUT = make_lut({**{v: i for i, v in enumerate(v for v in range(182) if v not in COCO_UNUSED_IDS)},
                           **dict.fromkeys(COCO_UNUSED_IDS, 255), 255: 255}, default=-1)


class _Benchmark(StandardLayout):
    prompt_template = "a photo of a {}."


@register_dataset
class ADE20K150(_Benchmark):
    name = "ade20k-150"
    class_names = read_class_file("ade20k_150.txt")
    splits = {"train": "training", "val": "validation"}
    inner_roots = ("ADEChallengeData2016",)
    label_lut = ADE20K_LUT


@register_dataset
class ADE20K847(_Benchmark):
    name = "ade20k-847"
    metric = MetricKind.OPEN_VOCAB
    class_names = read_class_file("ade20k_847.txt")
    ignore_index = 65535
    splits = {"train": "training", "val": "validation"}
    inner_roots = ("ADE20K_2021_17_01",)
    image_dir, label_dir = "images_detectron2/{split}", "annotations_detectron2/{split}"
    label_names = ("{}.tif",)


class _PascalContext(_Benchmark):  # the labels choose the samples
    metric = MetricKind.OPEN_VOCAB
    inner_roots = ("VOCdevkit/VOC2010", "VOC2010")
    image_dir, label_dir = "JPEGImages", "annotations_detectron2/{split}"
    image_suffixes, labels_first = (".jpg",), True


@register_dataset
class PascalContext59(_PascalContext):
    name = "pascal-context-59"
    class_names = read_class_file("pascal_context_59.txt")
    splits = {"train": "pc59_train", "val": "pc59_val"}


@register_dataset
class PascalContext459(_PascalContext):
    name = "pascal-context-459"
    class_names = read_class_file("pascal_context_459.txt")
    ignore_index = 65535
    splits = {"train": "pc459_train", "val": "pc459_val"}
    label_names = ("{}.tif",)


@register_dataset
class COCOStuff171(_Benchmark):
    name = "coco-stuff-171"
    class_names = read_class_file("coco_stuff_171.txt")
    splits = {"train": "train2017", "val": "val2017"}
    converted, label_lut = "_labelTrainIds.png", COCO_STUFF_LUT  # train ids (255 = ignore), or raw ids
    label_names = ("{}" + converted, "{}.png")  # a converted file wins over the raw one beside it
