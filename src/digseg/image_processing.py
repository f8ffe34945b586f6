"""Image pre- and post-processing for the pipeline: input normalisation, resize, pad, unpad.

Accepted images: a path (read as displayed: its EXIF orientation is applied), a PIL image, a numpy array [H, W, 3] (uint8 0..255 or float 0..1) or
[H, W] grey, a torch tensor [3, H, W] or [N, 3, H, W] with values in [0, 1], or a list of those.
Everything becomes float tensors [3, H, W] in [-1, 1].
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import DigsegError


def _from_pil(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0  # [H, W, 3]
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # [3, H, W]


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise DigsegError(f"image array must be [H, W, 3], got shape {tuple(array.shape)}")
    array = array[:, :, :3] if array.shape[2] != 1 else np.repeat(array, 3, axis=2)
    if array.dtype == np.uint8:
        values = array.astype(np.float32) / 255.0
    else:
        values = array.astype(np.float32)
    return _check_unit_range(torch.from_numpy(values).permute(2, 0, 1).contiguous()) * 2 - 1


def _check_unit_range(tensor: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(tensor).all():
        raise DigsegError("image contains NaN or infinite values")
    lo, hi = float(tensor.min()), float(tensor.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise DigsegError(f"float images must have values in [0, 1], got [{lo:.3g}, {hi:.3g}]")
    return tensor.float()


def to_image_list(images: Any) -> list[torch.Tensor]:
    """Normalise pipeline input to a list of [3, H, W] float tensors in [-1, 1]."""
    from .data.io import load_image  # local import: data.io is light, but keeps this module standalone

    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return [_check_unit_range(img) * 2 - 1 for img in images]
    if not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise DigsegError("no images given")
    out = []
    for image in images:
        if isinstance(image, (str, os.PathLike)):
            out.append(_from_pil(load_image(Path(image), exif_transpose=True)))
        elif isinstance(image, Image.Image):
            out.append(_from_pil(image))
        elif isinstance(image, np.ndarray):
            out.append(_from_numpy(image))
        elif isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] == 3:
            out.append(_check_unit_range(image) * 2 - 1)
        else:
            raise DigsegError(f"unsupported image input of type {type(image).__name__}")
    return out


def processed_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """Size after resizing the longer side to `resolution` (0 = keep the native size)."""
    if resolution <= 0:
        return height, width
    scale = resolution / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def padded_size(height: int, width: int, resolution: int, multiple: int) -> tuple[int, int]:
    """(H', W'): the size of the tensor the model sees, `processed_size` padded up to a multiple of `multiple`.
    Images with the same padded size can share a batch."""
    h, w = processed_size(height, width, resolution)
    return h + (-h) % multiple, w + (-w) % multiple


def resize_and_pad(image: torch.Tensor, resolution: int, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """[3, H, W] -> ([3, H', W'] padded to a multiple of `multiple` (see `padded_size`), (h, w) before padding)."""
    h, w = processed_size(image.shape[-2], image.shape[-1], resolution)
    if (h, w) != tuple(image.shape[-2:]):
        image = F.interpolate(image[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h or pad_w:
        image = F.pad(image[None], (0, pad_w, 0, pad_h), mode="replicate")[0]
    return image, (h, w)


def unpad_and_resize(probs: torch.Tensor, valid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """probs [N, K, H', W'] -> [N, K, *size]: crop the padding, then bilinear resize to the input size."""
    probs = probs[:, :, : valid[0], : valid[1]]
    if tuple(probs.shape[-2:]) != tuple(size):
        probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
    return probs
