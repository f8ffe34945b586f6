"""The `digseg predict` run over many images (`run_predict`): streamed, batched by processed size, atomic per
image, resumable, shared between launched processes, and going on past files that cannot be read
(docs/predict.md). Image i (its place in `paths`) draws its noise from `seeded_generator(seed, i)`, as `digseg
eval` does: its result depends neither on the batch size, nor on the other images, nor on the number of processes.

An image's record is its `<stem>_summary.json` without the settings, appended once its files are in place to the
process's records file (docs/predict.md; a line cut short by a kill is ignored), which summary.json is built from."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..data.io import load_image
from ..distributed import gather_objects, process_info, shard, sum_tensor, wait_for_everyone
from ..errors import EXIT_SKIPPED, ConfigError, DataError
from ..pipelines.common import padded_size
from ..pipelines.inputs import (check_some_exist, display_names, expand_image_inputs, first_of_each, read_image_list,
                                select_images, unique_stems)
from ..run_lock import PREDICT, main_process_holds
from .parser import OUTPUTS, PER_IMAGE_OUTPUTS
from .report import open_atomically, write_report
from ..pipelines.visualize import hex_colour, palette_for, save_prediction, tints_class_zero
from ..seeding import seeded_generator

READ_AHEAD = 1  # images decoded on a thread while the model runs
STATE_DIR = ".digseg-predict"  # the run's records and staging folder, in the output folder


@dataclass
class PredictResult:
    """What a run did (every process's): `images` finished (`written` now + `reused` from an earlier run);
    `skipped`: {"name", "source", "reason"} per file that could not be read; report: None when not asked for."""

    images: int
    written: int
    reused: int
    skipped: list[dict]
    summary: Path
    report: Path | None
    num_processes: int = 1

    @property
    def exit_status(self) -> int:
        """EXIT_SKIPPED when files were skipped, in a single process (a launcher takes any other status for a crash)."""
        return EXIT_SKIPPED if self.skipped and self.num_processes == 1 else 0

    def message(self) -> str:
        """The run's closing line(s): counts, where things are, and the skipped files if any."""
        kept = f" ({self.reused} kept from an earlier run)" if self.reused else ""
        text = f"wrote predictions for {self.images} image(s) to {self.summary.parent}{kept}"
        text += f"; report: {self.report}" if self.report is not None else f"; summary: {self.summary}"
        if self.skipped:
            text += (f"\nskipped {len(self.skipped)} of {self.images + len(self.skipped)} image(s) that could not "
                     f"be read (listed in {self.summary.name} and the report); exit status {self.exit_status}")
        return text


def images_by_adapter(items: list[str] | None, image_list: str | Path | None, adapters: dict[str, str],
                      use: str | None) -> dict[str | None, list[Path]]:
    """`--image` items and `--image-list` lines -> {adapter name: its image paths, in order, each once}. A list line
    may name its adapter after a tab ("photos/a.png<TAB>roads"); every other input goes to `use` (default: the only
    one of `adapters`; None with none or several). Nothing is decoded."""
    default = use if use is not None else (next(iter(adapters)) if len(adapters) == 1 else None)
    lines = read_image_list(image_list) if image_list is not None else []
    if not any("\t" in line for line in lines):
        return {default: select_images(items, image_list)}
    groups: dict[str | None, list[Path]] = {default: expand_image_inputs(items)} if items else {}
    for line in lines:
        path, _, name = line.partition("\t")
        name = name.strip() or default
        if name != default and name not in adapters:
            number = next(n for n, raw in enumerate(Path(image_list).read_text(encoding="utf-8-sig").splitlines(), 1)
                          if raw.strip() == line)
            known = f"the --adapter names are {', '.join(adapters)}" if adapters else "no --adapter was given"
            raise ConfigError(f"image list {image_list}, line {number}: unknown adapter {name!r} ({known})")
        groups.setdefault(name, []).append(Path(path.rstrip()))
    groups = {name: first_of_each(paths) for name, paths in groups.items()}
    check_some_exist([p for paths in groups.values() for p in paths])
    return groups


def size_batches(keyed: Iterable[tuple[Any, Any]], batch_size: int, max_pending: int) -> Iterator[list]:
    """(key, item) pairs (key: an image's processed size) -> batches of up to `batch_size` items of one key, holding
    at most `max_pending` items: beyond that, the key waiting longest goes out as a smaller batch."""
    buckets: dict[Any, list] = {}  # insertion order: the oldest waiting key first
    for key, item in keyed:
        buckets.setdefault(key, []).append(item)
        if len(buckets[key]) >= batch_size:
            yield buckets.pop(key)
        while sum(map(len, buckets.values())) > max_pending:
            yield buckets.pop(next(iter(buckets)))
    yield from buckets.values()


def _read_ahead(paths: list[Path], indices: list[int]) -> Iterator[tuple[int, Any]]:
    """(i, RGB image as displayed, or the DataError saying why it cannot be read), read READ_AHEAD ahead on a thread."""
    def read(i: int):
        try:
            return load_image(paths[i], exif_transpose=True)
        except DataError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=1) as pool:
        queue: deque = deque()
        for k, i in enumerate(indices):
            queue.append((i, pool.submit(read, i)))
            while queue and (len(queue) > READ_AHEAD or k == len(indices) - 1):
                j, future = queue.popleft()
                yield j, future.result()


