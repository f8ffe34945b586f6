"""The options of `--dataset hf:NAME_OR_PATH` (`HFOptions`), given as the training config's `data.hf` mapping or as
`--hf KEY=VALUE`. Imports neither torch nor `datasets`: the command line and the training config read it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import yaml

from ..errors import ConfigError

HF_PREFIX = "hf:"
INSTALL_HINT = 'pip install -e ".[hf]"'
SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val", "valid"), "test": ("test",)}  # first present


def is_hf_dataset(name: str) -> bool:
    return str(name).startswith(HF_PREFIX)


@dataclasses.dataclass(frozen=True)
class HFOptions:
    """How to read an hf: dataset (docs/data.md)."""

    image_column: str = "image"
    label_column: str = "label"
    # the dataset's splits read as digseg's train and val splits (None: the first present of SPLIT_NAMES)
    train_split: str | None = None
    val_split: str | None = None
    classes_file: str | None = None  # class names, one per line (None: the label column's or a file beside the data)
    ignore_index: int = 255  # the stored label value of unlabelled pixels
    reduce_zero_label: bool = False  # mmsegmentation's: stored 0 is unlabelled and v becomes v - 1


FIELDS = tuple(f.name for f in dataclasses.fields(HFOptions))


def hf_options(dataset: str, given: Mapping[str, Any] | None, where: str = "data.hf") -> HFOptions | None:
    """HFOptions from `given` ({field: value}; `where` in errors), None for another dataset; ConfigError if invalid."""
    given = dict(given or {})
    if not is_hf_dataset(dataset):
        if given:
            raise ConfigError(f"{where} ({', '.join(given)}) sets how an {HF_PREFIX} dataset is read; {dataset} has "
                              "its own layout and labels")
        return None
    unknown = sorted(set(given) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    for name, value in given.items():
        if name == "ignore_index":
            ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535
            kind = "a label value from 0 to 65535"
        elif name == "reduce_zero_label":
            ok, kind = isinstance(value, bool), "true or false"
        else:  # a column, a split, a file: text (a split or the class file may also be left at None)
            ok, kind = isinstance(value, str) or (value is None and not name.endswith("_column")), "a name"
        if not ok:
            raise ConfigError(f"{where}: {name} must be {kind}, got {value!r}")
    return HFOptions(**given)


def parse_hf_pairs(items: list[str] | None) -> dict[str, Any]:
    """`--hf KEY=VALUE ...` -> {KEY: VALUE}: YAML for `ignore_index` and `reduce_zero_label`, text for names."""
    given: dict[str, Any] = {}
    for item in items or []:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"--hf takes KEY=VALUE, got {item!r} (e.g. label_column=mask; keys: {', '.join(FIELDS)})")
        try:
            given[key] = yaml.safe_load(text) if key in ("ignore_index", "reduce_zero_label") else text
        except yaml.YAMLError as exc:
            raise ConfigError(f"--hf {item}: cannot read the value: {exc}") from exc
    return given
