"""Test helpers: a TrainConfig from flat keys, and the trainer `build_run` makes from it."""

from __future__ import annotations

import dataclasses

from digseg.training.config import SECTIONS, TrainConfig
from digseg.training.run import build_run

_SECTION_OF = {f.name: section for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


def train_config(**flat) -> TrainConfig:
    """Flat keys, each put in its section; `resolution=N` is a square crop. Augmentation is off unless given
    (most tests check the trainer on fixed samples)."""
    if "resolution" in flat:
        flat["crop_size"] = flat.pop("resolution")
    flat.setdefault("augmentation", False)
    values: dict[str, dict] = {}
    for key, value in flat.items():
        values.setdefault(_SECTION_OF[key], {})[key] = value
    return TrainConfig.from_dict(values)


def trainer(config: TrainConfig, pipe, dataset, **kwargs):
    """`build_run` over a given pipeline and dataset."""
    return build_run(config, pipe=pipe, dataset=dataset, **kwargs)
