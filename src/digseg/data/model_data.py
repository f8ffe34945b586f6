"""A trained model's `training_data` record (model_index.json): what it was trained and validated on, read by `digseg
eval` (the default split, and overlap warnings), `train-mask-decoder` and the model card. Imports no torch."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import DigsegError
from .hf_options import hf_options, is_hf_dataset
from .splits import BY_HASH, BY_SPLIT_FILE, BY_SPLIT_FOLDERS, BY_SPLIT_LISTS, FOLDER_DATASET, HASH_RULE

TRAINING_DATA_KEY = "training_data"  # the pipeline config's field (model_index.json)
EVAL_SPLIT_FLAGS = ("val_fraction", "split_file", "hf")  # `digseg eval` dests that override the model's split rule


def _absolute(path: str | Path) -> str:
    return str(Path(path).expanduser().resolve())


@dataclasses.dataclass(frozen=True)
class TrainingDataRecord:
    """A model's record of its training data (JSON; fields that do not apply left out)."""

    dataset: str  # the name given to --dataset: "folder", a reader such as "cityscapes", "hf:NAME", "synthetic"
    data_root: str | None = None  # the data's root folder, absolute (datasets read from a folder)
    split_rule: str | None = None  # folder: the rule that chose the training images (one of `splits.BY_*`)
    val_fraction: float | None = None  # folder, rule "file-name hash": the share held out for val
    hash: str | None = None  # that rule's position of a stem (`splits.HASH_RULE`)
    split_file: str | None = None  # folder, rule "split file": the training list, absolute
    hf: dict[str, Any] | None = None  # hf: the reader options given for training ({HFOptions field: value})
    hf_split: str | None = None  # hf: the dataset's split trained on
    num_scenes: int | None = None  # synthetic: the scenes trained on (scene i depends on (seed, i))
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrainingDataRecord | None:
        """The record under `TRAINING_DATA_KEY` of a config, unknown fields skipped; None when there is none."""
        value = config.get(TRAINING_DATA_KEY) if isinstance(config, Mapping) else None
        if not isinstance(value, Mapping) or not isinstance(value.get("dataset"), str):
            return None
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: item for key, item in value.items() if key in known})

    def same_data(self, dataset: str | None, data_root: str | None) -> bool:
        """True when `dataset` at `data_root` is the data the model was trained on (same name, same folder)."""
        return dataset == self.dataset and (_absolute(data_root) if data_root else None) == self.data_root

    def split_options(self) -> dict[str, Any]:
        """The folder reader's keyword arguments that rebuild the model's splits; {} for other datasets."""
        if self.split_rule == BY_HASH and self.val_fraction is not None:
            return {"val_fraction": self.val_fraction}
        if self.split_rule == BY_SPLIT_FILE and self.split_file:
            return {"train_split_file": self.split_file}
        return {}

    def default_reader(self, dataset: str, data_root: str | None, given: Mapping[str, Any]) -> dict[str, Any]:
        """The model's split rule as reader options on its own data when `given` sets no split flag, else {}."""
        if not self.same_data(dataset, data_root) or any(given.get(key) is not None for key in EVAL_SPLIT_FLAGS):
            return {}
        if is_hf_dataset(self.dataset):
            return {"hf": hf_options(self.dataset, self.hf)}  # read as training read it
        return self.split_options()

    def flag_defaults(self) -> dict[str, Any]:
        """{argparse dest: value} of the data flags that read the training split."""
        split = self.split_options()
        flags = {"dataset": self.dataset, "data_root": self.data_root, "num_scenes": self.num_scenes,
                 "val_fraction": split.get("val_fraction"), "split_file": split.get("train_split_file"),
                 "hf": self.hf}
        return {key: value for key, value in flags.items() if value is not None}

    def describe_val(self) -> str:
        """The validation split in words: what `digseg eval` scores by default on the model's data."""
        rules = {BY_HASH: f"the images held out by file-name hash at val_fraction {self.val_fraction or 0:g}",
                 BY_SPLIT_FILE: f"every image not listed in the training list {self.split_file}",
                 BY_SPLIT_LISTS: "the images listed in splits/val.txt", BY_SPLIT_FOLDERS: "the images in images/val/"}
        named = (self.hf or {}).get("val_split")
        return rules.get(self.split_rule or "", "the dataset's validation split" + (f" {named}" if named else ""))

    def eval_flags(self) -> list[str]:
        """`digseg eval` arguments that read the model's validation split (eval applies a training list itself)."""
        flags = ["--dataset", self.dataset]
        if self.data_root:
            flags += ["--data-root", self.data_root]
        if "val_fraction" in self.split_options():
            flags += ["--val-fraction", f"{self.val_fraction:g}"]
        if self.hf:
            flags += ["--hf", *(f"{key}={json.dumps(value) if isinstance(value, bool) else value}"
                                 for key, value in self.hf.items())]
        return flags

    def overlap_warning(self, dataset) -> str | None:
        """A one-line warning when `dataset` holds images of the model's training split; None if none or unknown."""
        if dataset.name != self.dataset:
            return None
        if is_hf_dataset(self.dataset):
            count = len(dataset) if self.hf_split and dataset.hf_split == self.hf_split else 0
            how = f"split {self.hf_split or 'train'}"
        elif not self.same_data(self.dataset, str(dataset.root)):
            return None
        else:
            from .registry import read_dataset

            try:
                train = read_dataset(self.dataset, str(dataset.root), split="train", **self.split_options())
            except (DigsegError, OSError):
                return None
            seen = {str(sample.image) for sample in train.samples}
            count = sum(str(sample.image) in seen for sample in dataset.samples)
            how = getattr(train, "split_rule", "split train")  # the folder reader's rule, in words
        if not count:
            return None
        where = self.dataset + (f" data at {self.data_root}" if self.data_root else "")
        return (f"warning: {count} of the {len(dataset)} images scored were in the model's training split "
                f"({where}, {how}); their scores overstate accuracy on unseen images (leave out --val-fraction "
                f"and --split-file to score the model's validation split: {self.describe_val()})")


def record_training_data(data, dataset) -> dict[str, Any] | None:
    """The record (a dict) of training on `dataset`, built from `data`; None for a dataset no name rebuilds."""
    from .synthetic import SyntheticScenes

    if isinstance(dataset, SyntheticScenes):
        return TrainingDataRecord("synthetic", num_scenes=len(dataset), seed=dataset.seed).to_dict()
    name = getattr(dataset, "name", None)
    if not isinstance(name, str) or not name:
        return None
    if is_hf_dataset(name):
        return TrainingDataRecord(name, hf=dict(data.hf) if data.dataset == name and data.hf else None,
                                  hf_split=getattr(dataset, "hf_split", None)).to_dict()
    root = _absolute(dataset.root)
    if name != FOLDER_DATASET:
        return TrainingDataRecord(name, root).to_dict()
    rule = dataset.split_by
    return TrainingDataRecord(
        name, root, split_rule=rule, val_fraction=dataset.val_fraction if rule == BY_HASH else None,
        hash=HASH_RULE if rule == BY_HASH else None,
        split_file=_absolute(dataset.split_file) if rule == BY_SPLIT_FILE else None).to_dict()


def model_training_data(model: str | Path) -> TrainingDataRecord | None:
    """The record in a local model folder's model_index.json; None without one (or for a hub id)."""
    index = Path(model).expanduser() / "model_index.json"
    try:
        return TrainingDataRecord.from_config(json.loads(index.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None
