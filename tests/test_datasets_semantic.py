"""Readers of the standard benchmarks, on tiny fixtures written in each dataset's official on-disk layout."""

from __future__ import annotations

import numpy as np
import pytest

from digseg.data.base import DATASETS
from digseg.data.io import load_label
from digseg.data.semantic import (
    ADE20K150,
    ADE20K847,
    COCO_STUFF_LUT,
    COCO_UNUSED_IDS,
    COCOStuff171,
    PascalContext59,
    PascalContext459,
)
from digseg.errors import DataError
from layouts import H, W, ade150, ade847, coco, pascal, write_image, write_label


# ---- class files
@pytest.mark.parametrize("cls, count, known", [
    (ADE20K150, 150, {0: "wall", 1: "building", 12: "person", 149: "flag"}),
    (ADE20K847, 847, {0: "wall", 1: "building, edifice", 846: "adding machine, totalizer, totaliser"}),
    (PascalContext59, 59, {0: "aeroplane", 36: "person", 58: "wood"}),
    (PascalContext459, 459, {0: "accordion", 1: "aeroplane", 458: "wool"}),
    (COCOStuff171, 171, {0: "person", 79: "toothbrush", 80: "banner", 170: "wood"}),
])
def test_class_lists(cls, count, known):
    assert len(cls.class_names) == count
    assert len(set(cls.class_names)) == count
    for i, name in known.items():
        assert cls.class_names[i] == name
    assert DATASETS[cls.name] is cls
    assert cls.ignore_index not in range(count)


def test_metrics_and_prompts():
    assert ADE20K150.metric == COCOStuff171.metric == "semantic"
    assert ADE20K847.metric == PascalContext59.metric == PascalContext459.metric == "open_vocab"
    assert ADE20K150.prompt_template.format("wall") == "a photo of a wall."
    assert ADE20K847.ignore_index == PascalContext459.ignore_index == 65535
    assert PascalContext59.ignore_index == ADE20K150.ignore_index == COCOStuff171.ignore_index == 255


# ---- ADE20K-150
@pytest.mark.parametrize("use_inner_root", [False, True])
def test_ade150_pairs_and_reduce_zero_label(tmp_path, use_inner_root):
    base = ade150(tmp_path)
    ds = ADE20K150(base if use_inner_root else tmp_path, split="val")
    assert [s.stem for s in ds.samples] == [f"ADE_val_{i:08d}" for i in range(3)]
    assert all(s.label.name == s.stem + ".png" and s.image.name == s.stem + ".jpg" for s in ds.samples)
    image, label = ds.load_pair(0)
    assert image.size == (W, H) and label.shape == (H, W) and label.dtype == np.int64
    assert label[0, :3].tolist() == [255, 0, 149]  # 0 -> ignore, 1 -> 0, 150 -> 149
    assert set(ds.load_pair(1)[1].ravel().tolist()) == {4, 5}
    item = ds[2]
    assert item["image"].shape == (3, H, W) and item["stem"] == "ADE_val_00000002"
    assert set(item["label"].unique().tolist()) == {6}


def test_ade150_train_split_and_resize(tmp_path):
    ade150(tmp_path, split="training", labels=((3,), (4,)))
    ds = ADE20K150(tmp_path, split="train", size=16)
    assert len(ds) == 2 and ds[0]["image"].shape == (3, 16, 16) and ds[0]["label"].shape == (16, 16)


def test_ade150_out_of_range_label_names_file(tmp_path):
    ade150(tmp_path, labels=((1,), (151, 2)))
    ds = ADE20K150(tmp_path)
    with pytest.raises(DataError, match=r"ADE_val_00000001\.png.*151"):
        ds.load_pair(1)


def test_ade150_image_without_label(tmp_path):
    base = ade150(tmp_path)
    write_image(base / "images" / "validation" / "ADE_val_00000009.jpg")
    with pytest.raises(DataError, match=r"ADE_val_00000009\.jpg has no label.*annotations/validation/"
                                        r"ADE_val_00000009\.png"):
        ADE20K150(tmp_path)


def test_ade150_missing_and_empty_split(tmp_path):
    ade150(tmp_path)  # only validation exists
    with pytest.raises(DataError, match=r"images/training"):
        ADE20K150(tmp_path, split="train")
    write_image(tmp_path / "ADEChallengeData2016" / "images" / "training" / "ADE_train_00000001.jpg")
    with pytest.raises(DataError, match=r"label folder for split 'train' not found: .*annotations/training \(expected"):
        ADE20K150(tmp_path, split="train")
    (tmp_path / "ADEChallengeData2016" / "images" / "training" / "ADE_train_00000001.jpg").unlink()
    (tmp_path / "ADEChallengeData2016" / "annotations" / "training").mkdir()
    with pytest.raises(DataError, match="no images found"):
        ADE20K150(tmp_path, split="train")


def test_corrupt_image_names_file(tmp_path):
    base = ade150(tmp_path)
    bad = base / "images" / "validation" / "ADE_val_00000001.jpg"
    bad.write_bytes(b"\x00garbage, not a jpeg\xff" * 4)
    ds = ADE20K150(tmp_path)
    ds.load_pair(0)
    with pytest.raises(DataError, match=r"ADE_val_00000001\.jpg"):
        ds.load_pair(1)


