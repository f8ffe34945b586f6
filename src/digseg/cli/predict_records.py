"""The files a `digseg predict` run can write (`OUTPUTS`, chosen with `--outputs`), and what the run keeps about
itself in `<output>/.digseg-predict/` (docs/predict.md):

    records-<rank>.jsonl   per process: a line {"settings": ...}, then one line per finished image, its record
                           (`predict_outputs.write_image_outputs`), appended once its files are in place; a line
                           cut short by a kill is ignored
    partial/<stem>/        an image's files while they are written, moved into the output folder when complete

summary.json and the report are written from the records (`RecordIndex`) one image at a time, in input order:
memory holds one file offset per image, not the records.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator, TextIO

from ..errors import ConfigError

# per image, then the run's HTML report (summary.json is always written)
PER_IMAGE_OUTPUTS = ("labels", "overlay", "probabilities", "uncertainty", "input", "json")
OUTPUTS = (*PER_IMAGE_OUTPUTS, "report")


def parse_outputs(text: str) -> tuple[str, ...]:
    """'labels,json' -> ('labels', 'json') in OUTPUTS order; 'all' -> OUTPUTS. ConfigError names an unknown kind."""
    kinds = {k.strip() for k in text.split(",") if k.strip()}
    if kinds == {"all"}:
        return OUTPUTS
    unknown = sorted(kinds - set(OUTPUTS))
    if unknown or not kinds:
        raise ConfigError(f"--outputs: unknown kind(s) {', '.join(unknown) or repr(text)}; choose from "
                          f"{', '.join(OUTPUTS)} or all (comma-separated)")
    return tuple(k for k in OUTPUTS if k in kinds)


def state_dir(out_dir: Path) -> Path:
    return Path(out_dir) / ".digseg-predict"


def partial_dir(out_dir: Path) -> Path:
    """Where images are written before they are moved into `out_dir`."""
    return state_dir(out_dir) / "partial"


def records_path(out_dir: Path, rank: int) -> Path:
    return state_dir(out_dir) / f"records-{rank:05d}.jsonl"


def _settings_of(path: Path) -> dict | None:
    """The settings line a records file starts with (None: no complete settings line)."""
    with open(path, "rb") as f:
        try:
            return json.loads(f.readline())["settings"]
        except (ValueError, KeyError, TypeError):
            return None


def check_same_settings(out_dir: Path, settings: dict) -> None:
    """For --skip-existing: ConfigError naming the settings that differ when `out_dir` holds another run's images."""
    for path in sorted(state_dir(out_dir).glob("records-*.jsonl")):
        earlier = _settings_of(path)
        if earlier is not None and earlier != settings:
            changed = sorted(k for k in set(settings) | set(earlier) if settings.get(k) != earlier.get(k))
            raise ConfigError(f"--skip-existing: {out_dir} holds a run with other settings ({', '.join(changed)}); "
                              "use another --output, or drop --skip-existing to predict every image again")


def clear_records(out_dir: Path) -> None:
    """A new run (not a continuation) into `out_dir`: forget the images of an earlier run there."""
    for path in state_dir(out_dir).glob("records-*.jsonl"):
        path.unlink()


def publish(staging: Path, out_dir: Path) -> None:
    """Move an image's files from `staging` into `out_dir` (os.replace: each atomic), then remove `staging`."""
    for path in sorted(staging.iterdir()):
        os.replace(path, out_dir / path.name)
    staging.rmdir()


def clean_partial(out_dir: Path) -> None:
    """Remove the (empty) staging folder; one still holding files (a run writing into this folder) is left."""
    try:
        partial_dir(out_dir).rmdir()
    except OSError:
        pass


class RecordWriter:
    """Appends this process's finished images to its records file, one line each, flushed at once. The file (and
    its settings line) is made at the first image; one of the same settings from an earlier run is continued."""

    def __init__(self, out_dir: Path, rank: int, settings: dict):
        self.path, self.settings = records_path(out_dir, rank), settings
        self._file = None

    def _open(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file() and _settings_of(self.path) == self.settings:
            self._file = open(self.path, "a", encoding="utf-8")
            if not _ends_with_newline(self.path):
                self._file.write("\n")  # a line cut short by a kill stays alone on its line
        else:
            self._file = open(self.path, "w", encoding="utf-8")
            self._file.write(json.dumps({"settings": self.settings}, ensure_ascii=False) + "\n")
        return self._file

    def add(self, stem: str, record: dict) -> None:
        f = self._file or self._open()
        f.write(json.dumps({"stem": stem, **record}, ensure_ascii=False) + "\n")
        f.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


class RecordIndex:
    """Where each finished image's record is: stem -> (records file, byte offset), over every process's file."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.where: dict[str, tuple[Path, int]] = {}
        for path in sorted(state_dir(out_dir).glob("records-*.jsonl")):
            with open(path, "rb") as f:
                offset = len(f.readline())  # the settings line
                for line in f:
                    try:
                        stem = json.loads(line)["stem"]
                    except (ValueError, KeyError, TypeError):
                        stem = None  # cut short by a kill: the image was not finished
                    if stem is not None:
                        self.where[stem] = (path, offset)
                    offset += len(line)

    def get(self, stem: str) -> dict | None:
        if stem not in self.where:
            return None
        path, offset = self.where[stem]
        with open(path, "rb") as f:
            f.seek(offset)
            record = json.loads(f.readline())
        record.pop("stem")
        return record

    def finished(self, stem: str, source: Path) -> bool:
        """True when `stem` has a record for this `source` and every file it lists is in the output folder."""
        record = self.get(stem)
        if record is None or Path(str(record.get("source", ""))).resolve() != source.resolve():
            return False
        return all((self.out_dir / name).is_file() for name in listed_files(record))

    def records(self, stems: list[str]) -> Iterator[dict]:
        """The records of `stems`, in that order, read one at a time."""
        for stem in stems:
            yield self.get(stem)


def listed_files(record: dict) -> list[str]:
    """Every file name an image's record lists."""
    files = record.get("files") or {}
    names = [v for k, v in files.items() if isinstance(v, str)]
    return names + [m["file"] for m in files.get("probabilities") or []]


@contextlib.contextmanager
def open_atomically(path: Path) -> Iterator[TextIO]:
    """A text file to write `path` through: a temporary file beside it, moved over `path` with `os.replace`
    when the block ends without error (removed otherwise): readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
