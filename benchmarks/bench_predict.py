"""`digseg predict` over many small images: peak memory (does it stay flat?) and images/s by batch size.

Runs the real command, `python -m digseg.cli predict ...`, as a subprocess per (image count, batch size) and
reports for each:

- peak RSS: the child's own maximum resident set size, from `os.wait4` (the kernel's ru_maxrss, which counts
  every page the process ever had resident; no sampling);
- images/s: steady state, from the times the per-image result lines reach stdout (`PYTHONUNBUFFERED=1`):
  the images printed after the first batch's lines, divided by the time from the first batch's lines to the
  last line. Model loading and start-up are so left out;
- wall time of the whole command.

Model: the tiny RANDOM test model (`digseg.models.tiny`, 64 px processing), so these are speed and memory
figures of the predict loop, not of a real model. Images: random RGB PNGs, `--size` px square, written once
into `<work>/images-<count>/`.

Usage::

    python benchmarks/bench_predict.py                              # 100 and 1000 images, batch 1 and 8
    python benchmarks/bench_predict.py --counts 200 --repeats 5     # speed: 5 alternating rounds, medians
    python benchmarks/bench_predict.py --disk --model M             # disk use per image, by --outputs

``--disk`` runs `digseg predict` once per `--outputs` choice over `--disk-images` photo-like JPEGs (synthetic
scenes, `--disk-size` px square, quality 90) and prints the files and bytes written per image, and the fixed
files of the run. `--model` (default: the tiny random model) should be a trained one: a random model's noisy
label maps compress worse than real ones.

With ``--repeats R``, each count runs R rounds; each round runs every batch size once, in alternating order, so
background load hits them alike. The table gives the median images/s and wall time and the largest peak RSS
over the rounds; the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import gib, wait_for_child

ROOT = Path(__file__).resolve().parents[1]


def build_model(work: Path) -> Path:
    """The tiny random DiGSeg model (the synthetic scenes' 4 classes), saved once under `work`."""
    model = work / "model"
    if (model / "model_index.json").is_file():
        return model
    from digseg import DiGSegPipeline
    from digseg.data.synthetic import SYNTHETIC_CLASSES
    from digseg.models.tiny import save_tiny_backbone

    backbone = save_tiny_backbone(work / "tiny-sd", seed=0)
    DiGSegPipeline.from_backbone(backbone, class_names=list(SYNTHETIC_CLASSES)).save_pretrained(model)
    return model


def write_images(folder: Path, count: int, size: int) -> Path:
    """`count` random RGB PNGs, size x size (kept between runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(count):
        path = folder / f"img{k:05d}.png"
        if not path.exists():
            Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(path)
    return folder


def run_predict(model: Path, images: Path, out: Path, batch_size: int, threads: int) -> dict:
    """One `digseg predict` subprocess -> {peak_rss_gib, wall_s, images_per_s, images}."""
    command = [sys.executable, "-m", "digseg.cli", "predict", "--model", str(model), "--image", str(images),
               "--output", str(out), "--steps", "1", "--no-progress", "--batch-size", str(batch_size)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    stamps = []
    for line in proc.stdout:
        if ": " in line and not line.startswith(("wrote ", "skipped")):
            stamps.append(time.perf_counter())
    peak = wait_for_child(proc)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited with {proc.returncode}")
    first = stamps[0]
    later = [t for t in stamps if t - first > 1e-3]  # the lines after the first batch's
    rate = len(later) / (stamps[-1] - first) if later else float("nan")
    return {"images": len(stamps), "peak_rss_gib": gib(peak), "wall_s": wall, "images_per_s": rate}


DISK_OUTPUTS = ["all", "labels,overlay,json,report", "labels,json", "labels"]


def bench_disk(model: Path, work: Path, count: int, size: int, threads: int) -> None:
    """Files and bytes per image that `digseg predict` writes, by --outputs (see the module docstring)."""
    from digseg.data.synthetic import SyntheticScenes

    images = work / f"scenes-{count}-{size}"
    images.mkdir(parents=True, exist_ok=True)
    scenes = SyntheticScenes(count, size=size, seed=1)
    for k in range(count):
        path = images / f"scene{k:04d}.jpg"
        if not path.exists():
            Image.fromarray(scenes.scene(k)[0]).save(path, quality=90)
    source = sum(p.stat().st_size for p in images.iterdir()) / count
    print(f"{count} synthetic scenes, {size}x{size} JPEG (quality 90, {source / 1024:.1f} KiB each); model {model}")
    print("| --outputs | files per image | KiB per image | x input | run files (summary, report, records) |")
    print("|---|---:|---:|---:|---:|")
    for outputs in DISK_OUTPUTS:
        out = work / f"disk-{outputs.replace(',', '+')}"
        shutil.rmtree(out, ignore_errors=True)
        command = [sys.executable, "-m", "digseg.cli", "predict", "--model", str(model), "--image", str(images),
                   "--output", str(out), "--no-progress", "--batch-size", "8", "--outputs", outputs]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads),
                   PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        files = [p for p in out.rglob("*") if p.is_file()]
        per_image = [p for p in files if p.name.startswith("scene")]
        run_files = len(files) - len(per_image)
        size_per_image = sum(p.stat().st_size for p in per_image) / count
        print(f"| {outputs} | {len(per_image) / count:.1f} | {size_per_image / 1024:.1f} | "
              f"{size_per_image / source:.2f} | {run_files} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="100,1000", help="image counts, comma-separated")
    parser.add_argument("--batch-sizes", default="1,8", help="--batch-size values, comma-separated")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads of the command")
    parser.add_argument("--repeats", type=int, default=1, help="alternating rounds per count (medians reported)")
    parser.add_argument("--work", default="/tmp/bench-predict", help="model, images and outputs go here")
    parser.add_argument("--disk", action="store_true", help="measure disk use per image by --outputs instead")
    parser.add_argument("--model", help="--disk: a trained model folder (default: the tiny random model)")
    parser.add_argument("--disk-images", type=int, default=50)
    parser.add_argument("--disk-size", type=int, default=512)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = Path(args.model) if args.model else build_model(work)
    if args.disk:
        bench_disk(model, work, args.disk_images, args.disk_size, args.threads)
        return
    counts = [int(c) for c in args.counts.split(",")]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    print(f"load average {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs; tiny random model; {args.size} px PNGs")
    print(f"{args.repeats} round(s) per count")
    print("| images | --batch-size | peak RSS (GiB) | images/s (steady) | wall (s) |")
    print("|---:|---:|---:|---:|---:|")
    for count in counts:
        images = write_images(work / f"images-{count}", count, args.size)
        runs: dict[int, list[dict]] = {b: [] for b in batch_sizes}
        for round_ in range(args.repeats):
            for batch_size in batch_sizes if round_ % 2 == 0 else batch_sizes[::-1]:
                out = work / f"out-{count}-b{batch_size}"
                shutil.rmtree(out, ignore_errors=True)
                r = run_predict(model, images, out, batch_size, args.threads)
                assert r["images"] == count, r
                runs[batch_size].append(r)
        for batch_size, rs in runs.items():
            rate = statistics.median(r["images_per_s"] for r in rs)
            wall = statistics.median(r["wall_s"] for r in rs)
            rss = max(r["peak_rss_gib"] for r in rs)
            print(f"| {count} | {batch_size} | {rss:.3f} | {rate:.1f} | {wall:.0f} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