# ---- ADE20K-847
def test_ade847_uint16_tiff_and_ignore(tmp_path):
    base, arrays = ade847(tmp_path)
    tif = base / "annotations_detectron2" / "validation" / "ADE_val_00000000.tif"
    assert np.array_equal(load_label(tif), arrays[0])  # 16-bit TIFF read back exactly
    for root in (tmp_path, base):
        ds = ADE20K847(root)
        assert [s.stem for s in ds.samples] == ["ADE_val_00000000", "ADE_val_00000001"]
        image, label = ds.load_pair(0)
        assert image.size == (W, H)
        assert np.array_equal(label, arrays[0].astype(np.int64))
        assert set(label.ravel().tolist()) == {0, 846, 65535}


def test_ade847_out_of_range(tmp_path):
    ade847(tmp_path, labels=((0,), (847, 3)))
    with pytest.raises(DataError, match=r"ADE_val_00000001\.tif.*847"):
        ADE20K847(tmp_path).load_pair(1)


# ---- PASCAL-Context
def test_pascal_context_59(tmp_path):
    voc = pascal(tmp_path, "pc59_val", ".png", [(0, 58, 255), (10, 20)], np.uint8)
    ds = PascalContext59(tmp_path)
    assert [s.stem for s in ds.samples] == ["2008_000000", "2008_000001"]
    assert ds.samples[0].image == voc / "JPEGImages" / "2008_000000.jpg"
    image, label = ds.load_pair(0)
    assert image.size == (W, H) and set(label.ravel().tolist()) == {0, 58, 255}
    assert len(PascalContext59(voc)) == 2  # VOC2010 itself is accepted as the root too
    with pytest.raises(DataError, match="pc59_train"):
        PascalContext59(tmp_path, split="train")
    pascal(tmp_path, "pc59_train", ".png", [(1,)], np.uint8)
    assert len(PascalContext59(tmp_path, split="train")) == 1


def test_pascal_context_59_out_of_range_and_missing_image(tmp_path):
    pascal(tmp_path, "pc59_val", ".png", [(0,), (59, 1)], np.uint8)
    with pytest.raises(DataError, match=r"2008_000001\.png.*59"):
        PascalContext59(tmp_path).load_pair(1)
    (tmp_path / "VOCdevkit" / "VOC2010" / "JPEGImages" / "2008_000001.jpg").unlink()
    with pytest.raises(DataError, match=r"2008_000001\.png has no image.*JPEGImages/2008_000001\.jpg"):
        PascalContext59(tmp_path)


def test_pascal_context_459_uint16(tmp_path):
    voc = pascal(tmp_path, "pc459_val", ".tif", [(0, 458, 65535), (300,)], np.uint16)
    tif = voc / "annotations_detectron2" / "pc459_val" / "2008_000000.tif"
    assert load_label(tif).max() == 65535
    ds = PascalContext459(tmp_path)
    assert len(ds) == 2
    assert set(ds.load_pair(0)[1].ravel().tolist()) == {0, 458, 65535}
    assert set(ds[1]["label"].unique().tolist()) == {300}


def test_pascal_context_empty_split(tmp_path):
    pascal(tmp_path, "pc459_val", ".tif", [], np.uint16)
    (tmp_path / "VOCdevkit" / "VOC2010" / "annotations_detectron2" / "pc459_val").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        PascalContext459(tmp_path)


# ---- COCO-Stuff-164k
def test_coco_stuff_mapping(tmp_path):
    coco(tmp_path)
    ds = COCOStuff171(tmp_path)
    assert [s.stem for s in ds.samples] == ["000000000000", "000000000001"]
    _, label = ds.load_pair(0)
    assert label[0, :5].tolist() == [0, 10, 11, 170, 255]  # 12 -> 11 (11 unused), last raw id 181 -> 170
    assert set(ds.load_pair(1)[1].ravel().tolist()) == {255, 170}  # unused thing id 11 -> ignore
    lut = COCO_STUFF_LUT
    assert len(COCO_UNUSED_IDS) == 11 and (lut[list(COCO_UNUSED_IDS)] == 255).all()
    assert sorted(lut[:182][lut[:182] != 255].tolist()) == list(range(171))


def test_coco_stuff_converted_labels_used_as_is(tmp_path):
    coco(tmp_path, labels=((0, 170, 255), (5,)), converted=(0,))
    # a raw file next to the converted one is ignored
    write_label(tmp_path / "annotations" / "val2017" / "000000000000.png", (181,))
    ds = COCOStuff171(tmp_path)
    assert ds.samples[0].label.name == "000000000000_labelTrainIds.png"
    assert set(ds.load_pair(0)[1].ravel().tolist()) == {0, 170, 255}
    assert set(ds.load_pair(1)[1].ravel().tolist()) == {5}


def test_coco_stuff_bad_data(tmp_path):
    coco(tmp_path, labels=((0,), (200,)))
    ds = COCOStuff171(tmp_path)
    with pytest.raises(DataError, match=r"000000000001\.png.*200"):
        ds.load_pair(1)
    write_image(tmp_path / "images" / "val2017" / "000000000007.jpg")
    with pytest.raises(DataError, match=r"000000000007\.jpg has no label.*annotations/val2017/000000000007\.png"):
        COCOStuff171(tmp_path)
    with pytest.raises(DataError, match="train2017"):
        COCOStuff171(tmp_path, split="train")


def test_layout_hints_name_paths(tmp_path):
    ade150(tmp_path)
    hint = ADE20K150(tmp_path).layout_hint
    assert "ADEChallengeData2016/images/validation" in hint and "annotations/validation" in hint