def partial_dir(out_dir: Path) -> Path:
    """Where images are written before they are moved into `out_dir`."""
    return Path(out_dir) / STATE_DIR / "partial"


def _settings_of(path: Path) -> dict | None:
    """The settings line a records file starts with (None: no complete settings line)."""
    with open(path, "rb") as f:
        try:
            return json.loads(f.readline())["settings"]
        except (ValueError, KeyError, TypeError):
            return None


def publish(staging: Path, out_dir: Path) -> None:
    """Move an image's files from `staging` into `out_dir` (os.replace: each atomic), then remove `staging`."""
    for path in sorted(staging.iterdir()):
        os.replace(path, out_dir / path.name)
    staging.rmdir()


class RecordWriter:
    """Appends this process's finished images to its records file, one line each, flushed at once. The file (and
    its settings line) is made at the first image; one of the same settings from an earlier run is continued."""

    def __init__(self, out_dir: Path, rank: int, settings: dict):
        self.path, self.settings = Path(out_dir) / STATE_DIR / f"records-{rank:05d}.jsonl", settings
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
        for path in sorted((self.out_dir / STATE_DIR).glob("records-*.jsonl")):
            with open(path, "rb") as f:
                offset = len(f.readline())  # the settings line
                for line in f:
                    try:
                        self.where[json.loads(line)["stem"]] = (path, offset)
                    except (ValueError, KeyError, TypeError):
                        pass  # cut short by a kill: the image was not finished
                    offset += len(line)

    def get(self, stem: str) -> dict:
        path, offset = self.where[stem]
        with open(path, "rb") as f:
            f.seek(offset)
            record = json.loads(f.readline())
        record.pop("stem")
        return record

    def finished(self, stem: str, source: Path) -> bool:
        """True when `stem` has a record for this `source` and every file it lists is in the output folder."""
        record = self.get(stem) if stem in self.where else None
        if record is None or Path(record["source"]).resolve() != source.resolve():
            return False
        files = record["files"]
        listed = [v for v in files.values() if isinstance(v, str)] + [m["file"] for m in files["probabilities"]]
        return all((self.out_dir / name).is_file() for name in listed)


def class_fractions(labels: np.ndarray, class_names: list[str]) -> tuple[list[dict], float]:
    """labels [H, W] int (255 = no class) -> (one dict per class present, fraction of unlabelled pixels)."""
    k = len(class_names)
    counts = np.bincount(labels[labels < k].ravel(), minlength=k)
    colours = palette_for(k)
    total = labels.size
    classes = [{"id": int(c), "name": class_names[c], "pixels": int(counts[c]),
                "fraction": round(float(counts[c]) / total, 4), "colour": hex_colour(colours[c]),
                "tinted": bool(c != 0 or tints_class_zero(class_names))} for c in np.flatnonzero(counts)]
    return classes, round(float(total - counts.sum()) / total, 4)


