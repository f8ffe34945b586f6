"""Test helpers: the same image/mask pairs as a `folder` dataset and as `datasets`-library datasets, built offline.

    pairs/                    folder layout: images/{train,val}/<stem>.png|jpg, masks/{train,val}/<stem>.png, classes.txt
    saved/                    DatasetDict(train, validation) with Image features, written by save_to_disk, classes.txt
    train.parquet             the train split as one parquet file (Image columns holding the files' bytes)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["background", "disc", "bar"]
SPLITS = {"train": ("train", 6), "val": ("validation", 3)}  # digseg split -> (the datasets split name, rows)


def write_pairs(root: Path, seed: int = 0) -> dict[str, list[tuple[Path, Path]]]:
    """A `folder` dataset with split folders; image sizes vary (the augmentation rescales them) and one image per
    split is a JPEG (its bytes decode to the same pixels in both readers). -> {split: [(image, mask)]}."""
    rng = np.random.default_rng(seed)
    pairs: dict[str, list[tuple[Path, Path]]] = {}
    for split, (_, count) in SPLITS.items():
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        pairs[split] = []
        for i in range(count):
            h, w = 36 + 4 * i, 48 - 2 * i
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            yy, xx = np.mgrid[:h, :w]
            label = np.zeros((h, w), np.uint8)
            label[(yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (h / 4) ** 2] = 1
            label[:, w - 8: w - 3] = 2
            label[:2] = 255  # unlabelled
            image_path = root / "images" / split / f"s{i:02d}.{'jpg' if i == 0 else 'png'}"
            mask_path = root / "masks" / split / f"s{i:02d}.png"
            Image.fromarray(image).save(image_path)
            Image.fromarray(label).save(mask_path)
            pairs[split].append((image_path, mask_path))
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return pairs


def write_hf_copies(pairs: dict[str, list[tuple[Path, Path]]], out: Path) -> tuple[Path, Path]:
    """The pairs as a DatasetDict saved to `out/saved` (with a classes.txt beside) and the train split as
    `out/train.parquet`. -> (saved folder, parquet file)."""
    import datasets
    from datasets import Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature

    features = Features({"image": ImageFeature(), "label": ImageFeature()})
    tables = DatasetDict({name: Dataset.from_dict({"image": [str(i) for i, _ in pairs[split]],
                                                   "label": [str(m) for _, m in pairs[split]]}, features=features)
                          for split, (name, _) in SPLITS.items()})
    saved = out / "saved"
    tables.save_to_disk(str(saved))  # embeds the files' bytes
    (saved / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    parquet = out / "train.parquet"
    datasets.load_from_disk(str(saved))["train"].to_parquet(str(parquet))  # the saved copy: the files' bytes inside
    return saved, parquet
