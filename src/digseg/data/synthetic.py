"""Synthetic scenes of circles, squares and triangles on textured backgrounds, scene `i` from `(seed, i)` only. Each
kind has its own colours: a tiny model trained for a few CPU minutes could not tell them apart by shape alone."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import DataError
from .base import Sample, SegmentationDataset
from .io import PathLike, image_to_tensor, tensor_to_image

SYNTHETIC_CLASSES: tuple[str, ...] = ("background", "circle", "square", "triangle")
_CIRCLE, _SQUARE, _TRIANGLE = 1, 2, 3

# Saturated shape colours (RGB): red, green, blue, yellow, magenta, cyan, white, orange.
_COLOURS = np.array([[230, 30, 30], [30, 200, 40], [40, 60, 230], [240, 220, 30],
                     [220, 40, 220], [30, 220, 230], [245, 245, 245], [250, 140, 20]], dtype=np.float32)
_FAMILY = {_CIRCLE: (0, 7, 3), _SQUARE: (1, 5), _TRIANGLE: (2, 4, 6)}  # each kind's colours (indices into _COLOURS)
_EXTENT = {_CIRCLE: 1.0, _SQUARE: 0.85 * np.sqrt(2.0), _TRIANGLE: 1.4}  # farthest point from the centre, in radii


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel-centre coordinates `yy, xx` [S, S] and a bilinear upsampling matrix [S, 4]."""
    c = np.arange(size, dtype=np.float32) + 0.5
    yy, xx = np.meshgrid(c, c, indexing="ij")
    pos = c / size * 3.0  # map pixel centres onto a 4-node grid spanning the image
    up = np.maximum(0.0, 1.0 - np.abs(pos[:, None] - np.arange(4, dtype=np.float32)[None, :]))
    return yy, xx, up.astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured background [S, S, 3] float32 (0..255 scale) and its base colour [3]."""
    yy, xx, up = _grid(size)
    base = rng.uniform(40.0, 215.0, size=3).astype(np.float32)
    coarse = rng.normal(0.0, 1.0, size=(4, 4, 3)).astype(np.float32) * rng.uniform(15.0, 40.0)
    rows = np.tensordot(up, coarse, axes=(1, 0))  # [S, 4, 3]
    img = base + np.matmul(up, rows)  # [S, S, 3]: smooth low-frequency blotches
    if rng.random() < 0.6:  # stripes of random orientation, period and colour
        theta = rng.uniform(0.0, np.pi)
        period = rng.uniform(0.08, 0.3) * size
        phase = (xx * np.cos(theta) + yy * np.sin(theta)) * (2.0 * np.pi / period) + rng.uniform(0, 6.3)
        amp = rng.normal(0.0, 1.0, size=3).astype(np.float32)
        amp *= rng.uniform(12.0, 35.0) / max(float(np.linalg.norm(amp)), 1e-6)
        img = img + np.sin(phase)[..., None] * amp
    return img, base


def _shape_mask(kind: int, cx: float, cy: float, r: float, rng: np.random.Generator, size: int) -> np.ndarray:
    """Boolean mask [S, S] of one shape centred at (cx, cy) with radius r (pixels)."""
    yy, xx, _ = _grid(size)
    dx, dy = xx - cx, yy - cy
    if kind == _CIRCLE:
        return dx * dx + dy * dy <= r * r
    if kind == _SQUARE:
        a = 0.0 if rng.random() < 0.3 else rng.uniform(0.0, np.pi / 2)
        c, s = np.cos(a), np.sin(a)
        half = 0.85 * r
        return (np.abs(dx * c + dy * s) <= half) & (np.abs(-dx * s + dy * c) <= half)
    # Triangle: near-equilateral, any rotation, vertices on a circle of radius 1.4 r.
    ang = rng.uniform(0.0, 2 * np.pi) + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.normal(0.0, 0.1, size=3)
    vx, vy = cx + 1.4 * r * np.cos(ang), cy + 1.4 * r * np.sin(ang)
    d = [(vx[(k + 1) % 3] - vx[k]) * (yy - vy[k]) - (vy[(k + 1) % 3] - vy[k]) * (xx - vx[k]) for k in range(3)]
    return ((d[0] >= 0) & (d[1] >= 0) & (d[2] >= 0)) | ((d[0] <= 0) & (d[1] <= 0) & (d[2] <= 0))


def make_scene(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Image uint8 [S, S, 3], label uint8 [S, S]; a shape hiding half an earlier one is re-placed (up to 6 tries)."""
    yy, xx, _ = _grid(size)
    img, base = _background(rng, size)
    label = np.zeros((size, size), dtype=np.uint8)
    owner = np.full((size, size), -1, dtype=np.int8)  # which shape (index) owns each pixel
    areas: list[int] = []
    # Colours of the kind's family, far from the background's base colour first, so shapes stay findable.
    far = {i for i in range(len(_COLOURS)) if np.linalg.norm(_COLOURS[i] - base) > 110.0}
    used: list[int] = []
    kinds: list[int] = []  # 1-3 shapes, each usually of a kind not used yet
    for _ in range(int(rng.choice([1, 2, 3], p=[0.2, 0.45, 0.35]))):
        unused = [k for k in (_CIRCLE, _SQUARE, _TRIANGLE) if k not in kinds]
        kinds.append(int(rng.choice(unused if (unused and rng.random() < 0.85) else [_CIRCLE, _SQUARE, _TRIANGLE])))
    for kind in kinds:
        for _ in range(6):
            r = rng.uniform(0.12, 0.25) * size
            margin = 0.85 * _EXTENT[kind] * r  # keeps the shape mostly inside the image
            cx, cy = rng.uniform(margin, size - margin, size=2)
            mask = _shape_mask(kind, float(cx), float(cy), float(r), rng, size)
            if mask.any() and all(np.count_nonzero((owner == k) & ~mask) >= 0.5 * a for k, a in enumerate(areas)):
                break
        else:
            continue
        family = _FAMILY[kind]
        pool = [i for i in family if i in far and i not in used] or [i for i in family if i not in used] or list(family)
        ci = int(rng.choice(pool))
        used.append(ci)
        g = rng.normal(0.0, 40.0, size=2)  # mild linear shading across the shape
        shade = (xx - cx) * (g[0] / size) + (yy - cy) * (g[1] / size)
        img[mask] = _COLOURS[ci] + shade[mask][:, None]
        label[mask] = kind
        owner[mask] = len(areas)
        areas.append(int(np.count_nonzero(mask)))
    img += rng.normal(0.0, 5.0, size=img.shape).astype(np.float32)  # slight per-pixel noise
    return np.clip(img, 0.0, 255.0).round().astype(np.uint8), label


