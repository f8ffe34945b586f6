"""Labels and probabilities at the input's native size in bounded memory (847 classes x 683 x 512 x float32 = 1.2 GB):
labels by a chunked argmax equal to the full one, probabilities resized only for the `keep` classes with most pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PROBABILITY_CLASSES_KEPT = 16  # default number of classes whose native-size probabilities are returned
# classes resized to the native size at a time; a multiple of 8: torch's CPU bilinear kernel was seen to round
# differently (1e-7) for chunks of fewer than 8 channels, which can flip near-ties against the full argmax
ARGMAX_CHUNK = 32


def resize_probs(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[C, h, w] -> [C, *size], bilinear (unchanged when the size already matches)."""
    if tuple(probs.shape[-2:]) == tuple(size):
        return probs
    return F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]


def chunked_argmax(probs: torch.Tensor, size: tuple[int, int], excluded: torch.Tensor | None = None,
                   chunk: int = ARGMAX_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """probs [K, h, w] -> (labels [H, W] int64, best probability [H, W]) at `size`, `chunk` classes at a time;
    `excluded` [K] bool: classes that never win (scored -1, as pruned top-k classes are)."""
    best = labels = None
    for start in range(0, probs.shape[0], chunk):
        part = resize_probs(probs[start : start + chunk], size)  # [c, H, W]
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
        full = resize_probs(probs, size)
        return (full[1] > threshold).long(), full, torch.arange(k)
    labels, best = chunked_argmax(probs, size, excluded)
    if mode == "per_class" and no_class_threshold is not None:
        labels[best < no_class_threshold] = 255
    ids = torch.arange(k) if keep is None or keep >= k else best_classes(labels, probs, keep)
    return labels, resize_probs(probs[ids] if len(ids) < k else probs, size), ids

