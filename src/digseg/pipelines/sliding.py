"""Sliding-window inference: the window grid, the views run through the model, and combining them.

Grid: mmsegmentation's `slide_inference` (windows every `stride` pixels, the last shifted back to end at the
border, a crop larger than the image becomes the image size). Overlaps are averaged in probability space (mmseg
sums logits; DiGSeg's outputs are probabilities, as CAT-Seg's sigmoid outputs are). Optional: a global view
(CAT-Seg: the whole image resized to the window, averaged 50/50 with the windows) and a horizontal flip (mmseg's
flip TTA: the mirrored image's windows reuse the same noise, so a flip-symmetric input gives a flip-symmetric
output). Views of one image share one shape, padded (replicate) to the U-Net's multiple, so they batch together.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

from ..errors import DigsegError
from .choices import INFERENCE_MODES
from .image_processing import pad_to_multiple


def pair(value: int | tuple[int, int] | list[int] | None, what: str) -> tuple[int, int] | None:
    """An int or (H, W) -> (H, W) of positive ints; None stays None."""
    if value is None:
        return None
    if isinstance(value, int):
        value = (value, value)
    if len(value) != 2 or not all(isinstance(v, int) and v >= 1 for v in value):
        raise DigsegError(f"{what} must be a positive int or (height, width), got {value!r}")
    return int(value[0]), int(value[1])


def check_test_protocol(mode: str, crop_size, stride, global_view: bool,
                        default_crop: int) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """(crop, stride) for mode "slide": crop defaults to `default_crop` square, stride to 2/3 of the crop (mmseg's
    512 / 341); None for "whole" (where crop_size, stride and global_view mean nothing)."""
    if mode not in INFERENCE_MODES:
        raise DigsegError(f"mode must be one of {', '.join(INFERENCE_MODES)}, got {mode!r}")
    if mode == "whole":
        if crop_size is not None or stride is not None or global_view:
            raise DigsegError("crop_size, stride and global_view apply to mode='slide' only")
        return None
    crop = pair(crop_size, "crop_size") or (default_crop, default_crop)
    step = pair(stride, "stride") or (max(1, crop[0] * 2 // 3), max(1, crop[1] * 2 // 3))
    if step[0] > crop[0] or step[1] > crop[1]:
        raise DigsegError(f"stride {step} is larger than crop_size {crop}: some pixels would be in no window")
    return crop, step


def axis_starts(size: int, crop: int, stride: int) -> list[int]:
    """Window starts along one axis (mmseg's grid, the last window shifted to end at the border)."""
    count = max(size - crop + stride - 1, 0) // stride + 1
    last = max(size - crop, 0)
    return [min(i * stride, last) for i in range(count)]


def window_grid(height: int, width: int, crop: tuple[int, int],
                stride: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) of every window over a height x width image, row by row."""
    ch, cw = min(crop[0], height), min(crop[1], width)
    return [(y, y + ch, x, x + cw) for y in axis_starts(height, crop[0], stride[0])
            for x in axis_starts(width, crop[1], stride[1])]


def count_map(boxes: list[tuple[int, int, int, int]], size: tuple[int, int]) -> torch.Tensor:
    """How many windows cover each pixel: [H, W] float32."""
    count = torch.zeros(size)
    for y1, y2, x1, x2 in boxes:
        count[y1:y2, x1:x2] += 1
    return count


def combine_windows(probs: torch.Tensor, boxes: list[tuple[int, int, int, int]], size: tuple[int, int]) -> torch.Tensor:
    """Window probabilities [n, K, h, w] -> [K, H, W]: summed where windows overlap, divided by the count."""
    total = probs.new_zeros(probs.shape[1], *size)
    for window, (y1, y2, x1, x2) in zip(probs, boxes):
        total[:, y1:y2, x1:x2] += window
    return total.div_(count_map(boxes, size).to(total))  # window_grid leaves no pixel uncovered


@dataclass
class SlideViews:
    """The views of one image: windows in grid order, the global view (if any), then with flip the same of the
    mirrored image. `pixels` [V, 3, h', w'] padded to the U-Net multiple; `window` (h, w) before padding."""

    pixels: torch.Tensor
    boxes: list[tuple[int, int, int, int]]
    size: tuple[int, int]
    window: tuple[int, int]
    global_view: bool
    flip: bool

    @property
    def num_unique(self) -> int:
        """Views with their own noise (a view of the mirrored image reuses the noise of the same grid position)."""
        return len(self.boxes) + int(self.global_view)


def view_noise(views: SlideViews, member_shape: tuple[int, int, int], generator, index: int,
               device: torch.device, dtype: torch.dtype, deterministic: bool = False) -> torch.Tensor:
    """Starting noise of one image's views [V, E, C, h, w]: one draw per window (and global view) from `generator`
    (or generator[index]), reused by the mirrored image's views; zeros when `deterministic` (a one-step model).
    member_shape: (E, latent channels, VAE downsampling factor)."""
    ensemble_size, channels, factor = member_shape
    h, w = (s // factor for s in views.pixels.shape[-2:])
    if deterministic:
        return torch.zeros((len(views.pixels), ensemble_size, channels, h, w), device=device, dtype=dtype)
    gen = generator[index] if isinstance(generator, list) else generator
    noise = randn_tensor((views.num_unique, ensemble_size, channels, h, w), generator=gen, device=device, dtype=dtype)
    return torch.cat([noise, noise]) if views.flip else noise  # [V, E, C, h, w]


def make_views(image: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int], multiple: int,
               global_view: bool = False, flip: bool = False) -> SlideViews:
    """image [3, H, W] (already at the test scale) -> its views, padded for the U-Net."""
    size = (image.shape[-2], image.shape[-1])
    boxes = window_grid(*size, crop, stride)
    window = (boxes[0][1] - boxes[0][0], boxes[0][3] - boxes[0][2])

    def cut(picture: torch.Tensor) -> list[torch.Tensor]:
        views = [picture[:, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes]
        if global_view:
            views.append(F.interpolate(picture[None], size=window, mode="bilinear", antialias=True,
                                       align_corners=False)[0])
        return views

    pixels = pad_to_multiple(torch.stack(cut(image) + (cut(image.flip(-1)) if flip else [])), multiple)
    return SlideViews(pixels, boxes, size, window, global_view, flip)


def group_views(views: list[SlideViews], max_images: int) -> list[list[int]]:
    """Consecutive images whose views have the same shape, up to `max_images` per group (one U-Net batch)."""
    groups: list[list[int]] = []
    for i, v in enumerate(views):
        if groups and len(groups[-1]) < max_images and views[groups[-1][0]].pixels.shape[1:] == v.pixels.shape[1:]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def combine_views(views: SlideViews, probs: torch.Tensor) -> torch.Tensor:
    """The views' probabilities [V, K, h', w'] (padded) -> [K, H, W] over the image at the test scale."""
    probs = probs[:, :, : views.window[0], : views.window[1]]
    if views.flip:  # the mirrored image's result, flipped back, averaged with the image's
        plain, mirrored = probs.chunk(2)
        return (combine_views(replace(views, flip=False), plain)
                + combine_views(replace(views, flip=False), mirrored).flip(-1)) / 2
    combined = combine_windows(probs[: len(views.boxes)], views.boxes, views.size)
    if views.global_view:  # CAT-Seg: (windows + global view resized back) / 2
        whole = F.interpolate(probs[-1:], size=views.size, mode="bilinear", align_corners=False)[0]
        combined = (combined + whole) / 2
    return combined
