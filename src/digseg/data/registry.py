"""Datasets by name: "synthetic" scenes, "hf:<name or path>" (`digseg.data.hf`), or a registered reader."""

from __future__ import annotations

from torch.utils.data import Dataset

from ..errors import ConfigError
from . import domains, semantic  # noqa: F401  (registering imports)
from .base import DATASETS, SegmentationDataset
from .hf_options import HF_PREFIX, HFOptions, is_hf_dataset
from .splits import split_options


def dataset_names() -> list[str]:
    return ["synthetic", *sorted(DATASETS)]


def get_dataset_class(name: str):
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}, or "
                          f"{HF_PREFIX}NAME_OR_PATH (a datasets-library dataset)")
    return DATASETS[name]


def read_dataset(name: str, root: str | None = None, split: str = "val", size: int | None = None,
                 val_fraction: float | None = None, split_file: str | None = None,
                 hf: HFOptions | None = None, train_split_file: str | None = None) -> SegmentationDataset:
    """A reader's split: "hf:..." (read by `hf`), or a registered name at `root` (folder data split by the rest)."""
    options = split_options(name, val_fraction, split_file, train_split_file)
    if is_hf_dataset(name):
        if root:
            raise ConfigError(f"--dataset {name} names its data itself; leave out --data-root (data.data_root)")
        from .hf import HFSegmentation

        return HFSegmentation(name[len(HF_PREFIX):], split=split, size=size, options=hf)
    if hf is not None:
        raise ConfigError(f"hf options (columns, splits, class file, label conventions) apply to {HF_PREFIX} "
                          f"datasets; {name} has its own")
    cls = get_dataset_class(name)
    if not root:
        raise ConfigError(f"--dataset {name} needs --data-root DIR")
    return cls(root, split=split, size=size, **options)


def build_dataset(name: str, root: str | None = None, split: str = "train", size: int | None = None,
                  num_scenes: int = 2000, seed: int = 0, **reader) -> Dataset:
    """The dataset `name`: synthetic scenes, or `read_dataset`'s with the `reader` options (which scenes refuse)."""
    if name == "synthetic":
        if any(option is not None for option in reader.values()):
            raise ConfigError("synthetic scenes have their own splits: split and hf options do not apply to them")
        from .synthetic import SyntheticScenes

        return SyntheticScenes(num_scenes, size=size or 64, seed=seed if split == "train" else seed + 1)
    return read_dataset(name, root, split=split, size=size, **reader)
