"""Datasets by name: `build_dataset(name, root, split, size)`.

"synthetic" is the built-in generator; every other name is a `SegmentationDataset` reader registered in
`digseg.data.semantic` (ADE20K, PASCAL-Context, COCO-Stuff) or `digseg.data.domains` (Cityscapes,
BDD100K, DeepGlobe, MoNuSeg, REFUGE2, PhenoBench, and "folder" for a user's own data, whose splits
`val_fraction` and `split_file` choose: `digseg.data.splits`).
"""

from __future__ import annotations

from torch.utils.data import Dataset

from ..errors import ConfigError
from .base import DATASETS
from .splits import split_options


def _load_readers() -> None:
    from . import domains, semantic  # noqa: F401  (registering imports)


def dataset_names() -> list[str]:
    _load_readers()
    return ["synthetic", *sorted(DATASETS)]


def get_dataset_class(name: str):
    _load_readers()
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}")
    return DATASETS[name]


def build_dataset(name: str, root: str | None = None, split: str = "train", size: int | None = None,
                  num_scenes: int = 2000, seed: int = 0, val_fraction: float | None = None,
                  split_file: str | None = None) -> Dataset:
    """The dataset `name` (its `split`, items squashed to `size`); `val_fraction` and `split_file` choose a
    folder dataset's splits (ConfigError for another dataset)."""
    options = split_options(name, val_fraction, split_file)
    if name == "synthetic":
        from .synthetic import SyntheticScenes

        return SyntheticScenes(num_scenes, size=size or 64, seed=seed if split == "train" else seed + 1)
    cls = get_dataset_class(name)
    if not root:
        raise ConfigError(f"--dataset {name} needs --data-root DIR")
    return cls(root, split=split, size=size, **options)
