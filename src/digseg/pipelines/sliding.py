"""Tensor inputs; sliding-window inference (mmseg's `slide_inference` grid, `window_grid`; CAT-Seg's global view
averaged 50/50; a flip whose views reuse the same noise: docs/eval_protocols.md), then labels and probabilities at
the native size in bounded memory (847 classes x 683 x 512 x float32 = 1.2 GB): a chunked argmax equal to the full
one, and probabilities resized only for the `keep` classes with most pixels."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data.io import load_image
from ..errors import DigsegError
from .common import PROBABILITY_CLASSES_KEPT, each_image, image_array


def to_image_list(images: Any) -> list[torch.Tensor]:
    """`common.to_image_list`'s inputs (paths read by `load_image`) and torch tensors [3, H, W] or [N, 3, H, W] in
    [0, 1] -> N x [3, H, W] float tensors in [-1, 1]."""
    return each_image(list(images) if isinstance(images, torch.Tensor) and images.ndim == 4 else images, _from_any)


def _from_any(image: Any) -> torch.Tensor:
    if isinstance(image, (str, os.PathLike)):
        image = load_image(Path(image), exif_transpose=True)
    if not (isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] == 3):
        return torch.from_numpy(image_array(image))
    if not torch.isfinite(image).all():
        raise DigsegError("image contains NaN or infinite values")
    lo, hi = float(image.min()), float(image.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise DigsegError(f"float images must have values in [0, 1], got [{lo:.3g}, {hi:.3g}]")
    return image.float() * 2 - 1


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


def make_views(image: torch.Tensor, boxes: list[tuple[int, int, int, int]], multiple: int, global_view: bool = False,
               flip: bool = False) -> SlideViews:
    """image [3, H, W] (already at the test scale) and its `window_grid` -> its views, padded for the U-Net."""
    size = (image.shape[-2], image.shape[-1])
    window = (boxes[0][1] - boxes[0][0], boxes[0][3] - boxes[0][2])

    def cut(picture: torch.Tensor) -> list[torch.Tensor]:
        views = [picture[:, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes]
        return views + [resize(picture, window, antialias=True)] if global_view else views

    pixels = torch.stack(cut(image) + (cut(image.flip(-1)) if flip else []))  # [V, 3, h, w]
    pad = (0, -window[1] % multiple, 0, -window[0] % multiple)  # replicated border, bottom and right
    pixels = F.pad(pixels, pad, mode="replicate") if any(pad) else pixels  # no copy when none is needed
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
        combined = (combined + resize(probs[-1], views.size)) / 2
    return combined


# classes resized to the native size at a time; a multiple of 8: torch's CPU bilinear kernel was seen to round
# differently (1e-7) for chunks of fewer than 8 channels, which can flip near-ties against the full argmax
ARGMAX_CHUNK = 32


def resize(x: torch.Tensor, size: tuple[int, int], antialias: bool = False) -> torch.Tensor:
    """[C, h, w] -> [C, *size], bilinear, with `antialias` PIL's triangle filter when shrinking (unchanged when the
    size already matches)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x[None], size=size, mode="bilinear", antialias=antialias, align_corners=False)[0]


def chunked_argmax(probs: torch.Tensor, size: tuple[int, int], excluded: torch.Tensor | None = None,
                   chunk: int = ARGMAX_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """probs [K, h, w] -> (labels [H, W] int64, best probability [H, W]) at `size`, `chunk` classes at a time;
    `excluded` [K] bool: classes that never win (scored -1, as pruned top-k classes are)."""
    best = labels = None
    for start in range(0, probs.shape[0], chunk):
        part = resize(probs[start : start + chunk], size)  # [c, H, W]
        if excluded is not None and bool(excluded[start : start + chunk].any()):
            part = part.masked_fill(excluded[start : start + chunk, None, None], -1.0)
        value, index = part.max(dim=0)  # first maximum within the chunk
        if best is None:
            best, labels = value, index
        else:
            better = value > best  # strictly: an earlier chunk keeps its ties
            best = torch.where(better, value, best)
            labels = torch.where(better, index + start, labels)
    return labels.long(), best


def best_classes(labels: torch.Tensor, probs: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` classes with most pixels in `labels` [H, W] (ties: higher peak in `probs` [K, h, w]), ascending."""
    k = probs.shape[0]
    pixels = torch.bincount(labels[labels < k].reshape(-1), minlength=k).double()  # [K]
    peak = probs.reshape(k, -1).amax(dim=1).double().clamp(0, 1)  # [K] in [0, 1]: orders classes with no pixels
    return torch.sort((pixels + peak / 2).topk(count).indices).values


def native_outputs(probs: torch.Tensor, size: tuple[int, int], mode: str, threshold: float = 0.5,
                   no_class_threshold: float | None = None, excluded: torch.Tensor | None = None,
                   keep: int | None = PROBABILITY_CLASSES_KEPT) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image's probabilities [K, h, w] (padding removed) -> at `size`: (labels [H, W] int64, probabilities
    [n, H, W] of the classes `ids` [n], ascending; n = K when `keep` is None). Binary: foreground > `threshold`;
    else the chunked argmax, per-class mode labelling 255 where the best score is below `no_class_threshold`."""
    k = probs.shape[0]
    if mode == "binary":
        full = resize(probs, size)
        return (full[1] > threshold).long(), full, torch.arange(k)
    labels, best = chunked_argmax(probs, size, excluded)
    if mode == "per_class" and no_class_threshold is not None:
        labels[best < no_class_threshold] = 255
    ids = torch.arange(k) if keep is None or keep >= k else best_classes(labels, probs, keep)
    return labels, resize(probs[ids] if len(ids) < k else probs, size), ids

