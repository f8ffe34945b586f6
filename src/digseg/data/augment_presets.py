"""Training augmentation presets per dataset (registry name -> `Augmentation`), and the lookup the trainer uses:

    aug = augmentation_for("ade20k-150", crop_size=(256, 256), overrides=config_section)

Rules behind the presets (the table with reasons is in docs/augmentation.md):
- Photographs follow mmsegmentation's dataset configs: scale (2048, 512) with crop 512 (ADE20K, COCO-Stuff),
  (2048, 1024) with crop 512x1024 (Cityscapes), ratio 0.5-2.0, cat_max_ratio 0.75, flip, photometric.
- hf: datasets (`digseg.data.hf`) get the preset of a user's own photographs, "folder"'s.
- Data with a fixed physical pixel size (satellite ground sampling, microscope magnification, a camera at
  a fixed height) keep their native pixels (`scale=None`) times the 0.5-2.0 ratio, and flip vertically too
  when there is no "up" (overhead and microscope views).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from ..errors import ConfigError
from .augment import Augmentation
from .hf_options import is_hf_dataset
from .splits import FOLDER_DATASET

_ADE = Augmentation(scale=(2048, 512), ratio_range=(0.5, 2.0), crop_size=(512, 512))
_CITYSCAPES = Augmentation(scale=(2048, 1024), ratio_range=(0.5, 2.0), crop_size=(512, 1024))

AUGMENT_PRESETS: dict[str, Augmentation] = {
    # mmseg configs/_base_/datasets/ade20k.py
    "ade20k-150": _ADE,
    # same images as ade20k-150 (the 847-class labels are mostly an evaluation set)
    "ade20k-847": _ADE,
    # mmseg configs/_base_/datasets/coco-stuff164k.py
    "coco-stuff-171": _ADE,
    # DESIGN.md: the ADE20K recipe for every open-vocabulary set (mmseg's pascal_context_59.py: (520, 520) / 480)
    "pascal-context-59": _ADE,
    "pascal-context-459": _ADE,
    # mmseg configs/_base_/datasets/cityscapes.py
    "cityscapes": _CITYSCAPES,
    # Cityscapes' recipe for its 19 trainIds; 1280x720 frames become 1820x1024 at ratio 1
    "bdd100k": _CITYSCAPES,
    # 1024x1024 satellite tiles at 50 cm/px: native pixels; roads cover ~4% of a tile, so a 0.75 cap on
    # the background is rarely met and retries are off; overhead view, so vertical flips too
    "deepglobe-roads": Augmentation(scale=None, crop_size=(512, 512), cat_max_ratio=1.0, vflip_prob=0.5),
    # 1000x1000 H&E tiles at 40x: native pixels (nuclei ~20-40 px); the 0.75 cap favours nucleus-dense
    # crops; a microscope slide has no up, so vertical flips too
    "monuseg": Augmentation(scale=None, crop_size=(512, 512), vflip_prob=0.5),
    # mmseg configs/_base_/datasets/refuge.py (train scale (2056, 2124) = the 2124x2056 Zeiss images)
    "refuge2": Augmentation(scale=(2124, 2056), crop_size=(512, 512)),
    # 1024x1024 field images from a fixed camera height: native pixels, top-down view so vertical flips too
    "phenobench": Augmentation(scale=None, crop_size=(512, 512), vflip_prob=0.5),
    # a user's own photographs: the ADE20K recipe (override per config when the data differ)
    "folder": _ADE,
    # 64 px scenes: the scene size, so shapes appear at 0.5x-2x; no photometric distortion, since colour
    # tells the shape kinds apart (synthetic.py) and a +-36 degree hue shift moves yellow circles into
    # the range of green squares
    "synthetic": Augmentation(scale=(64, 64), crop_size=(64, 64), photometric=False),
}


def augmentation_for(dataset_name: str, crop_size: tuple[int, int] | int | None = None,
                     overrides: Mapping[str, Any] | bool | None = None) -> Augmentation:
    """The preset of `dataset_name`, then `crop_size`, then a config's `augmentation:` section on top.

    `crop_size` (the trainer's resolution; an int means square) also multiplies the preset's `scale` by the
    ratio of the short crop sides, so the crop keeps covering the same share of the image (e.g. ADE20K at
    crop 256: scale (1024, 256)). An explicit `scale` or `crop_size` in `overrides` wins over both."""
    if is_hf_dataset(dataset_name):
        dataset_name = FOLDER_DATASET
    if dataset_name not in AUGMENT_PRESETS:
        raise ConfigError(f"no augmentation preset for dataset {dataset_name!r}; "
                          f"known: {', '.join(sorted(AUGMENT_PRESETS))}")
    aug = AUGMENT_PRESETS[dataset_name]
    if crop_size is not None:
        crop = (crop_size, crop_size) if isinstance(crop_size, int) and not isinstance(crop_size, bool) else crop_size
        resized = dataclasses.replace(aug, crop_size=crop)  # validates crop
        if aug.scale is not None:
            factor = min(resized.crop_size) / min(aug.crop_size)
            scale = (max(1, round(aug.scale[0] * factor)), max(1, round(aug.scale[1] * factor)))
            resized = dataclasses.replace(resized, scale=scale)
        aug = resized
    return Augmentation.from_dict(overrides, base=aug)
