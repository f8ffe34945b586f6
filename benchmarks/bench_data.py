"""The data stage's throughput: JPEG decode + augmentation to training crops in 0/1/2 DataLoader workers, and
tiny-model training steps/s with 0 and 2 workers; then how many workers an SD2-sized GPU step needs.

    python benchmarks/bench_data.py                                      # ~45 s on a quiet machine, 2 cores
    python benchmarks/bench_data.py --quick                              # smoke run, ~25 s
    python benchmarks/bench_data.py --gpu-check --json $OUT/data.json    # short run for benchmarks/gpu_check.sh

Data: photo-like images (per-region colours, smooth shading, sensor noise) written as JPEG (quality 90) with
PNG label maps into a temporary folder in the `folder` layout (images/<stem>.jpg, masks/<stem>.png,
classes.txt), read by the registered `folder` reader, as a user's dataset is:
- cityscapes-sized: 2048x1024, 19 classes, the `cityscapes` preset (scale (2048, 1024), crop 512x1024);
- ade20k-sized: 683x512, 150 classes, the `ade20k-150` preset (scale (2048, 512), crop 512x512).

Per-image cost: `load_pair` (JPEG + PNG decode) and `apply_augmentation` in this process, one thread, median
wall and CPU ms (CPU ms is what one dedicated core would spend, whatever the load).

Data stage: `TrainingData.micro_steps` (`TrainingSamples` + `MicroStepSampler` in a torch DataLoader), as the
trainer reads it. The consumer does nothing ("idle": what the workers can supply), or runs the trainer's
`LatentBatcher.make_batch` with a zero-cost stand-in for the VAE ("make_batch, no VAE": queries, mask targets,
keep masks, the CPU work the training process adds per image). images/s is the steady rate after the first
batch of every worker (start-up excluded: one loader spans a run). "cores used" = CPU seconds of this process
and its workers per wall second (below the worker count when other processes hold the cores). "training-process CPU
ms/image" = what the data stage costs the process that drives the GPU (with workers: receiving and stacking
the float32 crops, plus make_batch where it runs).

Training: `build_run` on a tiny backbone (`save_tiny_backbone`) over the ade20k-sized folder at a small crop
(`--train-crop`, the ADE preset's scale follows the crop), augmentation on, `--train-steps` steps; steps/s
from the 4th step on (the trainer's own loop, `Trainer._run_steps`, timed at each step's end).

Workers needed = per-image CPU cost x images/s of one GPU; beside it, the training process's own CPU per image
(make_batch rows) x the same rate, in cores. No GPU is measured here: the GPU rate is an ASSUMPTION
(ASSUMED_GPU_IMAGES_PER_S below), unless `--gpu-images-per-s` is given or a `training.json` written by
benchmarks/bench_training.py lies beside `--json` (as in gpu_check.sh): then its best images/s is used.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from digseg.data.augment import apply_augmentation, augmentation_for
from digseg.data.registry import build_dataset
from digseg.training.batches import LatentBatcher, slot_generators
from digseg.training.samples import TrainingData
from digseg.training.samples import TrainingSamples, augmentation_generator

from common import StopSteps, load_average

# ASSUMPTION, not a measurement: images/s of one SD2-sized DiGSeg training step (512x512, bf16, U-Net forward +
# backward, two VAE encodes per image: ~4.2 TFLOP per image from the FLOP counts in docs/benchmarks.md) on one
# H100-class GPU. 30 img/s ~ 13% of the H100's dense bf16 peak (plausible for SD fine-tuning with its VAE
# encodes); 90 img/s ~ 40% of peak (an upper bound). benchmarks/bench_training.py measures it on a GPU.
ASSUMED_GPU_IMAGES_PER_S = (30.0, 90.0)

CASES = {  # name -> (width, height, number of classes, augmentation preset)
    "cityscapes-sized": (2048, 1024, 19, "cityscapes"),
    "ade20k-sized": (683, 512, 150, "ade20k-150"),
}


def cpu_seconds(children: bool = True) -> float:
    """CPU seconds of this process and (by default) its reaped children (finished DataLoader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    total = own.ru_utime + own.ru_stime
    if children:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        total += kids.ru_utime + kids.ru_stime
    return total


# ------------------------------------------------------------------------------------------------- data


def photo_like(rng: np.random.Generator, width: int, height: int, num_classes: int) -> tuple[Image.Image, Image.Image]:
    """An RGB image and its label map ("L", class ids): Voronoi regions of 12-30 classes, each with its colour,
    smooth shading and noise, so JPEG sizes and decode times resemble photographs'."""
    gh, gw = max(1, height // 4), max(1, width // 4)  # regions computed at 1/4 size, then upscaled (blocky edges)
    points = rng.uniform(0, 1, size=(int(rng.integers(12, 31)), 2)) * (gh, gw)  # [P, 2]
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)
    dist = (yy[None] - points[:, 0, None, None]) ** 2 + (xx[None] - points[:, 1, None, None]) ** 2  # [P, gh, gw]
    region_class = rng.integers(0, num_classes, size=len(points)).astype(np.uint8)
    label = Image.fromarray(region_class[dist.argmin(0)]).resize((width, height), Image.NEAREST)
    colours = rng.uniform(30, 225, size=(num_classes, 3)).astype(np.float32)
    pixels = colours[np.asarray(label)]  # [H, W, 3]
    shading = rng.normal(0, 25, size=(6, 12, 3)).astype(np.float32)
    shading = np.stack([np.asarray(Image.fromarray(shading[..., c], mode="F").resize((width, height), Image.BILINEAR))
                        for c in range(3)], -1)  # [H, W, 3] low-frequency light
    pixels += shading + rng.normal(0, 6, size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), label


def write_folder(root: Path, count: int, width: int, height: int, num_classes: int, seed: int = 0) -> Path:
    """`count` JPEG/PNG pairs in the `folder` layout (images/, masks/, classes.txt); returns `root`."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("".join(f"class {i}\n" for i in range(num_classes)))
    rng = np.random.default_rng(seed)
    for i in range(count):
        image, label = photo_like(rng, width, height, num_classes)
        image.save(root / "images" / f"photo_{i:04d}.jpg", quality=90)
        label.save(root / "masks" / f"photo_{i:04d}.png")
    return root


# ------------------------------------------------------------------------------------------------- timing


def per_image_cost(dataset, aug, count: int) -> dict:
    """Median wall and CPU ms of reading (decode) and augmenting one sample, in this process, one thread."""
    walls: dict[str, list[float]] = {"read": [], "augment": []}
    cpus: dict[str, list[float]] = {"read": [], "augment": []}
    for k in range(count + 1):
        w0, c0 = time.perf_counter(), time.process_time()
        image, label = dataset.load_pair(k % len(dataset))
        w1, c1 = time.perf_counter(), time.process_time()
        apply_augmentation(image, label, aug, augmentation_generator(0, k, 0), 255)
        w2, c2 = time.perf_counter(), time.process_time()
        if k:  # the first call warms up
            walls["read"].append(w1 - w0), walls["augment"].append(w2 - w1)
            cpus["read"].append(c1 - c0), cpus["augment"].append(c2 - c1)
    med = lambda xs: 1000 * statistics.median(xs)  # noqa: E731
    total = [a + b for a, b in zip(cpus["read"], cpus["augment"])]
    total_wall = [a + b for a, b in zip(walls["read"], walls["augment"])]
    return {"read_ms": med(walls["read"]), "augment_ms": med(walls["augment"]), "wall_ms": med(total_wall),
            "read_cpu_ms": med(cpus["read"]), "augment_cpu_ms": med(cpus["augment"]), "cpu_ms": med(total)}


class NoVAE:
    """Stands in for the frozen VAE: zero latents at SD's downsampling (8), at no cost, so the trainer's own
    `LatentBatcher._encode_batch` (queries, mask targets, keep masks) runs as in training, minus the VAE."""

    device, dtype = torch.device("cpu"), torch.float32

    class config:  # noqa: N801  (diffusers' attribute name)
        scaling_factor, shift_factor = 1.0, None

    class _Out:
        def __init__(self, mean: torch.Tensor) -> None:
            self.latent_dist = self
            self.mean = mean

    def encode(self, images: torch.Tensor) -> "_Out":
        b, _, h, w = images.shape
        return self._Out(torch.zeros(b, 4, h // 8, w // 8))


def trainer_batcher(dataset) -> LatentBatcher:
    """The trainer's batcher for augmented samples (task both, negative_prob 0.1), over `NoVAE`."""
    return LatentBatcher(dataset, list(dataset.class_names), NoVAE(), "both", "{}", 0.1, cache=False,
                         fixed_samples=False)


def loader_rate(dataset, aug, workers: int, batch_size: int, steps: int, batcher: LatentBatcher | None = None) -> dict:
    """images/s that `workers` DataLoader workers supply through `TrainingData.micro_steps`; the consumer does
    nothing, or (`batcher`) the trainer's `make_batch` without the VAE."""
    data = TrainingData(TrainingSamples(dataset, aug, seed=0), batcher=batcher, num_workers=workers, prefetch_factor=2)
    gc.collect()
    cpu0, main0, start = cpu_seconds(), cpu_seconds(children=False), time.perf_counter()
    arrivals = []
    batches = data.micro_steps(0, steps, batch_size)
    for batch in batches:
        assert batch.images.shape[-2:] == aug.crop_size, batch.images.shape
        if batcher is not None:
            batcher.make_batch(batch.indices, slot_generators(0, batch.micro_step, batch.slots), batch)
        arrivals.append(time.perf_counter())
    batches.close()  # ends the loader: its workers are joined, so their CPU time is counted
    del batches
    gc.collect()
    wall, main = time.perf_counter() - start, cpu_seconds(children=False) - main0
    first = max(1, workers)  # steady state: from the first batch of the last worker to start
    steady = (len(arrivals) - first) * batch_size / (arrivals[-1] - arrivals[first - 1])
    return {"images_per_s": steady, "first_batch_s": arrivals[0] - start, "cores_used": (cpu_seconds() - cpu0) / wall,
            "main_cpu_ms": 1000 * main / (len(arrivals) * batch_size)}


class StepClock:
    """Stands in for the trainer's progress bar: records the time at the end of every optimisation step, and
    after the last of `steps` records the CPU time and stops the loop (before its checkpoint and final save)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.times = [time.perf_counter()]
        self.cpu_end = 0.0

    def update(self, n: int = 1) -> None:
        self.times.append(time.perf_counter())
        if len(self.times) > self.steps:
            self.cpu_end = cpu_seconds()
            raise StopSteps

    def set_postfix(self, **_) -> None:
        pass


def train_rate(root: Path, backbone: Path, workers: int, crop: int, batch_size: int, steps: int, out: Path) -> dict:
    """Tiny-model training steps/s over the folder at `root` (augmentation on), from the 4th step on."""
    from digseg.training.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
    from digseg.training.run import build_run

    config = TrainConfig(
        model=ModelConfig(pretrained=str(backbone)),
        data=DataConfig(dataset="folder", data_root=str(root), crop_size=crop, augmentation=True, num_workers=workers),
        optim=OptimConfig(max_steps=steps, batch_size=batch_size, learning_rate=5e-4, lr_warmup_steps=5),
        run=RunConfig(output_dir=str(out), log_with="none", sample_every=0, checkpoint_every=10**6, log_every=10**6),
    )
    trainer = build_run(config, show_progress=False)
    out.mkdir(parents=True, exist_ok=True)  # Trainer.train() makes it; _run_steps logs into it
    clock = StepClock(steps)
    cpu0 = cpu_seconds()
    try:
        trainer._run_steps(clock)  # the trainer's loop, stopped after the last step (no checkpoint, no final save)
    except StopSteps:
        pass
    gc.collect()  # the loader's generator is gone: its workers are joined
    skip = min(3, steps - 1)
    wall = clock.times[-1] - clock.times[0]
    steps_per_s = (steps - skip) / (clock.times[-1] - clock.times[skip])
    return {"steps_per_s": steps_per_s, "images_per_s": batch_size * steps_per_s, "loss": trainer.last_loss,
            "cores_used": (clock.cpu_end - cpu0) / wall}


# ------------------------------------------------------------------------------------------------- report


def gpu_rates(args: argparse.Namespace) -> tuple[list[float], str]:
    """The GPU images/s to size the workers for, and where that figure comes from."""
    if args.gpu_images_per_s:
        return [args.gpu_images_per_s], "given by --gpu-images-per-s"
    if args.json:
        measured = Path(args.json).with_name("training.json")
        if measured.is_file():
            cells = json.loads(measured.read_text()).get("cells", [])
            if cells:
                best = max(cells, key=lambda c: c["images_per_s"])
                return [float(best["images_per_s"])], (f"MEASURED by bench_training.py ({measured}: batch "
                                                       f"{best['batch']}, checkpointing {best['checkpointing']})")
    return list(ASSUMED_GPU_IMAGES_PER_S), ("ASSUMED (not measured): SD2-sized step, 512 px, bf16, one H100-class "
                                            "GPU; see ASSUMED_GPU_IMAGES_PER_S in this script")


def markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(keys))) + "|"
    lines = ["| " + " | ".join(keys) + " |", rule]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few images and steps")
    parser.add_argument("--gpu-check", action="store_true", help="short run (< 40 s) for benchmarks/gpu_check.sh")
    parser.add_argument("--json", help="write the figures here: keys table (markdown), summary (one line), ...")
    parser.add_argument("--workers", default=None, help="comma-separated worker counts (default 0,1,2)")
    parser.add_argument("--images", type=int, default=None, help="distinct JPEG files per case")
    parser.add_argument("--steps", type=int, default=None, help="micro-steps read per worker count")
    parser.add_argument("--batch", type=int, default=4, help="images per micro-step")
    parser.add_argument("--train-steps", type=int, default=None, help="tiny-model training steps (0: skip)")
    parser.add_argument("--train-crop", type=int, default=64, help="tiny-model training crop (square)")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--gpu-images-per-s", type=float, default=None, help="GPU rate to size workers for")
    args = parser.parse_args()
    small = args.quick or args.gpu_check
    many_cores = args.gpu_check and (os.cpu_count() or 1) >= 8  # the GPU machine: 4 workers too
    workers = [int(w) for w in (args.workers or ("0,1,2,4" if many_cores else "0,1,2")).split(",")]
    images = args.images or (8 if small else 24)
    steps = max(args.steps or (8 if small else 16), 3 * max(workers))  # several batches per worker
    train_steps = args.train_steps
    if train_steps is None:
        train_steps = 0 if args.gpu_check else 12 if args.quick else 30
    torch.set_num_threads(1)
    started = time.perf_counter()
    print(f"# bench_data: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, 1 torch thread per process; load average {load_average(' ')}")
    print(f"# args: {' '.join(sys.argv[1:]) or '(none)'} -> workers {workers}, {images} images per case, "
          f"{steps} micro-steps x batch {args.batch} per worker count, {train_steps} training steps", flush=True)

    loader_rows, cost_rows, train_rows = [], [], []
    costs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        roots = {}
        for name, (width, height, classes, preset) in CASES.items():
            t0 = time.perf_counter()
            roots[name] = write_folder(Path(tmp) / name, images, width, height, classes)
            size_kib = sum(p.stat().st_size for p in (roots[name] / "images").iterdir()) / images / 1024
            print(f"# {name}: {images} JPEGs {width}x{height} (mean {size_kib:.0f} KiB) written in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
            dataset = build_dataset("folder", str(roots[name]), split="train")
            aug = augmentation_for(preset)
            crop = f"{aug.crop_size[0]}x{aug.crop_size[1]}"
            costs[name] = cost = per_image_cost(dataset, aug, count=min(images, 8 if small else 24))
            cost_rows.append({"case": name, "input": f"{width}x{height} JPEG", "preset": preset, "crop": crop,
                              "decode ms": cost["read_ms"], "augment ms": cost["augment_ms"],
                              "total ms": cost["wall_ms"], "decode CPU ms": cost["read_cpu_ms"],
                              "augment CPU ms": cost["augment_cpu_ms"], "total CPU ms": cost["cpu_ms"]})
            print(markdown(cost_rows[-1:]).splitlines()[-1], flush=True)
            with_batcher = (max(workers),) if small else (0, max(workers))
            runs = [(w, None) for w in workers] + [(w, trainer_batcher(dataset)) for w in with_batcher]
            for w, batcher in runs:
                rate = loader_rate(dataset, aug, w, args.batch, steps, batcher)
                loader_rows.append({"case": name, "crop": crop, "workers": w,
                                    "consumer": "idle" if batcher is None else "make_batch, no VAE",
                                    "images/s": rate["images_per_s"],
                                    "ms/image": 1000 / rate["images_per_s"], "cores used": rate["cores_used"],
                                    "training-process CPU ms/image": rate["main_cpu_ms"],
                                    "first batch s": rate["first_batch_s"], "load avg (1 min)": os.getloadavg()[0]})
                print(markdown(loader_rows[-1:]).splitlines()[-1], flush=True)

        if train_steps:
            from digseg.models.tiny import save_tiny_backbone

            backbone = save_tiny_backbone(Path(tmp) / "backbone", seed=0)
            for w in (0, 2):
                r = train_rate(roots["ade20k-sized"], backbone, w, args.train_crop, args.train_batch, train_steps,
                               Path(tmp) / f"run-{w}")
                train_rows.append({"model": "tiny", "data": f"ade20k-sized JPEG, crop {args.train_crop}",
                                   "batch": args.train_batch, "workers": w, "steps/s": r["steps_per_s"],
                                   "images/s": r["images_per_s"], "cores used": r["cores_used"],
                                   "load avg (1 min)": os.getloadavg()[0]})
                print(markdown(train_rows[-1:]).splitlines()[-1], flush=True)

    rates, source = gpu_rates(args)
    need_rows = []
    main_key = f"training-process CPU ms/image ({max(workers)} workers, make_batch)"
    for name, cost in costs.items():
        main_ms = [row["training-process CPU ms/image"] for row in loader_rows
                   if row["case"] == name and row["consumer"] != "idle" and row["workers"] == max(workers)][0]
        for r in rates:
            need_rows.append({"case": name, "GPU images/s": r, "data CPU ms/image": cost["cpu_ms"],
                              "workers needed": math.ceil(cost["cpu_ms"] / 1000 * r),
                              main_key: main_ms,
                              "training-process cores needed": main_ms / 1000 * r})
    wall = time.perf_counter() - started
    tables = [
        "Per-image cost, one thread in this process (median):\n\n" + markdown(cost_rows),
        "Data stage through `TrainingData.micro_steps`:\n\n" + markdown(loader_rows),
    ]
    if train_rows:
        tables.append("Tiny-model training, augmentation on:\n\n" + markdown(train_rows))
    tables.append(f"Workers needed per GPU = ceil(data CPU s/image x GPU images/s); GPU rate {source}:\n\n"
                  + markdown(need_rows))
    table = "\n\n".join(tables)
    print("\n" + table)
    need = {(row["case"], row["GPU images/s"]): row["workers needed"] for row in need_rows}
    kind = "measured" if source.startswith("MEASURED") else "given" if source.startswith("given") else "ASSUMED"
    summary = "data: " + ", ".join(
        f"{name} {costs[name]['cpu_ms']:.0f} CPU ms/img, loader up to "
        f"{max(r['images/s'] for r in loader_rows if r['case'] == name and r['consumer'] == 'idle'):.0f} img/s"
        for name in costs) + (
        f" (workers {','.join(map(str, workers))}); workers per GPU at {'/'.join(f'{r:.0f}' for r in rates)} img/s "
        f"({kind}): " + ", ".join(f"{name} " + "/".join(str(need[name, r]) for r in rates) for name in costs)
        + "; training process " + ", ".join(
            f"{row[main_key]:.0f}" for row in need_rows[::len(rates)])
        + " CPU ms/img")
    print(f"\n{summary}\n# wall time {wall:.0f} s; load average {load_average(' ')}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "table": table, "summary": summary, "loader": loader_rows, "cost": cost_rows, "train": train_rows,
            "workers_needed": need_rows, "gpu_rate_source": source, "wall_s": round(wall, 1),
            "load_average": os.getloadavg(), "cpus": os.cpu_count()}, indent=1))


if __name__ == "__main__":
    main()