def write_image_outputs(out_dir: Path, stem: str, name: str, source: Path, image: Image.Image, labels: np.ndarray,
                        probabilities: np.ndarray, class_names: list[str], uncertainty: np.ndarray | None,
                        settings: dict, probability_class_ids: np.ndarray | None = None,
                        kinds: Collection[str] = PER_IMAGE_OUTPUTS) -> dict:
    """Write the files of `kinds` for one image -> its record (module docstring). image RGB, W x H; labels [H, W]
    int; probabilities [n, H, W] of the classes `probability_class_ids` [n] (default: all K); uncertainty [H, W]."""
    files = save_prediction(out_dir, stem, np.asarray(image), labels, probabilities, class_names, uncertainty,
                            probability_class_ids, kinds)
    copy = None
    if "input" in kinds:  # the RGB pixels segmented, as displayed: JPEG (quality 92) for JPEG inputs, else PNG
        jpeg = source.suffix.lower() in (".jpg", ".jpeg")
        copy = out_dir / f"{stem}_input.{'jpg' if jpeg else 'png'}"
        image.save(copy, **({"quality": 92} if jpeg else {}))
    classes, unlabelled = class_fractions(labels, class_names)
    summary_path = out_dir / f"{stem}_summary.json" if "json" in kinds else None
    name_of = lambda path: path.name if path is not None else None  # noqa: E731
    record = {"name": name, "source": str(source), "image_size": {"width": image.width, "height": image.height},
              "classes": classes, "unlabelled_fraction": unlabelled,
              "files": {"input": name_of(copy), "label": name_of(files.label), "overlay": name_of(files.overlay),
                        "overlay_legend": name_of(files.overlay_legend), "summary": name_of(summary_path),
                        "probabilities": [{"class": c, "file": p.name} for c, p in files.probabilities],
                        "uncertainty": name_of(files.uncertainty)}}
    if files.uncertainty is None and "uncertainty" in kinds:
        record["uncertainty_note"] = "no uncertainty map: ensemble size 1 (pass --ensemble-size 2 or more)"
    if summary_path is not None:
        summary_path.write_text(json.dumps({**record, "settings": settings}, indent=2, ensure_ascii=False),
                                encoding="utf-8")
    return record


