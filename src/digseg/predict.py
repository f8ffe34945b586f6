"""The `digseg predict` run over many images: streamed, batched, atomic per image, resumable, and going on
past files that cannot be read.

    result = run_predict(pipe, paths, out_dir, call_kwargs, settings, seed=0, batch_size=8, skip_existing=True)
    sys.exit(result.exit_status)  # 0, or EXIT_SKIPPED when some files could not be read

- **Streaming.** Images are decoded as they are processed (one is read ahead on a thread while the model
  runs), never all up front, and at most `2 x batch_size` decoded images wait for a batch. The run keeps no
  per-image results: `summary.json` and `index.html` are written at the end by reading the per-image
  summaries back from disk, one at a time. Memory stays flat over thousands of images.
- **Batching.** Images whose processed size (`image_processing.padded_size`) is the same go to the pipeline
  together, up to `batch_size` per call. When more than `2 x batch_size` images are waiting (many different
  sizes), the size waiting longest goes out as a smaller batch.
- **Seeds.** Image i (its place in `paths`, skipped and finished images included) draws its noise from its own
  generator, `seeded_generator(seed, i)`, as `digseg eval` does: its result depends neither on the batch size
  nor on the other images.
- **Skip and report.** A file `load_image` cannot read (missing, empty, not an image, truncated) is named in
  one line on stderr and skipped; the run goes on. `summary.json` and `index.html` list it, and
  `exit_status` is EXIT_SKIPPED.
- **Atomic per image.** An image's files are written into `<out>/.partial/<stem>/`, then moved into `<out>`
  with `os.replace`, `<stem>_summary.json` last: an image is finished exactly when its summary exists.
  `summary.json` and `index.html` are replaced atomically too.
- **Resumable.** With `skip_existing`, an image whose summary names the same source and settings and whose
  files all exist is not predicted again; its summary is read back, so the report still covers every image.
  A summary written with other settings is an error (ConfigError, before any work), not silently kept.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from .data.io import load_image
from .errors import EXIT_SKIPPED, ConfigError, DataError
from .image_processing import padded_size
from .inputs import display_names, unique_stems
from .predict_outputs import open_atomically, write_image_outputs
from .report import write_report
from .seeding import seeded_generator

PARTIAL_DIR = ".partial"  # inside the output folder: images being written
READ_AHEAD = 1  # images decoded on a thread while the model runs


@dataclass
class PredictResult:
    """What a run did: `images` finished (`written` now + `reused` from an earlier run); `skipped`:
    {"name", "source", "reason"} per file that could not be read; where summary.json and index.html are."""

    images: int
    written: int
    reused: int
    skipped: list[dict]
    summary: Path
    report: Path

    @property
    def exit_status(self) -> int:
        return EXIT_SKIPPED if self.skipped else 0

    def message(self) -> str:
        """The run's closing line(s): counts, where things are, and the skipped files if any."""
        kept = f" ({self.reused} kept from an earlier run)" if self.reused else ""
        text = f"wrote predictions for {self.images} image(s) to {self.summary.parent}{kept}; report: {self.report}"
        if self.skipped:
            text += (f"\nskipped {len(self.skipped)} of {self.images + len(self.skipped)} image(s) that could not "
                     f"be read (listed in {self.summary.name} and the report); exit status {EXIT_SKIPPED}")
        return text


@dataclass
class SizeBatcher:
    """Groups items by key (an image's processed size) into batches of up to `batch_size`, holding at most
    `max_pending` items: beyond that, the key waiting longest goes out as a smaller batch."""

    batch_size: int
    max_pending: int
    buckets: dict[Any, list] = field(default_factory=dict)  # insertion order: the oldest waiting key first
    pending: int = 0

    def add(self, key, item) -> list[list]:
        """Add one item -> the batches now ready (often none)."""
        self.buckets.setdefault(key, []).append(item)
        self.pending += 1
        ready = [self._pop(key)] if len(self.buckets[key]) >= self.batch_size else []
        while self.pending > self.max_pending:
            ready.append(self._pop(next(iter(self.buckets))))
        return ready

    def drain(self) -> list[list]:
        """Every batch still waiting (at the end of the input)."""
        return [self._pop(key) for key in list(self.buckets)]

    def _pop(self, key) -> list:
        batch = self.buckets.pop(key)
        self.pending -= len(batch)
        return batch


