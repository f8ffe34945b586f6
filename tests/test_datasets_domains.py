"""Domain dataset readers (digseg.data.domains) on tiny fixtures in the official layouts."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from digseg.data.base import DATASETS
from digseg.data.domains import BDD100K, REFUGE2, Cityscapes, DeepGlobeRoads, FolderPairs, MoNuSeg, PhenoBench
from digseg.errors import ConfigError, DataError
from layouts import CITYSCAPES_LABEL_IDS as LABEL_IDS
from layouts import H, W, aperio_xml, write_image, write_label
from layouts import cityscapes as write_cityscapes
from layouts import deepglobe as write_deepglobe
from layouts import monuseg as write_monuseg


def first(label: np.ndarray, n: int) -> list[int]:
    return label.reshape(-1)[:n].tolist()


def test_registered_names_and_attributes():
    expected = {"cityscapes": ("semantic", 19), "bdd100k": ("semantic", 19), "deepglobe-roads": ("road", 2),
                "monuseg": ("medical", 2), "refuge2": ("medical", 3), "phenobench": ("semantic", 3),
                "folder": ("semantic", 0)}
    for name, (metric, k) in expected.items():
        assert DATASETS[name].metric == metric and len(DATASETS[name].class_names) == k
    assert Cityscapes.class_names[0] == "road" and Cityscapes.class_names[-1] == "bicycle"
    assert BDD100K.class_names == Cityscapes.class_names
    assert REFUGE2.medical_targets == {"disc": (1, 2), "cup": (2,)}
    assert MoNuSeg.medical_targets == {"nucleus": (1,)}


# ------------------------------------------------------------------------------------------- cityscapes

TRAIN_IDS = list(range(19)) + [255] * 7


@pytest.fixture
def cityscapes(tmp_path):
    root = write_cityscapes(tmp_path / "cityscapes")  # train images have no gtFine at all
    (root / "gtFine/val/aachen/aachen_000000_000019_gtFine_color.png").write_bytes(b"not used")
    return root


def test_cityscapes_pairs_and_label_ids(cityscapes):
    ds = Cityscapes(cityscapes, split="val")
    assert [s.stem for s in ds.samples] == ["aachen_000000_000019", "bochum_000000_000313"]
    assert ds.samples[0].image.name == "aachen_000000_000019_leftImg8bit.png"
    assert ds.samples[0].label.name == "aachen_000000_000019_gtFine_labelIds.png"
    assert ds.samples[1].label.name == "bochum_000000_000313_gtFine_labelTrainIds.png"
    assert ds.num_classes == 19
    image, label = ds.load_pair(0)
    assert image.size == (W, H) and label.dtype == np.int64 and label.shape == (H, W)
    assert first(label, len(LABEL_IDS)) == TRAIN_IDS  # known pairs and unknown ids -> 255
    assert first(ds.load_pair(1)[1], 4) == [5, 18, 255, 0]
    item = Cityscapes(cityscapes, split="val", size=4)[0]
    assert item["image"].shape == (3, 4, 4) and item["label"].dtype == torch.int64
    assert item["stem"] == ds.samples[0].stem


def test_cityscapes_uint16_label_ids_outside_table(cityscapes):
    path = cityscapes / "gtFine/val/aachen/aachen_000000_000019_gtFine_labelIds.png"
    write_label(path, [7, 26, 300, 65535], dtype=np.uint16)
    assert first(Cityscapes(cityscapes, split="val").load_pair(0)[1], 4) == [0, 13, 255, 255]


def test_cityscapes_missing_label_and_split(cityscapes):
    with pytest.raises(DataError, match=r"aachen_000000_000019_leftImg8bit\.png.*labelTrainIds\.png"):
        Cityscapes(cityscapes, split="train")  # train images have no gtFine at all
    with pytest.raises(DataError, match=r"leftImg8bit[/\\]test"):
        Cityscapes(cityscapes, split="test")
    with pytest.raises(ConfigError):
        Cityscapes(cityscapes, split="training")


# ------------------------------------------------------------------------------------------- bdd100k


@pytest.fixture
def bdd(tmp_path):
    root = tmp_path / "bdd100k"
    for i, stem in enumerate(["7d06fefd-f7be05a6", "7d128593-0ccfea4c"]):
        write_image(root / "images/10k/val" / f"{stem}.jpg", i)
        write_label(root / "labels/sem_seg/masks/val" / f"{stem}.png", [0, 13, 18, 255][i:])
    return root


def test_bdd100k(bdd):
    ds = BDD100K(bdd, split="val")
    assert [s.stem for s in ds.samples] == ["7d06fefd-f7be05a6", "7d128593-0ccfea4c"]
    assert all(s.label.stem == s.image.stem for s in ds.samples)
    assert first(ds.load_pair(0)[1], 4) == [0, 13, 18, 255]
    assert first(ds.load_pair(1)[1], 3) == [13, 18, 255]


def test_bdd100k_out_of_range_and_corrupt_image(bdd):
    bad = write_label(bdd / "labels/sem_seg/masks/val/7d06fefd-f7be05a6.png", [0, 19])
    (bdd / "images/10k/val/7d128593-0ccfea4c.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    ds = BDD100K(bdd, split="val")  # listing does not read pixels
    with pytest.raises(DataError, match=rf"{bad.name}.*\[19\]"):
        ds.load_pair(0)
    with pytest.raises(DataError, match=r"7d128593-0ccfea4c\.jpg"):
        ds.load_pair(1)


def test_bdd100k_missing_split(bdd):
    with pytest.raises(DataError, match=r"images[/\\]10k[/\\]train"):
        BDD100K(bdd, split="train")


# ------------------------------------------------------------------------------------------- deepglobe


@pytest.fixture
def deepglobe(tmp_path):
    return write_deepglobe(tmp_path / "deepglobe")


def test_deepglobe_binarise(deepglobe):
    ds = DeepGlobeRoads(deepglobe, split="val")
    assert [s.stem for s in ds.samples] == ["100034", "999"]
    assert ds.samples[0].label.name == "100034_mask.png"
    assert first(ds.load_pair(0)[1], 5) == [0, 0, 1, 1, 1]
    label = ds.load_pair(1)[1]
    assert first(label, 4) == [0, 0, 1, 1] and set(np.unique(label).tolist()) == {0, 1}


def test_deepglobe_image_without_mask(deepglobe):
    write_image(deepglobe / "valid/555_sat.jpg", 3)
    with pytest.raises(DataError, match=r"555_sat\.jpg.*555_mask\.png"):
        DeepGlobeRoads(deepglobe, split="val")
    with pytest.raises(DataError, match="train"):
        DeepGlobeRoads(deepglobe, split="train")


# ------------------------------------------------------------------------------------------- monuseg

def expected_nuclei() -> np.ndarray:
    mask = np.zeros((H, W), np.int64)
    mask[1:4, 1:4] = 1  # SQUARE, outline included
    mask[2:5, 5:7] = 1  # RECT
    return mask


@pytest.fixture
def monuseg(tmp_path):
    return write_monuseg(tmp_path / "monuseg")


def test_monuseg_rasterise(monuseg):
    ds = MoNuSeg(monuseg, split="train")
    assert [s.stem for s in ds.samples] == ["TCGA-18-5592-01Z-00-DX1", "TCGA-21-5784-01Z-00-DX1"]
    assert ds.samples[0].label.suffix == ".xml" and ds.samples[0].label.parent.name == "Annotations"
    image, label = ds.load_pair(0)
    assert image.size == (W, H) and label.dtype == np.int64
    np.testing.assert_array_equal(label, expected_nuclei())  # two nuclei: 1 inside, 0 outside
    assert int(ds.load_pair(1)[1].sum()) == 6
    item = ds[0]
    assert item["label"].shape == (H, W) and item["image"].shape == (3, H, W)


def test_monuseg_test_split_flat_and_subfolders(monuseg):
    for split in ("test", "val"):
        ds = MoNuSeg(monuseg, split=split)
        assert [s.stem for s in ds.samples] == ["TCGA-2Z-A9J9-01A-01-TS1"]
        assert int(ds.load_pair(0)[1].sum()) == 9
    flat = monuseg / "MoNuSegTestData"
    (flat / "Tissue Images").mkdir()
    (flat / "Annotations").mkdir()
    (flat / "TCGA-2Z-A9J9-01A-01-TS1.tif").rename(flat / "Tissue Images/TCGA-2Z-A9J9-01A-01-TS1.tif")
    (flat / "TCGA-2Z-A9J9-01A-01-TS1.xml").rename(flat / "Annotations/TCGA-2Z-A9J9-01A-01-TS1.xml")
    assert int(MoNuSeg(monuseg, split="test").load_pair(0)[1].sum()) == 9


def test_monuseg_bad_xml_and_missing(monuseg):
    bad = monuseg / "MoNuSegTrainingData/Annotations/TCGA-21-5784-01Z-00-DX1.xml"
    bad.write_text("<Annotations><Annotation><Regions><Region>")
    ds = MoNuSeg(monuseg, split="train")
    with pytest.raises(DataError, match=r"TCGA-21-5784-01Z-00-DX1\.xml"):
        ds.load_pair(1)
    bad.write_text(aperio_xml([(1, 1), (2, 2), (3, 1)]).replace('X="2.0"', 'X="two"'))
    with pytest.raises(DataError, match=r"TCGA-21-5784-01Z-00-DX1\.xml"):
        ds.read_label(ds.samples[1])
    bad.unlink()
    with pytest.raises(DataError, match=r"TCGA-21-5784-01Z-00-DX1\.tif.*Annotations[/\\]TCGA-21-5784-01Z-00-DX1\.xml"):
        MoNuSeg(monuseg, split="train")


# ------------------------------------------------------------------------------------------- refuge2


@pytest.fixture
def refuge(tmp_path):
    root = tmp_path / "refuge2"
    write_image(root / "val/images/V0001.jpg", 1)
    write_label(root / "val/mask/V0001.bmp", [255, 128, 0, 250, 120, 10, 64, 192], fmt="BMP")
    write_image(root / "val/images/V0002.jpg", 2)
    write_label(root / "val/mask/V0002.bmp", [255, 255, 128, 0], fmt="BMP")
    return root


def test_refuge2_mask_values(refuge):
    ds = REFUGE2(refuge, split="val")
    assert [s.stem for s in ds.samples] == ["V0001", "V0002"]
    assert ds.samples[0].label.suffix == ".bmp"
    assert first(ds.load_pair(0)[1], 8) == [0, 1, 2, 0, 1, 2, 2, 0]  # 255/128/0 -> 0/1/2, others to nearest
    assert first(ds.load_pair(1)[1], 4) == [0, 0, 1, 2]


def test_refuge2_masks_folder_and_missing(refuge):
    (refuge / "val/mask").rename(refuge / "val/masks")
    assert first(REFUGE2(refuge, split="val").load_pair(1)[1], 4) == [0, 0, 1, 2]
    (refuge / "val/masks/V0002.bmp").unlink()
    with pytest.raises(DataError, match=r"V0002\.jpg.*V0002\.bmp"):
        REFUGE2(refuge, split="val")
    with pytest.raises(DataError, match="test"):
        REFUGE2(refuge, split="test")


# ------------------------------------------------------------------------------------------- phenobench


@pytest.fixture
def pheno(tmp_path):
    root = tmp_path / "phenobench"
    for i, stem in enumerate(["phenoBench_00000", "phenoBench_00001"]):
        write_image(root / "train/images" / f"{stem}.png", i)
        write_label(root / "train/semantics" / f"{stem}.png", [0, 1, 2, 3, 4, 5, 255][i:])
    return root


def test_phenobench(pheno):
    ds = PhenoBench(pheno, split="train")
    assert [s.stem for s in ds.samples] == ["phenoBench_00000", "phenoBench_00001"]
    assert ds.samples[1].label == pheno / "train/semantics/phenoBench_00001.png"
    assert first(ds.load_pair(0)[1], 7) == [0, 1, 2, 1, 2, 255, 255]
    assert first(ds.load_pair(1)[1], 6) == [1, 2, 1, 2, 255, 255]
    with pytest.raises(DataError, match=r"val"):
        PhenoBench(pheno, split="val")


# ------------------------------------------------------------------------------------------- folder


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "mine"
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("background\ncat\n\ndog\n")
    write_image(root / "images/a.png", 1)
    write_image(root / "images/b.jpg", 2)
    write_label(root / "masks/a.png", [0, 1, 2, 255])
    write_label(root / "masks/b.png", [2, 2, 0])
    return root


def test_folder_pairs(folder):
    ds = FolderPairs(folder, split="train")
    assert ds.class_names == ["background", "cat", "dog"] and ds.num_classes == 3
    assert FolderPairs.class_names == []  # per instance, the class attribute is untouched
    pairs = [(s.stem, s.image.name, s.label.name) for s in ds.samples]
    assert pairs == [("a", "a.png", "a.png"), ("b", "b.jpg", "b.png")]
    assert first(ds.load_pair(0)[1], 4) == [0, 1, 2, 255]
    assert len(FolderPairs(folder, split="val", val_fraction=1)) == 2  # a flat folder: val held out by hash


def test_folder_bad_data(folder):
    write_label(folder / "masks/b.png", [0, 3])
    with pytest.raises(DataError, match=r"b\.png.*\[3\]"):  # out of range: named by the base class
        FolderPairs(folder, split="train", val_fraction=0).load_pair(1)
    small = folder / "masks/a.png"
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(small)
    with pytest.raises(DataError, match=r"a\.png.*2x2"):
        FolderPairs(folder, split="train", val_fraction=0).load_pair(0)
    write_image(folder / "images/c.png", 3)
    with pytest.raises(DataError, match=r"c\.png.*masks[/\\]c\.png"):
        FolderPairs(folder, split="train", val_fraction=0)
    (folder / "classes.txt").unlink()
    with pytest.raises(DataError, match="classes.txt"):
        FolderPairs(folder)


def test_empty_split_and_missing_root(tmp_path):
    (tmp_path / "pheno/val/images").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        PhenoBench(tmp_path / "pheno", split="val")
    with pytest.raises(DataError, match="data root not found"):
        Cityscapes(tmp_path / "nowhere")
