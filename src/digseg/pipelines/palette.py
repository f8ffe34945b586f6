"""The palette that renders K classes as colours (`MaskCodec`'s palette mode), in numpy only: the onnxruntime
pipeline (`digseg.runtime.pipeline`) reads masks with the same colours without importing torch."""

from __future__ import annotations

import numpy as np


def make_palette(num_classes: int) -> np.ndarray:
    """Fixed, well-separated colours for ``num_classes`` classes: uint8 ``[K, 3]``, by farthest-point sampling over
    the smallest ``n x n x n`` RGB grid (n >= 2) with ``n**3 >= K``, from black, ties to the lowest grid index
    (deterministic). K == 2: black, white."""
    k = int(num_classes)
    if k < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    n = 2
    while n**3 < k:
        n += 1
    levels = np.rint(np.linspace(0.0, 255.0, n)).astype(np.int64)
    r, g, b = np.meshgrid(levels, levels, levels, indexing="ij")
    grid = np.stack([r.ravel(), g.ravel(), b.ravel()], axis=1)  # [n^3, 3], index 0 = black
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = 0
    min_d2 = ((grid - grid[0]) ** 2).sum(axis=1)  # [n^3] squared distance to the chosen set
    for i in range(1, k):
        j = int(np.argmax(min_d2))  # first maximum -> lowest index on ties
        chosen[i] = j
        np.minimum(min_d2, ((grid - grid[j]) ** 2).sum(axis=1), out=min_d2)
    return grid[chosen].astype(np.uint8)
