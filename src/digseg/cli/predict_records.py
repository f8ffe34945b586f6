"""The files a `digseg predict` run can write (`OUTPUTS`, chosen with `--outputs`), and what the run keeps about
itself in `<output>/.digseg-predict/` (docs/predict.md): per process, `records-<rank>.jsonl`, a line {"settings":
...} then one line per finished image, its record, appended once its files are in place (a line cut short by a
kill is ignored); `partial/<stem>/`, an image's files while they are written. summary.json and the report are
written from the records (`RecordIndex`) one image at a time: memory holds one file offset per image.
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


def publish(staging: Path, out_dir: Path) -> None:
    """Move an image's files from `staging` into `out_dir` (os.replace: each atomic), then remove `staging`."""
    for path in sorted(staging.iterdir()):
        os.replace(path, out_dir / path.name)
    staging.rmdir()


class RecordWriter:
    """Appends this process's finished images to its records file, one line each, flushed at once. The file (and
    its settings line) is made at the first image; one of the same settings from an earlier run is continued."""

    def __init__(self, out_dir: Path, rank: int, settings: dict):
        self.path, self.settings = state_dir(out_dir) / f"records-{rank:05d}.jsonl", settings
        self._file = None

    def add(self, stem: str, record: dict) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_file() and _settings_of(self.path) == self.settings:
                with open(self.path, "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    cut_short = f.read(1) != b"\n"
                self._file = open(self.path, "a", encoding="utf-8")
                self._file.write("\n" if cut_short else "")  # a line cut short by a kill stays alone on its line
            else:
                self._file = open(self.path, "w", encoding="utf-8")
                self._file.write(json.dumps({"settings": self.settings}, ensure_ascii=False) + "\n")
        self._file.write(json.dumps({"stem": stem, **record}, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


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
                        self.where[json.loads(line)["stem"]] = (path, offset)
                    except (ValueError, KeyError, TypeError):
                        pass  # cut short by a kill: the image was not finished
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
        if record is None or Path(record["source"]).resolve() != source.resolve():
            return False
        files = record["files"]
        listed = [v for v in files.values() if isinstance(v, str)] + [m["file"] for m in files["probabilities"]]
        return all((self.out_dir / name).is_file() for name in listed)


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
