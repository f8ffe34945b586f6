"""`--dataset hf:NAME_OR_PATH`: `datasets` tables (docs/data.md) read map-style, cells decoded as the `folder` reader
decodes files; errors name the dataset, split, row and column."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ConfigError, DataError, DigsegError, first_line
from ..hub_ids import looks_like_hub_id
from .base import LazySamples, Sample, SegmentationDataset
from .hf_options import HF_PREFIX, INSTALL_HINT, SPLIT_NAMES, HFOptions
from .io import decode_image_bytes, image_to_rgb, label_to_array, none_value, read_class_list

DATA_FILE_FORMATS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json", ".jsonl": "json"}
CLASS_FILES = ("classes.txt", "id2label.json")  # beside a dataset, in this order


def _datasets():
    try:
        import datasets
    except ImportError as exc:
        raise ConfigError(f"{HF_PREFIX} datasets are read with the datasets library: {INSTALL_HINT}") from exc
    return datasets


def _pick_split(available: list[str], split: str, hf_split: str | None, where: str) -> str:
    """The dataset's split to read for digseg's `split` (or the named `hf_split`); DataError listing the splits."""
    wanted = (hf_split,) if hf_split else SPLIT_NAMES.get(split, (split,))
    found = next((name for name in wanted if name in available), None)
    if found is None:
        looked = " or ".join(repr(w) for w in wanted)
        hint = "" if hf_split else " (name it with the hf option train_split or val_split: docs/data.md)"
        raise DataError(f"{where} has no split {looked}; its splits are {', '.join(available)}{hint}")
    return found


def open_split(source: str, split: str, hf_split: str | None = None):
    """(the `datasets.Dataset` of `split`, the dataset's name for that split); DataError when it cannot be opened."""
    datasets = _datasets()
    where = f"{HF_PREFIX}{source}"
    path = Path(source).expanduser()
    try:
        if path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json")):
            tables = datasets.load_from_disk(str(path))
        elif path.is_file():
            fmt = DATA_FILE_FORMATS.get(path.suffix.lower())
            if fmt is None:
                raise DataError(f"{where}: cannot read {path.suffix or 'suffix-less'} files; data files are "
                                f"{', '.join(DATA_FILE_FORMATS)}")
            tables = datasets.load_dataset(fmt, data_files={"train": str(path)})
        elif path.is_dir():
            tables = datasets.load_dataset(str(path))
        elif looks_like_hub_id(source, canonical=True):  # 'name' or 'org/name'
            name = _pick_split(datasets.get_dataset_split_names(source), split, hf_split, where)
            return datasets.load_dataset(source, split=name), name
        else:
            raise DataError(f"{where}: no such file or folder: {path}")
    except DigsegError:
        raise
    except Exception as exc:  # datasets and the Hub client raise many types (FileNotFoundError, ConnectionError...)
        raise DataError(f"{where}: cannot open it with datasets: {first_line(exc)}") from exc
    if isinstance(tables, datasets.Dataset):  # one dataset without splits
        tables = datasets.DatasetDict(train=tables)
    name = _pick_split(list(tables), split, hf_split, where)
    return tables[name], name


def _class_file(source: str) -> Path | None:
    """classes.txt or id2label.json beside a local dataset, or in a Hub dataset's repository (when reachable)."""
    path = Path(source).expanduser()
    if path.exists():
        folder = path if path.is_dir() else path.parent
        return next((folder / name for name in CLASS_FILES if (folder / name).is_file()), None)
    from huggingface_hub import hf_hub_download  # a dependency of diffusers

    for name in CLASS_FILES:
        try:
            return Path(hf_hub_download(source, name, repo_type="dataset"))
        except Exception:  # not in the repository, offline, no access: try the next source
            continue
    return None


def class_names_of(source: str, feature, options: HFOptions) -> list[str]:
    """The class names by the rules of docs/data.md; DataError saying where names may come from."""
    if options.classes_file:
        return read_class_list(options.classes_file)
    while feature is not None and not getattr(feature, "names", None):  # a ClassLabel, or a sequence of them
        feature = getattr(feature, "feature", None)
    stored = None if feature is None else list(feature.names)
    file = _class_file(source) if stored is None else None
    if file is not None and file.name == "classes.txt":
        return read_class_list(file)
    if file is not None:  # id2label.json: {"0": "road", "1": "sidewalk", ...}
        try:
            ids = {int(k): str(v) for k, v in json.loads(file.read_text(encoding="utf-8")).items()}
        except (OSError, ValueError, AttributeError) as exc:
            raise DataError(f"cannot read class names from {file}: {exc}") from exc
        if not ids or sorted(ids) != list(range(len(ids))):
            raise DataError(f"class file {file} must map the ids 0..n-1 to names, got ids {sorted(ids)[:5]}...")
        stored = [ids[i] for i in range(len(ids))]
    if stored is None:
        raise DataError(f"{HF_PREFIX}{source}: no class names: the label column {options.label_column!r} has no "
                        f"ClassLabel names and there is no {' or '.join(CLASS_FILES)} beside the data; give the "
                        "hf option classes_file=FILE (one class name per line)")
    return stored[1:] if options.reduce_zero_label else stored


class HFSegmentation(SegmentationDataset):
    """One split of an hf: dataset (`hf_split`: the dataset's name for it); samples are rows, stems row numbers."""

    def __init__(self, source: str, split: str = "val", size: int | None = None,
                 options: HFOptions | None = None) -> None:  # noqa: D107  (no super().__init__: rows, not files)
        self.options = options = options or HFOptions()
        self.source, self.root, self.split, self.size = source, source, split, size
        self.name = f"{HF_PREFIX}{source}"
        named = {"train": options.train_split, "val": options.val_split}.get(split)  # None: by SPLIT_NAMES
        table, self.hf_split = open_split(source, split, named)
        self.where = f"{self.name} ({self.hf_split})"
        columns = list(table.column_names)
        for option, column in (("image_column", options.image_column), ("label_column", options.label_column)):
            if column not in columns:
                raise DataError(f"{self.where} has no column {column!r} (choose with the hf option {option}); its "
                                f"columns are {', '.join(columns)}")
        self.class_names = class_names_of(source, table.features[options.label_column], options)
        self.ignore_index = none_value(len(self.class_names))
        if 0 <= options.ignore_index - int(options.reduce_zero_label) < len(self.class_names):
            raise ConfigError(f"the hf option ignore_index={options.ignore_index} marks a class of {self.name}, which "
                              f"has {len(self.class_names)} classes (ids 0..{len(self.class_names) - 1})")
        datasets, keep = _datasets(), list(dict.fromkeys([options.image_column, options.label_column]))
        self.table = table.select_columns(keep)
        for column in keep:  # images kept as their stored bytes, decoded by digseg's rules
            if isinstance(self.table.features[column], datasets.Image):
                self.table = self.table.cast_column(column, datasets.Image(decode=False))
        self.samples = LazySamples(self._row_sample, range(len(table)))
        if not self.samples:
            raise DataError(f"{self.where} has no rows")
        self._row: tuple[int, dict] | None = None  # the last row read (its image and label are read one by one)

    def __repr__(self) -> str:
        return f"HFSegmentation({self.source!r}, split={self.split!r}): {len(self)} rows of split {self.hf_split!r}"

    def _row_sample(self, row: int) -> Sample:  # errors name a cell "hf:beans (train) row 12 column 'label'"
        return Sample(f"{row:06d}", f"{self.where} row {row} column {self.options.image_column!r}",
                      f"{self.where} row {row} column {self.options.label_column!r}", row=row)

    def _cell(self, sample: Sample, label: bool) -> tuple[Image.Image | np.ndarray, str]:
        """(the sample's label or image cell as a decoded image (stored mode) or an array of pixel values, its name)"""
        name = str(sample.label if label else sample.image)
        column = self.options.label_column if label else self.options.image_column
        if self._row is None or self._row[0] != sample.row:
            self._row = (sample.row, self.table[sample.row])
        value = self._row[1][column]
        if value is None or (isinstance(value, dict) and not (value.get("bytes") or value.get("path"))):
            raise DataError(f"{name} is empty")
        if isinstance(value, dict):  # the Image feature's storage: file bytes, or a path when not embedded
            try:
                value = value.get("bytes") or Path(value["path"]).read_bytes()
            except OSError as exc:
                raise DataError(f"cannot read {name}: {exc.strerror or exc} ({value['path']})") from exc
        if isinstance(value, (bytes, bytearray)):
            return decode_image_bytes(bytes(value), name), name
        return np.asarray(value), name

    def read_image(self, sample: Sample) -> Image.Image:
        value, name = self._cell(sample, label=False)
        if isinstance(value, np.ndarray):
            if value.ndim not in (2, 3) or value.dtype.kind not in "uif":
                raise DataError(f"cannot read {name}: an array of shape {value.shape} is not an image")
            value = Image.fromarray(value.astype(np.uint8, copy=False))
        return image_to_rgb(value, name)

    def read_raw_label(self, sample: Sample) -> np.ndarray:
        value, name = self._cell(sample, label=True)
        if isinstance(value, Image.Image):
            value = label_to_array(value, name)
        elif value.ndim != 2 or value.dtype.kind not in "iub":
            raise DataError(f"{name} must be a 2-D array of class ids, got {value.dtype} of shape {value.shape}")
        values = value.astype(np.int64)  # the stored ignore value (and 0, with reduce_zero_label) -> ignore_index
        unlabelled = values == self.options.ignore_index
        if self.options.reduce_zero_label:
            unlabelled |= values == 0
            values = values - 1
        return np.where(unlabelled, self.ignore_index, values)
