"""Training augmentation presets per dataset (docs/augmentation.md gives the table with reasons) and
`augmentation_for`, the lookup the trainer uses."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from ..errors import ConfigError
from .augment import Augmentation
from .hf_options import is_hf_dataset
from .splits import FOLDER_DATASET

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
    # fixed physical pixel size: native pixels (scale None) times the ratio; overhead and microscope views
    # have no "up", so vertical flips too; roads cover ~4% of a tile, so crop retries are off
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
    """The preset of `dataset_name`, then `crop_size` (an int: square), then `overrides` (a config's `augmentation:`
    section). `crop_size` also scales the preset's `scale` by the ratio of the short crop sides, so the crop keeps
    covering the same share of the image (ADE20K at crop 256: scale (1024, 256))."""
    if is_hf_dataset(dataset_name):
        dataset_name = FOLDER_DATASET
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
