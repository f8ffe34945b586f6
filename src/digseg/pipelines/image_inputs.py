"""Pipeline inputs as numpy arrays, without torch: the rules both the PyTorch pipeline (`image_processing`) and the
onnxruntime one (`digseg.runtime`) apply. A path (EXIF orientation applied), a PIL image, a numpy array [H, W, 3]
(uint8, or float in [0, 1]) or [H, W] grey, or a list of those -> a list of float32 [3, H, W] in [-1, 1]."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageOps

from ..errors import DigsegError


def _from_uint8(array: np.ndarray) -> np.ndarray:
    return (np.ascontiguousarray(array.transpose(2, 0, 1)).astype(np.float32) / np.float32(127.5)) - np.float32(1.0)


def rgb_array(array: np.ndarray) -> np.ndarray:
    """[H, W], [H, W, 1], [H, W, 3] or [H, W, 4] -> [H, W, 3] (same dtype); DigsegError for another shape."""
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise DigsegError(f"image array must be [H, W, 3], got shape {tuple(array.shape)}")
    return array[:, :, :3] if array.shape[2] != 1 else np.repeat(array, 3, axis=2)


def from_unit_float(array: np.ndarray) -> np.ndarray:
    """float [H, W, 3] in [0, 1] -> float32 [3, H, W] in [-1, 1]; DigsegError for NaN, inf or values outside."""
    array = array.astype(np.float32).transpose(2, 0, 1)
    if not np.isfinite(array).all():
        raise DigsegError("image contains NaN or infinite values")
    if array.min() < -1e-3 or array.max() > 1 + 1e-3:
        raise DigsegError(f"float images must have values in [0, 1], got [{array.min():.3g}, {array.max():.3g}]")
    return np.ascontiguousarray(array) * 2 - 1


def _from_numpy(array: np.ndarray) -> np.ndarray:
    array = rgb_array(array)
    return _from_uint8(array) if array.dtype == np.uint8 else from_unit_float(array)


def _from_path(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return _from_uint8(np.asarray(image.convert("RGB")))
    except (OSError, ValueError) as exc:
        raise DigsegError(f"cannot read image {path}: {exc}") from exc


def each_image(images: Any, convert: Callable[[Any], Any]) -> list:
    """`convert` applied to `images`, one image or a list of them; DigsegError for an empty list."""
    if not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise DigsegError("no images given")
    return [convert(image) for image in images]


def _from_any(image: Any) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        return _from_path(Path(image))
    if isinstance(image, Image.Image):
        return _from_uint8(np.asarray(image.convert("RGB")))
    if isinstance(image, np.ndarray):
        return _from_numpy(image)
    raise DigsegError(f"unsupported image input of type {type(image).__name__} (the onnxruntime pipeline "
                      "takes paths, PIL images and numpy arrays)")


def to_image_list(images: Any) -> list[np.ndarray]:
    return each_image(images, _from_any)
