"""Base class of the readers of datasets in their official layouts (`@register_dataset`), and the registry by name.

A reader sets `name`, `metric`, `class_names`, `splits` and implements `find_samples` (and `convert_label` when stored
values are not contiguous class ids). `load_pair(i)` gives the native-size PIL image and int64 label [H, W]; items,
`dataset[i]`, are {"image": float [3, H, W] in [-1, 1], "label": int64 [H, W], "stem": str} squashed to `size`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .io import image_to_tensor, load_image, load_label, read_class_list


class MetricKind(str, Enum):
    """How `digseg eval` scores a dataset (its `metric`); a reader may write the value ("semantic")."""

    SEMANTIC = "semantic"  # one confusion matrix; mIoU over classes whose union > 0 (mmsegmentation)
    OPEN_VOCAB = "open_vocab"  # the same matrix; means over classes present in the ground truth (CAT-Seg)
    ROAD = "road"  # IoU, precision, recall, F1 of class 1
    MEDICAL = "medical"  # per-image foreground Dice and IoU of each target, averaged over images

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Sample:
    """One image and its label: files, or for a table's row (`digseg.data.hf`) strings naming the row and column
    (what error messages print) with `row` its index."""

    stem: str
    image: Path | str
    label: Path | str
    row: int = -1  # a table's row; -1 for files


class LazySamples(Sequence):
    """The samples `make(i)` of `indices`, made when indexed (a table's million rows cost no million objects)."""

    def __init__(self, make: Callable[[int], Sample], indices: Sequence[int]) -> None:
        self.make, self.indices = make, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return LazySamples(self.make, self.indices[i])
        return self.make(self.indices[i])


def read_class_file(filename: str) -> list[str]:
    """Class names shipped in `digseg/data/classes/<filename>`, read by the class-file rule (`read_class_list`)."""
    with resources.as_file(resources.files("digseg.data").joinpath("classes", filename)) as path:
        return read_class_list(path)


class SegmentationDataset(Dataset):
    name: ClassVar[str] = ""
    metric: ClassVar[MetricKind] = MetricKind.SEMANTIC  # how `digseg eval` scores it
    class_names: ClassVar[list[str]] = []
    ignore_index: ClassVar[int] = 255
    splits: ClassVar[dict[str, str]] = {"train": "train", "val": "val"}  # our split name -> the layout's
    prompt_template: ClassVar[str] = "{}"  # default prompt per class name, e.g. "a photo of a {}."

    def __init__(self, root: str | Path, split: str = "val", size: int | None = None) -> None:
        self.root = Path(root).expanduser()
        if split not in self.splits:
            raise ConfigError(f"{self.name} has no split {split!r}; choose from {', '.join(self.splits)}")
        if not self.root.is_dir():
            raise DataError(f"{self.name}: data root not found: {self.root}")
        self.split, self.size = split, size
        self.samples: list[Sample] = self.find_samples()
        if not self.samples:
            raise DataError(f"{self.name}: no images found for split {split!r} under {self.root} "
                            f"({self.layout_hint()})")

    def find_samples(self) -> list[Sample]:
        raise NotImplementedError

    def layout_hint(self) -> str:
        """One line telling where images and labels are expected (used in error messages)."""
        return "see README: datasets"

    def convert_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Stored label values -> contiguous class ids with `ignore_index` for unlabelled pixels."""
        return raw

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.samples)

    def read_image(self, sample: Sample) -> Image.Image:
        """The sample's RGB image, stored pixels (override for images that are not files)."""
        return load_image(sample.image)

    def read_raw_label(self, sample: Sample) -> np.ndarray:
        """The label file as class ids (override for labels that are not images, e.g. XML polygons)."""
        return self.convert_label(load_label(sample.label), sample.label)

    def read_label(self, sample: Sample) -> np.ndarray:
        """int64 [H, W] class ids with `ignore_index`; DataError naming the file if missing or out of range."""
        label = self.read_raw_label(sample).astype(np.int64)
        bad = label[(label >= self.num_classes) | (label < 0)]
        bad = bad[bad != self.ignore_index]
        if bad.size:
            raise DataError(f"label {sample.label} has values {sorted(set(bad.tolist()))[:5]} outside the "
                            f"{self.num_classes} classes of {self.name}")
        return label

    def load_pair(self, i: int) -> tuple[Image.Image, np.ndarray]:
        """Native-size (RGB image, int64 label [H, W]); DataError naming the file on any problem."""
        sample = self.samples[i]
        image = self.read_image(sample)
        label = self.read_label(sample)
        if label.shape != (image.height, image.width):
            raise DataError(f"label {sample.label} is {label.shape[1]}x{label.shape[0]} but image {sample.image} "
                            f"is {image.width}x{image.height}")
        return image, label

    def __getitem__(self, i: int) -> dict:
        image, label = self.load_pair(i)
        if self.size:
            image = image.resize((self.size, self.size), Image.BILINEAR)
            label = np.asarray(Image.fromarray(label.astype(np.int32)).resize((self.size, self.size), Image.NEAREST))
        return {"image": image_to_tensor(image),  # [3, H, W] float32 in [-1, 1]
                "label": torch.from_numpy(label.astype(np.int64)), "stem": self.samples[i].stem}


DATASETS: dict[str, type[SegmentationDataset]] = {}


def register_dataset(cls: type[SegmentationDataset]) -> type[SegmentationDataset]:
    if not cls.name or cls.name in DATASETS:
        raise ValueError(f"dataset name {cls.name!r} is empty or registered twice")
    try:
        cls.metric = MetricKind(cls.metric)
    except ValueError:
        raise ValueError(f"{cls.name}: metric must be one of {', '.join(k.value for k in MetricKind)}, "
                         f"got {cls.metric!r}") from None
    DATASETS[cls.name] = cls
    return cls
