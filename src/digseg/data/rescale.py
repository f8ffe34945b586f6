"""mmcv's keep-ratio rescale rule in plain Python, for the test resize and training's random resize."""

from __future__ import annotations


def rescale_size(width: int, height: int, scale: tuple[int, int]) -> tuple[int, int]:
    """(new_width, new_height) fitting `scale` = (long cap, short side) with the aspect ratio kept."""
    factor = min(max(scale) / max(width, height), min(scale) / min(width, height))
    return max(1, int(width * factor + 0.5)), max(1, int(height * factor + 0.5))
