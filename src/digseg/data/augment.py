"""Training augmentation as mmsegmentation does it (docs/augmentation.md): RandomResize (keep ratio) -> RandomCrop with
`cat_max_ratio` retries -> flips -> PhotoMetricDistortion -> pad. Each sample draws NUM_DRAWS uniforms, each with a
fixed role (`_U_*`), so a step turned off or another sample's draws never change a sample's geometry."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import ConfigError
from .hf_options import is_hf_dataset
from .io import image_to_tensor
from .rescale import rescale_size
from .splits import FOLDER_DATASET

IMAGE_PAD_VALUE = 0.0  # mid-grey in the [-1, 1] output, as mmseg pads with the mean after normalising
CROP_TRIES = 10  # mmseg RandomCrop: candidates checked against cat_max_ratio before taking the next one blindly

# Layout of the uniform draws u[0..NUM_DRAWS) of one sample: crop candidate k's (y, x) at _U_CROP + 2k, _U_CROP + 2k + 1
_U_RATIO, _U_CROP = 0, 1
(_U_FLIP, _U_VFLIP, _U_BRIGHT, _U_BRIGHT_DELTA, _U_CONTRAST_FIRST, _U_CONTRAST, _U_CONTRAST_ALPHA, _U_SAT, _U_SAT_ALPHA,
 _U_HUE, _U_HUE_DELTA) = range(_U_CROP + 2 * (CROP_TRIES + 1), _U_CROP + 2 * (CROP_TRIES + 1) + 11)
NUM_DRAWS = _U_HUE_DELTA + 1

# mmseg PhotoMetricDistortion defaults; the hue delta in OpenCV units (0..180 for 360 degrees)
BRIGHTNESS_DELTA, CONTRAST_RANGE, SATURATION_RANGE, HUE_DELTA = 32.0, (0.5, 1.5), (0.5, 1.5), 18


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_pair(value: Any, item: type = object) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(
        _is_number(v) and isinstance(v, item) and v > 0 for v in value)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Per-sample training transforms in mmsegmentation's vocabulary; `enabled=False` squashes to `crop_size`."""

    scale: tuple[int, int] | None = (2048, 512)  # keep-ratio (long side cap, short side); None: native pixel size
    ratio_range: tuple[float, float] | None = (0.5, 2.0)  # factor on `scale` drawn per sample; None: exactly `scale`
    crop_size: tuple[int, int] = (512, 512)  # (height, width) of every output sample
    cat_max_ratio: float = 0.75  # crop retries while the most frequent class's share is above it; 1.0: none
    flip_prob: float = 0.5
    vflip_prob: float = 0.0
    photometric: bool = True
    enabled: bool = True

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, kind: str, convert: Any = float) -> None:
            value = getattr(self, name)
            if not ok:
                raise ConfigError(f"augmentation {name} must be {kind}, got {value!r}")
            object.__setattr__(self, name, convert(value))  # frozen dataclass

        ints = "two positive integers"
        check("scale", self.scale is None or _is_pair(self.scale, int), ints + " or null", lambda v: v and tuple(v))
        check("crop_size", _is_pair(self.crop_size, int), ints, tuple)
        ratio = self.ratio_range
        check("ratio_range", ratio is None or (_is_pair(ratio) and ratio[0] <= ratio[1]),
              "(low, high) with 0 < low <= high, or null", lambda v: v and (float(v[0]), float(v[1])))
        check("cat_max_ratio", _is_number(self.cat_max_ratio) and 0 < self.cat_max_ratio <= 1, "a number in (0.0, 1.0]")
        for name in ("flip_prob", "vflip_prob"):
            check(name, _is_number(getattr(self, name)) and 0 <= getattr(self, name) <= 1, "a number in [0.0, 1.0]")
        for name in ("photometric", "enabled"):
            check(name, isinstance(getattr(self, name), bool), "true or false", bool)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (pairs as lists), as a config file's `augmentation:` section holds them."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | bool | None, base: "Augmentation | None" = None) -> "Augmentation":
        """`base` (default `Augmentation()`) with `values` overriding it; False: off, True or None: `base`."""
        base = base if base is not None else cls()
        if values is None or values is True:
            return base
        if values is False:
            return dataclasses.replace(base, enabled=False)
        if not isinstance(values, Mapping):
            raise ConfigError(f"augmentation must be a mapping of settings, true or false, got {values!r}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown augmentation key(s): {', '.join(map(str, unknown))}; valid: {', '.join(known)}")
        return dataclasses.replace(base, **dict(values))


