"""Datasets by name: `build_dataset("synthetic" | "folder", root, ...)`.

Every dataset returns samples {"image": [3, H, W] in [-1, 1], "label": int64 [H, W], "stem": str} and has
`class_names` and `ignore_index`.
"""

from __future__ import annotations

from torch.utils.data import Dataset

from ..errors import ConfigError

DATASETS = ("synthetic", "folder")


def build_dataset(name: str, root: str | None = None, size: int | None = None, num_scenes: int = 2000,
                  seed: int = 0) -> Dataset:
    if name == "synthetic":
        from .synthetic import SyntheticScenes

        return SyntheticScenes(num_scenes, size=size or 64, seed=seed)
    if name == "folder":
        if not root:
            raise ConfigError("--dataset folder needs --data-root DIR (with images/, masks/ and classes.txt)")
        from .folder import FolderDataset

        return FolderDataset(root, size=size)
    raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
