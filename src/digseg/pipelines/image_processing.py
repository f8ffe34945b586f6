"""Image pre- and post-processing for the pipeline: input normalisation, resize, pad, unpad.

Accepted images: a path (EXIF orientation applied), a PIL image, a numpy array [H, W, 3] (uint8, or float in
[0, 1]) or [H, W] grey, a torch tensor [3, H, W] or [N, 3, H, W] in [0, 1], or a list of those; each becomes a
float tensor [3, H, W] in [-1, 1].
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.io import image_to_tensor, load_image
from ..errors import DigsegError
from .image_inputs import each_image, from_unit_float, rgb_array
from .window_grid import processed_size  # noqa: F401  (re-exported: the test resize, torch-free)


def _from_pil(image: Image.Image) -> torch.Tensor:
    return image_to_tensor(image if image.mode == "RGB" else image.convert("RGB"))  # [3, H, W]


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    array = rgb_array(array)  # [H, W, 3]
    if array.dtype == np.uint8:
        return image_to_tensor(array)  # [3, H, W]
    return torch.from_numpy(from_unit_float(array))


def _check_unit_range(tensor: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(tensor).all():
        raise DigsegError("image contains NaN or infinite values")
    lo, hi = float(tensor.min()), float(tensor.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise DigsegError(f"float images must have values in [0, 1], got [{lo:.3g}, {hi:.3g}]")
    return tensor.float()


def _from_any(image: Any) -> torch.Tensor:
    if isinstance(image, (str, os.PathLike)):
        return _from_pil(load_image(Path(image), exif_transpose=True))
    if isinstance(image, Image.Image):
        return _from_pil(image)
    if isinstance(image, np.ndarray):
        return _from_numpy(image)
    if isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] == 3:
        return _check_unit_range(image) * 2 - 1
    raise DigsegError(f"unsupported image input of type {type(image).__name__}")


def to_image_list(images: Any) -> list[torch.Tensor]:
    """Normalise pipeline input to a list of [3, H, W] float tensors in [-1, 1]."""
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return [_check_unit_range(img) * 2 - 1 for img in images]
    return each_image(images, _from_any)


def resize_to(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[3, H, W] -> [3, *size] (antialiased bilinear; unchanged when the size already matches)."""
    if tuple(size) == tuple(image.shape[-2:]):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]


def pad_to_multiple(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """[3, H, W] or [V, 3, H, W] -> H', W' multiples of `multiple` (replicated border, bottom and right)."""
    pad_h, pad_w = (-images.shape[-2]) % multiple, (-images.shape[-1]) % multiple
    if not (pad_h or pad_w):
        return images
    batch = images if images.dim() == 4 else images[None]
    padded = F.pad(batch, (0, pad_w, 0, pad_h), mode="replicate")
    return padded if images.dim() == 4 else padded[0]


def padded_size(height: int, width: int, resolution: int, multiple: int, scale: tuple[int, int] | None = None,
                keep_ratio: bool = True) -> tuple[int, int]:
    """(H', W'): the size of the tensor the model sees, `processed_size` padded up to a multiple of `multiple`.
    Images with the same padded size can share a batch."""
    h, w = processed_size(height, width, resolution, scale, keep_ratio)
    return h + (-h) % multiple, w + (-w) % multiple