def finished_record(out_dir: Path, stem: str, source: Path, settings: dict) -> dict | None:
    """The summary of `source` from an earlier run into `out_dir`, or None when it must be predicted (no
    summary, an unreadable one, another source under this stem, or a listed file missing).

    Raises ConfigError when the summary was written with other settings: a different run, not one to continue.
    """
    path = out_dir / f"{stem}_summary.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or Path(str(record.get("source", ""))).resolve() != source.resolve():
        return None
    if not all((out_dir / name).is_file() for name in listed_files(record)):
        return None
    earlier = record.get("settings") or {}
    if earlier != settings:
        changed = sorted(k for k in set(settings) | set(earlier) if settings.get(k) != earlier.get(k))
        raise ConfigError(f"--skip-existing: {path} was written with other settings ({', '.join(changed)}); "
                          "use another --output, or drop --skip-existing to predict every image again")
    return record


def listed_files(record: dict) -> list[str]:
    """Every file name a per-image summary lists (its own name included)."""
    files = record.get("files") or {}
    names = [v for k, v in files.items() if isinstance(v, str)]
    return names + [m["file"] for m in files.get("probabilities") or []]


def publish(staging: Path, out_dir: Path, summary_name: str) -> None:
    """Move an image's files from `staging` into `out_dir` (os.replace: each atomic), the summary last."""
    for path in sorted(staging.iterdir()):
        if path.name != summary_name:
            os.replace(path, out_dir / path.name)
    os.replace(staging / summary_name, out_dir / summary_name)  # from here on the image counts as finished
    staging.rmdir()


def _read_ahead(paths: list[Path], indices: list[int]) -> Iterator[tuple[int, Any]]:
    """(i, RGB image as displayed, or the DataError saying why it cannot be read), decoding READ_AHEAD images
    ahead on a thread."""
    def read(i: int):
        try:
            return load_image(paths[i], exif_transpose=True)
        except DataError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=1) as pool:
        queue: deque = deque()
        for i in indices:
            queue.append((i, pool.submit(read, i)))
            if len(queue) > READ_AHEAD:
                j, future = queue.popleft()
                yield j, future.result()
        while queue:
            j, future = queue.popleft()
            yield j, future.result()


