"""Every sample read as training reads it (cached by `scan_key` for a resume); `keep_good` refuses or drops bad ones."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import DataError, DigsegError, first_line

logger = logging.getLogger("digseg.data")

BAD_SAMPLES = ("error", "skip")  # data.bad_samples: refuse a dataset with bad samples, or train without them
SMALL = 1000  # a dataset of fewer samples is scanned in the calling process


@dataclass
class BadSample:
    index: int  # in the dataset as read
    name: str  # the sample's image (a file, or a table's cell)
    problem: str  # one line, naming the file at fault


@dataclass
class DataCheck:
    """What a scan found: every sample's name in dataset order, and the bad ones."""

    names: list[str]
    bad: list[BadSample] = field(default_factory=list)
    key: str = ""  # what was scanned (scan_key): a cached check is reused while it is the same

    @property
    def kept(self) -> list[int]:
        """Indices of the good samples, in dataset order."""
        return sorted(set(range(len(self.names))) - {b.index for b in self.bad})

    def kept_names(self) -> list[str]:
        return [self.names[i] for i in self.kept]

    def kept_digest(self) -> str:
        """A name for the list of good samples (their names, in order)."""
        return hashlib.sha256("\n".join(self.kept_names()).encode()).hexdigest()[:16]


def _file_facts(path) -> str:
    try:
        st = os.stat(path)
    except (OSError, TypeError, ValueError):
        return "-"
    return f"{st.st_size}:{st.st_mtime_ns}"


def scan_key(dataset) -> str:
    """What a check depends on: class count, ignore index, each sample's files, sizes, times (a table: fingerprint)."""
    h = hashlib.sha256(f"{type(dataset).__name__}|{len(getattr(dataset, 'class_names', []))}|"
                       f"{getattr(dataset, 'ignore_index', 255)}|{len(dataset.samples)}".encode())
    table = getattr(dataset, "table", None)
    if table is not None:  # an hf: dataset's rows: the datasets library's fingerprint of the table
        h.update(f"table:{getattr(table, '_fingerprint', None) or id(table)}".encode())
        return h.hexdigest()
    for s in dataset.samples:
        h.update(f"{s.image}|{_file_facts(s.image)}|{s.label}|{_file_facts(s.label)}\n".encode())
    return h.hexdigest()


def _read_each(dataset, indices: list[int]) -> list[tuple[int, str | None]]:
    """(i, None) or (i, "problem") per sample i, read as training reads it (the DataLoader's collate_fn)."""
    found = []
    for i in indices:
        try:
            dataset.load_pair(i)
            found.append((i, None))
        except DigsegError as exc:  # names the file
            found.append((i, first_line(exc)))
        except Exception as exc:  # noqa: BLE001 (a scan reports every problem, of whatever kind, and goes on)
            found.append((i, f"sample {dataset.samples[i].image}: {type(exc).__name__}: {first_line(exc)}"))
    return found


def scan_dataset(dataset, num_workers: int = 0, show_progress: bool = True, desc: str = "check data") -> DataCheck:
    """Every sample read (in up to `num_workers` DataLoader workers; none below SMALL samples) -> DataCheck."""
    from torch.utils.data import DataLoader  # here: the training config imports this module, and --help no torch

    names = [str(s.image) for s in dataset.samples]
    num_workers = 0 if len(names) < SMALL else min(num_workers, os.cpu_count() or 1)
    loader = DataLoader(range(len(names)), batch_size=16, num_workers=num_workers,
                        collate_fn=functools.partial(_read_each, dataset))
    bad = []
    with tqdm(total=len(names), desc=desc, unit="img", disable=not show_progress or len(names) < SMALL) as bar:
        for chunk in loader:
            bad += [BadSample(i, names[i], problem) for i, problem in chunk if problem is not None]
            bar.update(len(chunk))
    return DataCheck(names, bad, scan_key(dataset))  # the loader keeps sample order


def check_dataset(dataset, cache: Path | None = None, num_workers: int = 0,
                  show_progress: bool = True, desc: str = "check data") -> DataCheck | None:
    """`scan_dataset` (kept in `cache`), or the check kept there of the same files; None for generated data."""
    if getattr(dataset, "samples", None) is None:  # generated data: nothing read from storage
        return None
    if cache is not None and cache.is_file():
        try:
            values = json.loads(cache.read_text())  # as `asdict(check)` wrote it
            kept = DataCheck(list(values["names"]), [BadSample(**b) for b in values["bad"]], values["key"])
        except (OSError, ValueError, KeyError, TypeError):
            kept = None  # unreadable: scan again and replace it
        if kept is not None and kept.key == scan_key(dataset):
            return kept
    check = scan_dataset(dataset, num_workers, show_progress, desc)
    if cache is not None:
        _write_atomically(cache, json.dumps(asdict(check)))
    return check


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def keep_good(dataset, check: DataCheck | None, policy: str, where: str):
    """`dataset` less its bad samples (policy "skip"); "error": each logged, then one DataError saying what to do."""
    if check is None or not check.bad:
        return dataset
    if policy == "error":
        for bad in check.bad:
            logger.error("bad sample: %s", bad.problem)
        raise DataError(f"{len(check.bad)} of {len(check.names)} samples of {getattr(dataset, 'name', 'the dataset')}"
                        f" ({where}) cannot be used, each listed above (the first: {check.bad[0].problem}); fix or "
                        "remove them, or train without them with --bad-samples skip (data.bad_samples: skip)")
    from .base import LazySamples  # here: importing this module imports no torch

    kept = copy.copy(dataset)  # the same reader over the good samples only
    kept.samples = LazySamples(dataset.samples.__getitem__, check.kept)
    return kept


SAMPLE_LISTS = "sample-lists"  # <run folder>/sample-lists/<kept_digest>.txt: the names of each list trained on


def write_sample_list(run_dir: Path, check: DataCheck) -> None:
    """Keep the names of the samples trained on, under their digest (what a checkpoint records)."""
    path = Path(run_dir) / SAMPLE_LISTS / f"{check.kept_digest()}.txt"
    if not path.is_file():
        _write_atomically(path, "".join(f"{name}\n" for name in check.kept_names()))


def read_sample_list(run_dir: Path, digest: str) -> list[str] | None:
    """The names written by `write_sample_list` under `digest`; None when they were not kept."""
    path = Path(run_dir) / SAMPLE_LISTS / f"{digest}.txt"
    return path.read_text().splitlines() if path.is_file() else None
