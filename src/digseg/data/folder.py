"""A user's own data in the "folder-of-pairs" layout.

```
root/
  classes.txt        one class name per line (blank lines ignored); line index = class id
  images/<stem>.*    any of IMAGE_EXTENSIONS
  masks/<stem>.png   pixel value = class id, 255 = ignore
```
Images are paired with masks by stem; a mask without an image is ignored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from digseg.data.io import list_images, load_image, load_label
from digseg.data.synthetic import image_to_tensor
from digseg.errors import DataError

IGNORE_INDEX = 255


def read_class_names(path: str | os.PathLike[str]) -> list[str]:
    """Class names from a `classes.txt`: one per line, whitespace stripped, blank lines skipped.

    Raises:
        DataError: the file is missing or unreadable, empty, lists a name twice, or lists more than
            255 classes (255 marks ignored pixels).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"class list not found: {p} (expected one class name per line)")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read class list {p}: {exc}") from exc
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise DataError(f"class list {p} is empty; write one class name per line")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise DataError(f"class list {p} lists {n!r} twice")
        seen.add(n)
    if len(names) > IGNORE_INDEX:
        raise DataError(f"class list {p} lists {len(names)} classes; at most {IGNORE_INDEX} are "
                        f"supported because mask value {IGNORE_INDEX} means 'ignore'")
    return names


def _resize_nearest(label: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of an integer label [H, W] -> [size, size], any dtype."""
    h, w = label.shape
    rows = np.minimum(((np.arange(size) + 0.5) * h / size).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size) + 0.5) * w / size).astype(np.int64), w - 1)
    return label[rows[:, None], cols[None, :]]


class FolderDataset(Dataset):
    """Image/mask pairs from `root/images`, `root/masks` and `root/classes.txt`.

    Items: {"image": float32 [3, H, W] in [-1, 1], "label": int64 [H, W], "stem": str}; with `size`,
    H = W = size (bilinear for images, nearest for labels).

    Args:
        root: dataset folder.
        size: if given, resize every sample to exactly `size` x `size`.
        validate: check at construction that every image has its mask (cheap: file presence only).
            Pixel checks (mask size, label range) always run when a sample is loaded.
    """

    ignore_index: int = IGNORE_INDEX

    def __init__(self, root: str | os.PathLike[str], size: int | None = None,
                 validate: bool = True) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"dataset folder not found: {self.root}")
        if size is not None and int(size) < 1:
            raise DataError(f"size must be a positive number of pixels, got {size}")
        self.size = None if size is None else int(size)
        self.class_names: list[str] = read_class_names(self.root / "classes.txt")
        images = list_images(self.root / "images")
        mask_dir = self.root / "masks"
        if validate and not mask_dir.is_dir():
            raise DataError(f"mask folder not found: {mask_dir}")
        by_stem: dict[str, Path] = {}
        for img in images:
            if img.stem in by_stem:
                raise DataError(f"two images share the stem {img.stem!r}: {by_stem[img.stem]} and "
                                f"{img}; rename one so it pairs with a single mask")
            by_stem[img.stem] = img
        masks: dict[str, Path] = {}
        if mask_dir.is_dir():
            masks = {m.stem: m for m in sorted(mask_dir.iterdir())
                     if m.suffix.lower() == ".png" and m.is_file() and not m.name.startswith(".")}
        self.samples: list[tuple[str, Path, Path]] = []  # (stem, image path, mask path)
        for stem, img in by_stem.items():
            mask = masks.get(stem, mask_dir / f"{stem}.png")
            if validate and stem not in masks:
                raise DataError(f"image {img} has no mask; expected {mask}")
            self.samples.append((stem, img, mask))

    def __len__(self) -> int:
        return len(self.samples)

    def load_arrays(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample `i` at native size, checked: uint8 image [H, W, 3] and integer label [H, W]."""
        stem, img_path, mask_path = self.samples[i]
        if not mask_path.exists():
            raise DataError(f"image {img_path} has no mask; expected {mask_path}")
        image = np.asarray(load_image(img_path))  # [H, W, 3] uint8
        label = load_label(mask_path)  # [H, W]
        if label.shape != image.shape[:2]:
            raise DataError(f"mask {mask_path} is {label.shape[1]}x{label.shape[0]} but image "
                            f"{img_path} is {image.shape[1]}x{image.shape[0]}")
        n = len(self.class_names)
        values = np.unique(label)
        bad = values[((values < 0) | (values >= n)) & (values != self.ignore_index)]
        if bad.size:
            shown = ", ".join(str(v) for v in bad[:5].tolist()) + (", ..." if bad.size > 5 else "")
            raise DataError(f"mask {mask_path} has values {shown} outside 0..{n - 1} "
                            f"({n} classes in classes.txt; {self.ignore_index} = ignore)")
        return image, label

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, label = self.load_arrays(i)
        if self.size is not None and image.shape[:2] != (self.size, self.size):
            resized = Image.fromarray(image).resize((self.size, self.size), Image.Resampling.BILINEAR)
            image = np.asarray(resized)
            label = _resize_nearest(label, self.size)
        return {
            "image": image_to_tensor(image),  # [3, H, W] float32 in [-1, 1]
            "label": torch.from_numpy(label.astype(np.int64)),  # [H, W]
            "stem": self.samples[i][0],
        }