def run_predict(pipe, paths: list[Path], out_dir: Path, call_kwargs: dict, settings: dict, seed: int = 0,
                batch_size: int = 1, skip_existing: bool = False, show_progress: bool | None = None) -> PredictResult:
    """Predict every image of `paths` into `out_dir` (see the module docstring); write summary.json and index.html.

    call_kwargs: the pipeline's arguments (prompt, classes, ensemble_size, num_inference_steps,
    processing_resolution, ...), the same for every image; settings: what each summary records (JSON values).
    show_progress: None shows the bar (with an ETA) only when stderr is a terminal.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    out_dir = Path(out_dir)  # created when the first file is written: a bad flag the pipeline finds leaves nothing
    settings = json.loads(json.dumps(settings))  # as the summaries store them, so earlier runs compare equal
    names, stems = display_names(paths), unique_stems(paths)
    finished = [skip_existing and finished_record(out_dir, stem, path, settings) is not None
                for path, stem in zip(paths, stems)]
    todo = [i for i, done in enumerate(finished) if not done]
    if len(todo) < len(paths):
        print(f"--skip-existing: {len(paths) - len(todo)} of {len(paths)} image(s) already finished in {out_dir}")
    resolution = call_kwargs.get("processing_resolution")
    resolution = pipe.config.default_processing_resolution if resolution is None else resolution
    skipped: dict[int, dict] = {}
    bar = tqdm(total=len(todo), desc="predict", unit="image", disable=(not show_progress) if show_progress is not None else None)

    def run_batch(batch: list[tuple[int, Any]]) -> None:
        images = [image for _, image in batch]
        result = pipe(images, generator=[seeded_generator(seed, i) for i, _ in batch], batch_size=len(batch),
                      show_progress_bar=False, **call_kwargs)
        for j, (i, image) in enumerate(batch):
            staging = out_dir / PARTIAL_DIR / stems[i]
            shutil.rmtree(staging, ignore_errors=True)  # left by a run killed while writing this image
            unc = result.uncertainty[j] if result.uncertainty is not None else None
            record = write_image_outputs(staging, stems[i], names[i], paths[i], image, result.labels[j],
                                         result.probabilities[j], result.class_names, unc, settings,
                                         result.probability_class_ids[j])
            publish(staging, out_dir, record["files"]["summary"])
            finished[i] = True
            bar.write(f"{names[i]}: " + ", ".join(f"{c['name']} {c['fraction']:.1%}" for c in record["classes"]))
            bar.update(1)

    batcher = SizeBatcher(batch_size, max_pending=2 * batch_size)
    try:
        for i, image in _read_ahead(paths, todo):
            if isinstance(image, DataError):
                skipped[i] = {"name": names[i], "source": str(paths[i]), "reason": str(image)}
                bar.write(f"skipped: {image}", file=sys.stderr)  # the reason names the file
                bar.update(1)
                continue
            size = padded_size(image.height, image.width, resolution, pipe.pad_multiple, call_kwargs.get("scale"),
                               call_kwargs.get("keep_ratio", True))
            for batch in batcher.add(size, (i, image)):
                run_batch(batch)
        for batch in batcher.drain():
            run_batch(batch)
    finally:
        bar.close()
    try:
        (out_dir / PARTIAL_DIR).rmdir()
    except OSError:  # absent, or not empty (another run writing into the same folder)
        pass

    done = [i for i, ok in enumerate(finished) if ok]
    missed = [skipped[i] for i in sorted(skipped)]
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = write_run_summary(out_dir, (_read_record(out_dir, stems[i]) for i in done), missed)
    report = write_report(out_dir, (_read_record(out_dir, stems[i]) for i in done), settings, skipped=missed,
                          num_entries=len(done))
    return PredictResult(images=len(done), written=len(todo) - len(missed), reused=len(paths) - len(todo),
                         skipped=missed, summary=summary, report=report)


def _read_record(out_dir: Path, stem: str) -> dict:
    """A finished image's summary, read back for the run's summary and report, without its settings."""
    record = json.loads((out_dir / f"{stem}_summary.json").read_text(encoding="utf-8"))
    record.pop("settings", None)  # the run's, listed once at the top of the report
    return record


def write_run_summary(out_dir: Path, records: Iterable[dict], skipped: list[dict]) -> Path:
    """`<out_dir>/summary.json`: {"images": {name: {class: fraction}}, "skipped": [{"name", "source", "reason"}]},
    written one image at a time (records may be an iterator) and replaced atomically."""
    path = out_dir / "summary.json"
    with open_atomically(path) as f:
        f.write('{\n  "images": {')
        for k, r in enumerate(records):
            fractions = {c["name"]: c["fraction"] for c in r["classes"]}
            f.write(f'{"," if k else ""}\n    {json.dumps(r["name"], ensure_ascii=False)}: '
                    f'{json.dumps(fractions, ensure_ascii=False)}')
        f.write('\n  },\n  "skipped": ' + json.dumps(skipped, indent=4, ensure_ascii=False) + "\n}\n")
    return path
