"""Test-protocol benchmark: slide against whole on wide images, memory and files of a large vocabulary, and
eval throughput batched against one image per pipeline call.

Three measurements on a trained DiGSeg model folder (e.g. a tiny model from `digseg quickstart` or `digseg
train` on the synthetic scenes, 64 px):

- ``wide``: wide images made of `--scenes` held-out synthetic scenes side by side (64 x 320 for 5), palette
  mode. mIoU (dataset-level, mmseg semantics) of whole-image inference at the model's processing resolution
  (the longer side shrunk to 64 px), whole at the native size, and sliding windows of the model's size
  (stride 2/3 of it) with and without flip / global view. Same seed per image in every mode.
- ``memory``: `digseg predict` on one 683 x 512 image with the 847 ADE20K-847 class names against one class
  name, in a subprocess: peak RSS (`os.wait4`'s ru_maxrss) and files written.
- ``throughput``: `digseg.evaluation.dataset_eval.predict_dataset` over `--images` synthetic scenes (a folder dataset),
  images per second with `batch_size` 1 (one image per pipeline call) and 8, whole and slide, best of 5
  interleaved runs; the label PNGs of the two batch sizes are compared (they must be identical: each image's
  noise is seeded by its index).

Figures are for the model given (state it), on this machine's CPU; no accuracy claim about the paper.

Usage::

    python benchmarks/bench_eval_protocol.py --model /tmp/qs_slide_train wide memory throughput
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from digseg import DiGSegPipeline
from digseg.data.base import read_class_file
from digseg.data.synthetic import SyntheticScenes, save_scenes_as_folder
from digseg.evaluation.metrics import SegmentationMetric
from digseg.evaluation.protocols import TestProtocol, tiling_scale

from common import gib, wait_for_child


def wide_images(count: int, scenes: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """`count` images of `scenes` held-out synthetic scenes side by side: uint8 [64, 64*scenes, 3], labels."""
    data = SyntheticScenes(count * scenes, seed=seed)
    images, labels = [], []
    for i in range(count):
        parts = [data.scene(i * scenes + j) for j in range(scenes)]
        images.append(np.concatenate([p[0] for p in parts], axis=1))
        labels.append(np.concatenate([p[1] for p in parts], axis=1))
    return images, labels


def bench_wide(pipe: DiGSegPipeline, count: int, scenes: int, seed: int) -> None:
    images, labels = wide_images(count, scenes, seed)
    size = pipe.config.default_processing_resolution
    tiled = tiling_scale(TestProtocol(mode="slide"), size)  # what `digseg predict --mode slide` runs
    modes = {
        f"whole, longer side -> {size} px (default)": dict(),
        "whole, native size": dict(processing_resolution=0),
        f"slide {size} / {size * 2 // 3}, no scale given: keep-ratio {tiled.scale} (`predict --mode slide`)":
            tiled.call_kwargs(),
        f"slide {size} / {size * 2 // 3}, native size": dict(processing_resolution=0, mode="slide"),
        "slide + flip": dict(processing_resolution=0, mode="slide", flip=True),
        "slide + global view": dict(processing_resolution=0, mode="slide", global_view=True),
    }
    print(f"\n## wide images: {count} images of {scenes} scenes ({images[0].shape[1]}x{images[0].shape[0]}), palette mode")
    print("| mode | mIoU | s/image |\n| --- | --- | --- |")
    reference = SegmentationMetric(len(pipe.config.class_names), 255, list(pipe.config.class_names))
    for i, image in enumerate(images):  # the same scenes one at a time: what the model can do
        for j in range(scenes):
            part = slice(j * 64, (j + 1) * 64)
            out = pipe(image[:, part], num_inference_steps=1, generator=torch.Generator().manual_seed(seed + i),
                       show_progress_bar=False)
            reference.update(torch.as_tensor(out.labels[0]), torch.as_tensor(labels[i][:, part]))
    print(f"| (reference: the same scenes one at a time, 64x64) | {reference.compute()['mIoU']:.2f} | - |", flush=True)
    for name, kwargs in modes.items():
        metric = SegmentationMetric(len(pipe.config.class_names), 255, list(pipe.config.class_names))
        start = time.perf_counter()
        for i, (image, label) in enumerate(zip(images, labels)):
            out = pipe(image, num_inference_steps=1, generator=torch.Generator().manual_seed(seed + i),
                       show_progress_bar=False, **kwargs)
            metric.update(torch.as_tensor(out.labels[0]), torch.as_tensor(label))
        seconds = (time.perf_counter() - start) / len(images)
        print(f"| {name} | {metric.compute()['mIoU']:.2f} | {seconds:.3f} |", flush=True)


def _predict_peak(model: str, image: Path, names: list[str], out: Path) -> tuple[float, int]:
    """Peak RSS (GiB) of a `digseg predict` subprocess and the number of files it wrote."""
    classes = out.parent / f"{out.name}_classes.txt"
    classes.write_text("\n".join(names), encoding="utf-8")
    cmd = [sys.executable, "-m", "digseg.cli", "predict", "--model", model, "--image", str(image),
           "--classes-file", str(classes), "--no-progress", "--output", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    err = proc.stderr.read()
    peak = wait_for_child(proc)
    if proc.returncode != 0:
        raise SystemExit(err[-2000:])
    return gib(peak), sum(1 for p in out.iterdir() if p.is_file())


def bench_memory(model: str) -> None:
    names = read_class_file("ade20k_847.txt")
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "photo.jpg"
        rng = np.random.default_rng(0)
        Image.fromarray((rng.random((512, 683, 3)) * 255).astype(np.uint8)).save(image)
        print("\n## digseg predict on one 683x512 image: peak RSS and files written")
        print("| class names | peak RSS (GiB) | files |\n| --- | --- | --- |")
        rows = {}
        for label, chosen in (("1", names[:1]), ("847 (ADE20K-847)", names)):
            rows[label] = _predict_peak(model, image, chosen, Path(tmp) / f"out{len(chosen)}")
            print(f"| {label} | {rows[label][0]:.3f} | {rows[label][1]} |", flush=True)
        (one_gib, one_files), (big_gib, big_files) = rows.values()
        print(f"847 / 1: memory x{big_gib / one_gib:.2f}, {big_files - one_files} more files")


def bench_throughput(pipe: DiGSegPipeline, count: int, repeats: int = 5) -> None:
    from digseg.data.registry import get_dataset_class
    from digseg.evaluation.dataset_eval import predict_dataset
    from digseg.evaluation.protocols import TestProtocol

    size = pipe.config.default_processing_resolution
    with tempfile.TemporaryDirectory() as tmp:
        root = save_scenes_as_folder(SyntheticScenes(count, seed=11), Path(tmp) / "data")
        dataset = get_dataset_class("folder")(root, split="val", val_fraction=1)  # every scene
        print(f"\n## eval throughput: {count} synthetic {size} px scenes, palette mode, 1x1 E-step, best of {repeats}"
              f" (load average {os.getloadavg()[0]:.1f})")
        print("| protocol | images per pipeline call | images/s |\n| --- | --- | --- |")
        for name, protocol in (("whole", TestProtocol()),
                               (f"slide {size // 2} / {size // 3}", TestProtocol("slide", (size // 2,) * 2, (size // 3,) * 2))):
            results = {1: 0.0, 8: 0.0}
            for batch in results:  # warm-up
                predict_dataset(pipe, dataset, Path(tmp) / f"{name[:5]}-{batch}", num_inference_steps=1,
                                protocol=protocol, batch_size=batch, show_progress=False)
            for _ in range(repeats):  # interleaved; the best of `repeats` (the machine is shared)
                for batch in results:
                    start = time.perf_counter()
                    predict_dataset(pipe, dataset, Path(tmp) / f"{name[:5]}-{batch}", num_inference_steps=1,
                                    protocol=protocol, batch_size=batch, show_progress=False)
                    results[batch] = max(results[batch], count / (time.perf_counter() - start))
            for batch, rate in results.items():
                print(f"| {name} | {batch} | {rate:.1f} |", flush=True)
            same = all(np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(Path(tmp) / f"{name[:5]}-8" / p.name)))
                       for p in (Path(tmp) / f"{name[:5]}-1").glob("*.png"))
            print(f"{name}: batched x{results[8] / results[1]:.2f}; label maps identical: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a trained DiGSeg model folder")
    parser.add_argument("what", nargs="+", choices=["wide", "memory", "throughput"])
    parser.add_argument("--wide-images", type=int, default=20)
    parser.add_argument("--scenes", type=int, default=5)
    parser.add_argument("--images", type=int, default=32, help="throughput: number of scenes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(f"model {args.model}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    pipe = DiGSegPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    if "wide" in args.what:
        bench_wide(pipe, args.wide_images, args.scenes, 1000 + args.seed)
    if "memory" in args.what:
        bench_memory(args.model)
    if "throughput" in args.what:
        bench_throughput(pipe, args.images)


if __name__ == "__main__":
    main()
