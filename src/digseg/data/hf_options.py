"""The options of `--dataset hf:NAME_OR_PATH` (`digseg.data.hf` reads such datasets): which columns, splits, class
names and label conventions, set by `DataConfig` fields and flags of the same names. This module imports neither
torch nor `datasets`: the command line and the training config read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

HF_PREFIX = "hf:"
INSTALL_HINT = 'pip install -e ".[hf]"'
SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val", "valid"), "test": ("test",)}  # first present


def is_hf_dataset(name: str) -> bool:
    return str(name).startswith(HF_PREFIX)


@dataclass(frozen=True)
class HFOptions:
    """How to read an hf: dataset; each field is the `DataConfig` field `CONFIG_FIELDS` names."""

    image_column: str = "image"
    label_column: str = "label"
    split: str | None = None  # the dataset's split to read; None: the one SPLIT_NAMES maps the digseg split to
    classes_file: str | None = None
    ignore_index: int = 255  # the stored label value of unlabelled pixels
    reduce_zero_label: bool = False


# HFOptions field -> the DataConfig field (and, with dashes, the flag) that sets it; a training run reads its
# validation split as `hf_val_split` says
CONFIG_FIELDS = {"image_column": "hf_image_column", "label_column": "hf_label_column", "split": "hf_split",
                 "classes_file": "hf_classes_file", "ignore_index": "ignore_index",
                 "reduce_zero_label": "reduce_zero_label"}
VAL_SPLIT_FIELD = "hf_val_split"


def hf_options(dataset: str, val: bool = False, **given: Any) -> HFOptions | None:
    """The options of an hf: dataset from `given` ({DataConfig field: value}, None = the default), for its training
    split or with `val` its validation split; None for another dataset. ConfigError for an option given with another
    dataset, or an ignore index outside 0..65535."""
    unknown = set(given) - {*CONFIG_FIELDS.values(), VAL_SPLIT_FIELD}
    if unknown:
        raise TypeError(f"unknown hf option(s) {sorted(unknown)}")
    given = {key: value for key, value in given.items() if value is not None}
    if not is_hf_dataset(dataset):
        if given:
            named = ", ".join(f"--{key.replace('_', '-')} (data.{key})" for key in given)
            raise ConfigError(f"{named} set how an {HF_PREFIX} dataset is read; {dataset} has its own layout and labels")
        return None
    value = given.get("ignore_index")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535):
        raise ConfigError(f"--ignore-index (data.ignore_index) must be a label value from 0 to 65535, got {value!r}")
    val_split = given.pop(VAL_SPLIT_FIELD, None)
    if val:
        given.pop(CONFIG_FIELDS["split"], None)
        if val_split is not None:
            given[CONFIG_FIELDS["split"]] = val_split
    by_config = {config: option for option, config in CONFIG_FIELDS.items()}
    return HFOptions(**{by_config[key]: value for key, value in given.items()})