def run_predict(pipe, paths: list[Path], out_dir: Path, call_kwargs: dict, settings: dict, seed: int = 0,
                batch_size: int = 1, skip_existing: bool = False, show_progress: bool | None = None,
                outputs: Sequence[str] = OUTPUTS) -> PredictResult:
    """Predict every image of `paths` into `out_dir`, holding its lock; write summary.json and, with "report" in
    `outputs`, index.html. Under a launcher, every process calls this with the same arguments. call_kwargs: the
    pipeline's arguments, the same for every image; settings: what the run records (JSON values; the outputs are
    added). show_progress: None shows the bar only when stderr is a terminal."""
    out_dir = Path(out_dir)
    with main_process_holds(out_dir, PREDICT):
        rank, world = process_info()
        kinds = [k for k in PER_IMAGE_OUTPUTS if k in outputs]
        settings = json.loads(json.dumps({**settings, "outputs": list(outputs)}))  # as stored, to compare with them
        names, stems = display_names(paths), unique_stems(paths)

        # 1. what is left to do: with skip_existing, the images an earlier run of the same settings finished
        todo = list(range(len(paths)))
        if skip_existing:
            for path in sorted((out_dir / STATE_DIR).glob("records-*.jsonl")):  # another run's images: refused
                earlier = _settings_of(path)
                if earlier is not None and earlier != settings:
                    changed = sorted(k for k in set(settings) | set(earlier) if settings.get(k) != earlier.get(k))
                    raise ConfigError(f"--skip-existing: {out_dir} holds a run with other settings "
                                      f"({', '.join(changed)}); use another --output, or drop --skip-existing to "
                                      "predict every image again")
            index = RecordIndex(out_dir)
            todo = [i for i in todo if not index.finished(stems[i], paths[i])]
        if len(todo) < len(paths) and rank == 0:
            print(f"--skip-existing: {len(paths) - len(todo)} of {len(paths)} image(s) already finished in {out_dir}")
        wait_for_everyone()  # every process has read the records before the main process may drop them
        if rank == 0 and not skip_existing:  # a new run: forget the images of an earlier run here
            for path in (out_dir / STATE_DIR).glob("records-*.jsonl"):
                path.unlink()
        wait_for_everyone()

        # 2. this process's share, batched by processed size
        mine = [i for _, i in shard(todo)]
        resolution = call_kwargs.get("processing_resolution")
        resolution = pipe.config.default_processing_resolution if resolution is None else resolution  # 0: native
        skipped: dict[int, dict] = {}
        bar = tqdm(total=len(mine), desc="predict", unit="image",
                   disable=rank != 0 or ((not show_progress) if show_progress is not None else None))
        records = RecordWriter(out_dir, rank, settings)

        def run_batch(batch: list[tuple[int, Any]]) -> None:
            images = [image for _, image in batch]
            result = pipe(images, generator=[seeded_generator(seed, i) for i, _ in batch], batch_size=len(batch),
                          show_progress_bar=False, **call_kwargs)
            for j, (i, image) in enumerate(batch):
                staging = partial_dir(out_dir) / stems[i]
                shutil.rmtree(staging, ignore_errors=True)  # left by a run killed while writing this image
                unc = result.uncertainty[j] if result.uncertainty is not None else None
                record = write_image_outputs(staging, stems[i], names[i], paths[i], image, result.labels[j],
                                             result.probabilities[j], result.class_names, unc, settings,
                                             result.probability_class_ids[j], kinds)
                publish(staging, out_dir)
                records.add(stems[i], record)  # from here on the image counts as finished
                bar.write(f"{names[i]}: " + ", ".join(f"{c['name']} {c['fraction']:.1%}" for c in record["classes"]))
                bar.update(1)

        def readable() -> Iterator[tuple[tuple[int, int], tuple[int, Image.Image]]]:  # (processed size, (i, image))
            for i, image in _read_ahead(paths, mine):
                if isinstance(image, DataError):
                    skipped[i] = {"name": names[i], "source": str(paths[i]), "reason": str(image)}
                    bar.write(f"skipped: {image}", file=sys.stderr)  # the reason names the file
                    bar.update(1)
                    continue
                yield padded_size(image.height, image.width, resolution, pipe.pad_multiple, call_kwargs.get("scale"),
                                  call_kwargs.get("keep_ratio", True)), (i, image)

        try:
            for batch in size_batches(readable(), batch_size, max_pending=2 * batch_size):
                run_batch(batch)
        finally:
            bar.close()
            records.close()

        # 3. every process's outcome; the main process writes summary.json and the report
        wait_for_everyone()
        every_skipped = dict(gather_objects(list(skipped.items())))  # {image index: entry}, all processes'
        missed = [every_skipped[i] for i in sorted(every_skipped)]
        written = int(sum_tensor(torch.tensor(len(mine) - len(skipped))))
        done = [stems[i] for i in range(len(paths)) if i not in every_skipped]
        out_dir.mkdir(parents=True, exist_ok=True)
        if rank == 0:
            with contextlib.suppress(OSError):  # a staging folder still holding files: another run writes here
                partial_dir(out_dir).rmdir()
            index = RecordIndex(out_dir)
            runtime = pipe.runtime_info(world)
            write_run_summary(out_dir, map(index.get, done), missed, runtime)
            if "report" in outputs:
                shown = dict(settings, runtime=f"{runtime['device']} ({runtime['device_name']}), {runtime['dtype']}, "
                                               f"torch {runtime['torch']}, diffusers {runtime['diffusers']}")
                write_report(out_dir, map(index.get, done), shown, skipped=missed, num_entries=len(done))
        return PredictResult(images=len(done), written=written, reused=len(paths) - len(todo), skipped=missed,
                             summary=out_dir / "summary.json",
                             report=out_dir / "index.html" if "report" in outputs else None, num_processes=world)


def write_run_summary(out_dir: Path, records: Iterable[dict], skipped: list[dict], runtime: dict) -> None:
    """`<out_dir>/summary.json` (docs/predict.md), written one image at a time and replaced atomically."""
    with open_atomically(out_dir / "summary.json") as f:
        f.write('{\n  "runtime": ' + json.dumps(runtime, ensure_ascii=False) + ',\n  "images": {')
        for k, r in enumerate(records):
            fractions = {c["name"]: c["fraction"] for c in r["classes"]}
            f.write(f'{"," if k else ""}\n    {json.dumps(r["name"], ensure_ascii=False)}: '
                    f'{json.dumps(fractions, ensure_ascii=False)}')
        f.write('\n  },\n  "skipped": ' + json.dumps(skipped, indent=4, ensure_ascii=False) + "\n}\n")
