"""The test protocol's geometry, torch-free (shared with `digseg.runtime`): the size an image is processed at
(mmseg's test resize), the sliding-window settings and mmsegmentation's window grid."""

from __future__ import annotations

from ..data.rescale import rescale_size
from ..errors import DigsegError

INFERENCE_MODES = ("whole", "slide")  # the whole image, or sliding windows (sliding.py)


def processed_size(height: int, width: int, resolution: int, scale: tuple[int, int] | None = None,
                   keep_ratio: bool = True) -> tuple[int, int]:
    """(h, w) the model sees: the longer side resized to `resolution` (0: the native size), or with `scale` mmseg's
    test resize (mmcv `rescale_size` with keep_ratio, else exactly (width, height) = scale, CAT-Seg's 640 x 640)."""
    if scale is not None:
        if not keep_ratio:
            return int(scale[1]), int(scale[0])
        new_width, new_height = rescale_size(width, height, scale)
        return new_height, new_width
    if resolution <= 0:
        return height, width
    factor = resolution / max(height, width)
    return max(1, round(height * factor)), max(1, round(width * factor))


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

