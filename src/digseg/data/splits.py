"""How the `folder` dataset is split (docs/training.md): the first that applies of a split file, splits/<split>.txt,
images/<split>/ folders, and a flat folder's `is_held_out` images for val. A training list (`train_split_file=`) names
split train's images and is left out of the others. Imports no torch."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..errors import ConfigError

FOLDER_DATASET = "folder"  # the registered name of the reader these rules split
DEFAULT_VAL_FRACTION = 0.1  # share of a flat folder held out for val when no fraction is given
BY_SPLIT_FILE, BY_SPLIT_LISTS, BY_SPLIT_FOLDERS, BY_HASH = (  # the rules, in order, as a model's record names them
    "split file", "split lists", "split folders", "file-name hash")
HASH_RULE = "sha1-52"  # the flat folder's position of a stem, as a model's record names it


def is_held_out(stem: str, val_fraction: float) -> bool:
    """True when the image `stem` of a flat folder belongs to val at this fraction."""
    return int(hashlib.sha1(stem.encode("utf-8")).hexdigest()[:13], 16) / 16**13 < val_fraction  # 52 bits: exact


def split_options(dataset: str, val_fraction: float | None = None, split_file: str | Path | None = None,
                  train_split_file: str | Path | None = None) -> dict[str, Any]:
    """The given options for the folder reader; ConfigError for a bad fraction or combination, or another dataset."""
    options = {key: value for key, value in (("val_fraction", val_fraction), ("split_file", split_file),
                                             ("train_split_file", train_split_file)) if value is not None}
    if options and dataset != FOLDER_DATASET:
        raise ConfigError(f"--val-fraction and --split-file (data.val_fraction, data.split_file) choose the splits "
                          f"of the {FOLDER_DATASET} dataset; {dataset} has its own splits")
    if val_fraction is not None:
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction <= 1:
            raise ConfigError(f"the folder dataset's val fraction (--val-fraction, data.val_fraction) must be a "
                              f"number from 0 to 1, got {val_fraction!r}")
        if split_file is not None or train_split_file is not None:
            raise ConfigError(f"give --val-fraction or --split-file (data.val_fraction or data.split_file), not both: "
                              f"a split file chooses the images itself, and a training list's val is every image it "
                              f"does not name (fraction {val_fraction:g}, file {split_file or train_split_file})")
    if split_file is not None and train_split_file is not None:
        raise ConfigError(f"a split file ({split_file}) names the images of the split read, a training list "
                          f"({train_split_file}) those left out of every split but train: give one")
    return options
