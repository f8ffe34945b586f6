"""MoNuSeg: H&E tissue tiles with Aperio XML nucleus outlines, rasterised to a nuclei mask on read.

Layout (official zips unpacked under one root):
```
root/MoNuSegTrainingData/Tissue Images/<stem>.tif    root/MoNuSegTrainingData/Annotations/<stem>.xml
root/MoNuSegTestData/<stem>.tif + <stem>.xml         (or the same "Tissue Images"/"Annotations" folders)
```
MoNuSeg has no validation split: "val" reads the test data (as is usual for this dataset).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import DataError
from .base import MetricKind, Sample, SegmentationDataset, register_dataset
from .io import load_image
from .layout import list_files, pair_by_image, require_dir


def read_aperio_polygons(path: Path) -> list[list[tuple[float, float]]]:
    """Polygons [(x, y), ...] of every Annotations/Annotation/Regions/Region/Vertices/Vertex in an Aperio XML;
    DataError when the file is missing, not well-formed XML, or a vertex lacks a finite numeric X / Y."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise DataError(f"cannot read annotation {path}: {exc}") from exc
    polygons = []
    for region in root.iter("Region"):
        points = []
        for vertex in region.iter("Vertex"):
            try:
                x, y = float(vertex.attrib["X"]), float(vertex.attrib["Y"])
            except (KeyError, ValueError) as exc:
                raise DataError(f"annotation {path}: a vertex of region {region.get('Id', '?')} has no valid "
                                f"X / Y ({vertex.attrib})") from exc
            if not (math.isfinite(x) and math.isfinite(y)):
                raise DataError(f"annotation {path}: non-finite vertex ({x}, {y})")
            points.append((x, y))
        if points:
            polygons.append(points)
    return polygons


def rasterise(polygons: list[list[tuple[float, float]]], width: int, height: int) -> np.ndarray:
    """uint8 [height, width] mask: 1 inside (and on the outline of) any polygon, 0 elsewhere."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for points in polygons:
        if len(points) >= 2:  # 2 points draw a line; a single point is skipped
            draw.polygon(points, fill=1, outline=1)
    return np.asarray(canvas, dtype=np.uint8)


@register_dataset
class MoNuSeg(SegmentationDataset):
    name = "monuseg"
    metric = MetricKind.MEDICAL
    class_names = ["background", "nucleus"]
    splits = {"train": "MoNuSegTrainingData", "val": "MoNuSegTestData", "test": "MoNuSegTestData"}
    medical_targets = {"nucleus": (1,)}

    def layout_hint(self) -> str:
        return ("expected MoNuSegTrainingData/Tissue Images/<stem>.tif + MoNuSegTrainingData/Annotations/<stem>.xml, "
                "and MoNuSegTestData/<stem>.tif + <stem>.xml")

    def find_samples(self) -> list[Sample]:
        folder = require_dir(self, self.root / self.splits[self.split], "split")
        tissue, notes = folder / "Tissue Images", folder / "Annotations"
        images = list_files(self, tissue if tissue.is_dir() else folder, (".tif", ".tiff"))
        label_dirs = [notes, folder] if notes.is_dir() else [folder]
        return pair_by_image(self, images, lambda stem, _: [d / f"{stem}.xml" for d in label_dirs])

    def read_raw_label(self, sample: Sample) -> np.ndarray:
        width, height = load_image(sample.image).size
        return rasterise(read_aperio_polygons(sample.label), width, height).astype(np.int64)
