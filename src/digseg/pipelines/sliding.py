"""Sliding-window inference (mmsegmentation's `slide_inference` grid, `window_grid`): the views run through the
model and their probabilities averaged where they overlap, plus optionally CAT-Seg's global view (the whole image
resized to the window, averaged 50/50) and a horizontal flip whose views reuse the same noise. docs/eval_protocols.md.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

from .image_processing import pad_to_multiple
from .window_grid import window_grid


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
    """One image's views: windows in grid order, the global view (if any), then with flip the same of the mirrored
    image. `pixels` [V, 3, h', w'] padded (replicate) to the U-Net multiple; `window` (h, w) before padding."""

    pixels: torch.Tensor
    boxes: list[tuple[int, int, int, int]]
    size: tuple[int, int]
    window: tuple[int, int]
    global_view: bool
    flip: bool


def view_noise(views: SlideViews, member_shape: tuple[int, int, int], generator, index: int,
               device: torch.device, dtype: torch.dtype, deterministic: bool = False) -> torch.Tensor:
    """Starting noise of one image's views [V, E, C, h, w], member_shape (E, latent channels, VAE factor): one draw
    per window (and global view) from `generator` (or generator[index]); zeros when `deterministic` (one-step)."""
    ensemble_size, channels, factor = member_shape
    h, w = (s // factor for s in views.pixels.shape[-2:])
    if deterministic:
        return torch.zeros((len(views.pixels), ensemble_size, channels, h, w), device=device, dtype=dtype)
    gen = generator[index] if isinstance(generator, list) else generator
    unique = len(views.boxes) + int(views.global_view)  # the mirrored image's views reuse these
    noise = randn_tensor((unique, ensemble_size, channels, h, w), generator=gen, device=device, dtype=dtype)
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
