"""Test helpers: tiny datasets written in each benchmark's official on-disk layout (W x H pixel images, label maps
whose pixels cycle through given values). The reader tests (test_datasets_semantic.py, test_datasets_domains.py)
and the documented-command runs (test_doc_commands_run.py) write their data with these."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

W, H = 8, 6


def write_image(path: Path, seed: int = 0, fmt: str | None = None, size: tuple[int, int] = (W, H)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, format=fmt)
    return path


def label_grid(values, dtype=np.uint8) -> np.ndarray:
    """A [H, W] label whose pixels hold `values`, repeated (row by row)."""
    return np.resize(np.asarray(values, dtype=dtype), H * W).reshape(H, W)


def write_label(path: Path, values, dtype=np.uint8, fmt: str | None = None) -> Path:
    """`label_grid(values)` as an image file (8-bit PNG, or with uint16 a 16-bit PNG or TIFF)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label_grid(values, dtype)).save(path, format=fmt)
    return path


# ------------------------------------------------------------------------------------------- semantic benchmarks
def ade150(root: Path, split: str = "validation", labels=((0, 1, 150), (5, 6), (7,))) -> Path:
    base = root / "ADEChallengeData2016"
    for i, values in enumerate(labels):
        stem = f"ADE_val_{i:08d}"
        write_image(base / "images" / split / f"{stem}.jpg", seed=i)
        write_label(base / "annotations" / split / f"{stem}.png", values)
    return base


def ade847(root: Path, labels=((0, 846, 65535), (12, 13))) -> tuple[Path, list[np.ndarray]]:
    base = root / "ADE20K_2021_17_01"
    arrays = []
    for i, values in enumerate(labels):
        stem = f"ADE_val_{i:08d}"
        write_image(base / "images_detectron2" / "validation" / f"{stem}.jpg", seed=i)
        write_label(base / "annotations_detectron2" / "validation" / f"{stem}.tif", values, np.uint16)
        arrays.append(label_grid(values, np.uint16))
    return base, arrays


def pascal(root: Path, folder: str, suffix: str, labels, dtype, images=None) -> Path:
    voc = root / "VOCdevkit" / "VOC2010"
    stems = [f"2008_{i:06d}" for i in range(len(labels))]
    for i, stem in enumerate(images if images is not None else stems):
        write_image(voc / "JPEGImages" / f"{stem}.jpg", seed=i)
    write_image(voc / "JPEGImages" / "2010_999999.jpg")  # an image outside the split: not a sample
    for stem, values in zip(stems, labels):
        write_label(voc / "annotations_detectron2" / folder / f"{stem}{suffix}", values, dtype)
    return voc


def coco(root: Path, split: str = "val2017", labels=((0, 10, 12, 181, 255), (11, 181)), converted=()) -> None:
    for i, values in enumerate(labels):
        stem = f"{i:012d}"
        write_image(root / "images" / split / f"{stem}.jpg", seed=i)
        name = f"{stem}_labelTrainIds.png" if i in converted else f"{stem}.png"
        write_label(root / "annotations" / split / name, values)


# ------------------------------------------------------------------------------------------- domain datasets
CITYSCAPES_LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33, 0, 1, 6, 9, 29, 30,
                        255]


def cityscapes(root: Path, labelled=("val",)) -> Path:
    """Two cities' images in val and train, labels (gtFine) for the `labelled` splits: aachen's as labelIds,
    bochum's as both labelTrainIds and (contradicting) labelIds."""
    for split in ("val", "train"):
        write_image(root / "leftImg8bit" / split / "aachen" / "aachen_000000_000019_leftImg8bit.png", 1)
        write_image(root / "leftImg8bit" / split / "bochum" / "bochum_000000_000313_leftImg8bit.png", 2)
    for split in labelled:
        write_label(root / f"gtFine/{split}/aachen/aachen_000000_000019_gtFine_labelIds.png", CITYSCAPES_LABEL_IDS)
        write_label(root / f"gtFine/{split}/bochum/bochum_000000_000313_gtFine_labelTrainIds.png", [5, 18, 255, 0])
        write_label(root / f"gtFine/{split}/bochum/bochum_000000_000313_gtFine_labelIds.png", [7, 7, 7, 7])
    return root


def deepglobe(root: Path, splits=("valid",)) -> Path:
    """Two satellite tiles per split folder: one grey mask, one RGB mask with unequal channels."""
    for split in splits:
        write_image(root / split / "100034_sat.jpg", 1)
        write_label(root / split / "100034_mask.png", [0, 127, 128, 200, 255])
        write_image(root / split / "999_sat.jpg", 2)
        rgb = np.zeros((H, W, 3), np.uint8)
        rgb[0, :4, 0] = [0, 100, 130, 255]
        rgb[..., 1] = 7  # unequal channels (JPEG-like noise): the first channel decides
        Image.fromarray(rgb).save(root / split / "999_mask.png")
    return root


SQUARE = [(1, 1), (3, 1), (3, 3), (1, 3)]
RECT = [(5, 2), (6, 2), (6, 4), (5, 4)]


def aperio_xml(*polygons) -> str:
    regions = "".join(
        f'<Region Id="{i + 1}" Type="0"><Attributes/><Vertices>'
        + "".join(f'<Vertex X="{x}.0" Y="{y}.0" Z="0"/>' for x, y in poly)
        + "</Vertices></Region>"
        for i, poly in enumerate(polygons))
    return ('<?xml version="1.0"?>\n<Annotations MicronsPerPixel="0.252"><Annotation Id="1" Type="4">'
            '<Attributes><Attribute Name="Description" Id="0" Value=""/></Attributes><Regions>'
            '<RegionAttributeHeaders/>' + regions + "</Regions><Plots/></Annotation></Annotations>")


def monuseg(root: Path) -> Path:
    """Two training tiles (TIFF images, Aperio XML annotations in subfolders) and one flat test tile."""
    train = root / "MoNuSegTrainingData"
    for i, stem in enumerate(["TCGA-18-5592-01Z-00-DX1", "TCGA-21-5784-01Z-00-DX1"]):
        write_image(train / "Tissue Images" / f"{stem}.tif", i, fmt="TIFF")
        (train / "Annotations").mkdir(parents=True, exist_ok=True)
        (train / "Annotations" / f"{stem}.xml").write_text(aperio_xml(SQUARE, RECT) if i == 0 else aperio_xml(RECT))
    test = root / "MoNuSegTestData"
    write_image(test / "TCGA-2Z-A9J9-01A-01-TS1.tif", 5, fmt="TIFF")
    (test / "TCGA-2Z-A9J9-01A-01-TS1.xml").write_text(aperio_xml(SQUARE))
    return root
