"""Image pre-processing for the PyTorch pipeline: `common.to_image_list`'s inputs (paths read by `load_image`) and
torch tensors [3, H, W] or [N, 3, H, W] in [0, 1] -> float tensors [3, H, W] in [-1, 1]."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..data.io import load_image
from ..errors import DigsegError
from .common import each_image, image_array
from .common import processed_size  # noqa: F401  (re-exported: the test resize, torch-free)


def _check_unit_range(tensor: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(tensor).all():
        raise DigsegError("image contains NaN or infinite values")
    lo, hi = float(tensor.min()), float(tensor.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise DigsegError(f"float images must have values in [0, 1], got [{lo:.3g}, {hi:.3g}]")
    return tensor.float()


def _from_any(image: Any) -> torch.Tensor:
    if isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] == 3:
        return _check_unit_range(image) * 2 - 1
    if isinstance(image, (str, os.PathLike)):
        image = load_image(Path(image), exif_transpose=True)
    return torch.from_numpy(image_array(image))


def to_image_list(images: Any) -> list[torch.Tensor]:
    """Normalise pipeline input to a list of [3, H, W] float tensors in [-1, 1]."""
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return [_check_unit_range(img) * 2 - 1 for img in images]
    return each_image(images, _from_any)


def padded_size(height: int, width: int, resolution: int, multiple: int, scale: tuple[int, int] | None = None,
                keep_ratio: bool = True) -> tuple[int, int]:
    """(H', W'): `processed_size` padded up to a multiple of `multiple` (the shape a batch shares)."""
    h, w = processed_size(height, width, resolution, scale, keep_ratio)
    return h + (-h) % multiple, w + (-w) % multiple