def _label_window(label: np.ndarray, new_hw: tuple[int, int], top: int, left: int, hw: tuple[int, int]) -> np.ndarray:
    """Window [h, w] at (top, left) of `label` [H, W] resized (nearest) to new_hw, without resizing the rest."""
    window = label
    for axis, start in ((0, top), (1, left)):  # rows first: whole-row copies
        size = label.shape[axis]
        centres = (np.arange(start, start + hw[axis], dtype=np.float64) + 0.5) * (size / new_hw[axis])
        window = np.take(window, np.minimum(centres.astype(np.int64), size - 1), axis=axis)
    return window


def _crop_ok(window: np.ndarray, cat_max_ratio: float, ignore_index: int) -> bool:
    """mmseg's test: >= 2 classes among labelled pixels and the largest covers < cat_max_ratio of them."""
    values = window[window != ignore_index]
    if values.size == 0:
        return False
    counts = np.bincount(values) if values.min() >= 0 else np.unique(values, return_counts=True)[1]
    counts = counts[counts > 0]
    return len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio


def _lut(alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """uint8 lookup table of v -> uint8(clip(v * alpha + beta, 0, 255)), mmseg's `convert`."""
    return np.clip(np.arange(256, dtype=np.float32) * np.float32(alpha) + np.float32(beta), 0, 255).astype(np.uint8)


def photometric_distortion(image: Image.Image, u: np.ndarray) -> Image.Image:
    """mmseg PhotoMetricDistortion on an RGB image, driven by the draws u[_U_BRIGHT.._U_HUE_DELTA]."""
    identity = np.arange(256, dtype=np.uint8)
    rgb = _lut(beta=(2.0 * u[_U_BRIGHT_DELTA] - 1.0) * BRIGHTNESS_DELTA) if u[_U_BRIGHT] < 0.5 else identity
    low, high = CONTRAST_RANGE
    contrast = _lut(alpha=low + u[_U_CONTRAST_ALPHA] * (high - low)) if u[_U_CONTRAST] < 0.5 else None
    contrast_first = u[_U_CONTRAST_FIRST] < 0.5
    if contrast is not None and contrast_first:
        rgb = contrast[rgb]  # composed tables: each step still clips and truncates to uint8, as mmseg
    if rgb is not identity:
        image = image.point(np.tile(rgb, 3).tolist())
    if u[_U_SAT] < 0.5 or u[_U_HUE] < 0.5:
        h, s, v = image.convert("HSV").split()
        if u[_U_SAT] < 0.5:
            lo, hi = SATURATION_RANGE
            s = s.point(_lut(alpha=lo + u[_U_SAT_ALPHA] * (hi - lo)).tolist())
        if u[_U_HUE] < 0.5:
            delta = min(int(u[_U_HUE_DELTA] * (2 * HUE_DELTA + 1)), 2 * HUE_DELTA) - HUE_DELTA  # -18..18
            shift = round(delta * 255 / 180)  # PIL hue: 0..255 for 360 degrees; OpenCV: 0..180
            h = h.point(((np.arange(256) + shift) % 255).tolist())
        image = Image.merge("HSV", (h, s, v)).convert("RGB")
    if contrast is not None and not contrast_first:
        image = image.point(np.tile(contrast, 3).tolist())
    return image


def apply_augmentation(image: Image.Image, label: np.ndarray, aug: Augmentation, gen: torch.Generator,
                       ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB image + int label [H, W] of one size -> (float32 [3, h, w] in [-1, 1], int64 [h, w]), (h, w) the crop
    size. Draws exactly NUM_DRAWS values from `gen` when enabled, none when disabled."""
    label = np.asarray(label).astype(np.int64, copy=False)
    crop_h, crop_w = aug.crop_size
    if not aug.enabled:  # the plain squash to the crop, deterministic
        window = _label_window(label, (crop_h, crop_w), 0, 0, (crop_h, crop_w))
        pixels = image_to_tensor(image.resize((crop_w, crop_h), Image.BILINEAR))
        return pixels, torch.from_numpy(np.ascontiguousarray(window))

    u = torch.rand(NUM_DRAWS, generator=gen, dtype=torch.float64).numpy()
    low, high = aug.ratio_range or (1.0, 1.0)
    ratio = low + float(u[_U_RATIO]) * (high - low)
    if aug.scale is None:
        new_w, new_h = max(1, int(image.width * ratio + 0.5)), max(1, int(image.height * ratio + 0.5))
    else:
        new_w, new_h = rescale_size(image.width, image.height, (int(aug.scale[0] * ratio), int(aug.scale[1] * ratio)))
    hw = (min(crop_h, new_h), min(crop_w, new_w))  # a side shorter than the crop is taken whole, then padded
    margin_h, margin_w = new_h - hw[0], new_w - hw[1]
    tries = CROP_TRIES if aug.cat_max_ratio < 1.0 else 0
    for k in range(tries + 1):  # the first crop candidate that `_crop_ok`, else the last
        top = min(int(u[_U_CROP + 2 * k] * (margin_h + 1)), margin_h)
        left = min(int(u[_U_CROP + 2 * k + 1] * (margin_w + 1)), margin_w)
        window = _label_window(label, (new_h, new_w), top, left, hw)
        if k == tries or _crop_ok(window, aug.cat_max_ratio, ignore_index):
            break
    if (new_h, new_w) == (image.height, image.width):
        crop = image.crop((left, top, left + hw[1], top + hw[0]))
    else:  # only the window of the image resized to (new_h, new_w) is resampled (BILINEAR, antialiased)
        sy, sx = image.height / new_h, image.width / new_w
        box = (left * sx, top * sy, (left + hw[1]) * sx, (top + hw[0]) * sy)
        crop = image.resize((hw[1], hw[0]), Image.BILINEAR, box=box)
    if u[_U_FLIP] < aug.flip_prob:
        crop, window = crop.transpose(Image.FLIP_LEFT_RIGHT), window[:, ::-1]
    if u[_U_VFLIP] < aug.vflip_prob:
        crop, window = crop.transpose(Image.FLIP_TOP_BOTTOM), window[::-1, :]
    if aug.photometric:
        crop = photometric_distortion(crop, u)

    pixels, target = image_to_tensor(crop), torch.from_numpy(np.ascontiguousarray(window))  # [3, h', w'], [h', w']
    if hw != (crop_h, crop_w):  # mmseg Pad: bottom and right
        pad = (0, crop_w - hw[1], 0, crop_h - hw[0])
        pixels, target = F.pad(pixels, pad, value=IMAGE_PAD_VALUE), F.pad(target, pad, value=ignore_index)
    return pixels, target


_ADE = Augmentation(scale=(2048, 512), ratio_range=(0.5, 2.0), crop_size=(512, 512))
_CITYSCAPES = Augmentation(scale=(2048, 1024), ratio_range=(0.5, 2.0), crop_size=(512, 1024))

AUGMENT_PRESETS: dict[str, Augmentation] = {  # mmseg configs/_base_/datasets/<name>.py where it has one
    "ade20k-150": _ADE,
    "ade20k-847": _ADE,
    "coco-stuff-171": _ADE,
    "pascal-context-59": _ADE,  # DESIGN.md: the ADE20K recipe for every open-vocabulary set
    "pascal-context-459": _ADE,
    "cityscapes": _CITYSCAPES,
    "bdd100k": _CITYSCAPES,  # the same 19 trainIds
    # native pixels (a fixed physical size); top views have no "up": vertical flips; roads are ~4%: no crop retries
    "deepglobe-roads": Augmentation(scale=None, crop_size=(512, 512), cat_max_ratio=1.0, vflip_prob=0.5),
    "monuseg": Augmentation(scale=None, crop_size=(512, 512), vflip_prob=0.5),
    "refuge2": Augmentation(scale=(2124, 2056), crop_size=(512, 512)),  # the 2124x2056 Zeiss images
    "phenobench": Augmentation(scale=None, crop_size=(512, 512), vflip_prob=0.5),
    "folder": _ADE,  # a user's own photographs; hf: datasets get this preset too
    # no photometric distortion: colour tells the shape kinds apart (synthetic.py)
    "synthetic": Augmentation(scale=(64, 64), crop_size=(64, 64), photometric=False),
}


def augmentation_for(dataset_name: str, crop_size: tuple[int, int] | int | None = None,
                     overrides: Mapping[str, Any] | bool | None = None) -> Augmentation:
    """The preset of `dataset_name` at `crop_size` (an int: square; its scale scaled alike), then `overrides`."""
    dataset_name = FOLDER_DATASET if is_hf_dataset(dataset_name) else dataset_name
    if dataset_name not in AUGMENT_PRESETS:
        raise ConfigError(f"no augmentation preset for dataset {dataset_name!r}; "
                          f"known: {', '.join(sorted(AUGMENT_PRESETS))}")
    aug = AUGMENT_PRESETS[dataset_name]
    if crop_size is not None:
        crop = (crop_size, crop_size) if isinstance(crop_size, int) and not isinstance(crop_size, bool) else crop_size
        resized = dataclasses.replace(aug, crop_size=crop)  # validates crop
        factor = min(resized.crop_size) / min(aug.crop_size)
        aug = resized if aug.scale is None else dataclasses.replace(
            resized, scale=(max(1, round(aug.scale[0] * factor)), max(1, round(aug.scale[1] * factor))))
    return Augmentation.from_dict(overrides, base=aug)
