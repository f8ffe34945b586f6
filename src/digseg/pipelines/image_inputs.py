"""Pipeline inputs as numpy arrays, torch-free (shared with `digseg.runtime`): a path (EXIF orientation applied), a
PIL image, a numpy array [H, W, 3] (uint8, or float in [0, 1]) or [H, W] grey, or a list of those -> a list of
float32 [3, H, W] in [-1, 1]."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageOps

from ..errors import DigsegError


def image_array(image: Any) -> np.ndarray:
    """A PIL image or a numpy array -> float32 [3, H, W] in [-1, 1]; DigsegError for another shape, range or type."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise DigsegError(f"unsupported image input of type {type(image).__name__} (give paths, PIL images, numpy "
                          "arrays or, to the PyTorch pipeline, torch tensors)")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise DigsegError(f"image array must be [H, W, 3], got shape {tuple(image.shape)}")
    image = image[:, :, :3] if image.shape[2] != 1 else np.repeat(image, 3, axis=2)
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32) / np.float32(127.5) - np.float32(1)
    array = image.astype(np.float32).transpose(2, 0, 1)
    if not np.isfinite(array).all():
        raise DigsegError("image contains NaN or infinite values")
    if array.min() < -1e-3 or array.max() > 1 + 1e-3:
        raise DigsegError(f"float images must have values in [0, 1], got [{array.min():.3g}, {array.max():.3g}]")
    return np.ascontiguousarray(array) * 2 - 1


def each_image(images: Any, convert: Callable[[Any], Any]) -> list:
    """`convert` applied to `images`, one image or a list of them; DigsegError for an empty list."""
    if not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise DigsegError("no images given")
    return [convert(image) for image in images]


def _from_any(image: Any) -> np.ndarray:
    if not isinstance(image, (str, os.PathLike)):
        return image_array(image)
    try:
        with Image.open(image) as opened:
            return image_array(ImageOps.exif_transpose(opened))
    except (OSError, ValueError) as exc:
        raise DigsegError(f"cannot read image {Path(image)}: {exc}") from exc


def to_image_list(images: Any) -> list[np.ndarray]:
    return each_image(images, _from_any)