class SyntheticScenes(Dataset):
    """Scene `i` from `(seed, i)` only; items {"image": float32 [3, H, W] in [-1, 1], "label": int64 [H, W], "stem"}."""

    ignore_index: int = 255

    def __init__(self, num_scenes: int, size: int = 64, seed: int = 0) -> None:
        if int(num_scenes) < 0 or int(size) < 8 or int(seed) < 0:
            raise DataError(f"synthetic scenes need num_scenes >= 0, a size >= 8 pixels and a seed >= 0, got "
                            f"num_scenes={num_scenes}, size={size}, seed={seed}")
        self.num_scenes, self.size, self.seed = int(num_scenes), int(size), int(seed)
        self.class_names: list[str] = list(SYNTHETIC_CLASSES)

    def __len__(self) -> int:
        return self.num_scenes

    def scene(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw scene `i` (negative: from the end): uint8 image [H, W, 3] and uint8 label [H, W]."""
        i = range(self.num_scenes)[i]  # IndexError out of range
        return make_scene(np.random.default_rng([self.seed, i]), self.size)

    def load_pair(self, i: int) -> tuple[Image.Image, np.ndarray]:
        """Scene `i` as (RGB PIL image, int64 label [H, W]), as dataset readers give their samples."""
        image, label = self.scene(i)
        return Image.fromarray(image), label.astype(np.int64)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = range(self.num_scenes)[int(i)]
        image, label = self.load_pair(i)
        return {"image": image_to_tensor(image), "label": torch.from_numpy(label), "stem": f"scene_{i:05d}"}


def save_scenes_as_folder(scenes: SyntheticScenes, root: PathLike) -> Path:
    """`scenes` written as a `folder` dataset (images/, masks/, classes.txt) at `root`, returned as a Path."""
    root = Path(root)
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{n}\n" for n in scenes.class_names), encoding="utf-8")
    for i in range(len(scenes)):
        image, label = scenes.scene(i)
        Image.fromarray(image).save(root / "images" / f"scene_{i:05d}.png")
        Image.fromarray(label).save(root / "masks" / f"scene_{i:05d}.png")
    return root


class ItemsView(SegmentationDataset):
    """The first `limit` items of synthetic scenes as a reader's samples (no files), for `predict_dataset`."""

    name = "synthetic"

    def __init__(self, dataset: Dataset, limit: int) -> None:  # noqa: D107  (no files: no root)
        self.items, self.root, self.split, self.size = dataset, None, "val", None
        self.class_names = list(dataset.class_names)
        self.samples = [Sample(f"item_{i:05d}", f"item {i}", f"item {i}", row=i)
                        for i in range(min(limit, len(dataset)))]  # type: ignore[arg-type]

    def read_image(self, sample: Sample) -> Image.Image:
        return Image.fromarray(tensor_to_image(self.items[sample.row]["image"]))

    def read_label(self, sample: Sample) -> np.ndarray:
        return self.items[sample.row]["label"].cpu().numpy().astype(np.int64)  # [H, W]
