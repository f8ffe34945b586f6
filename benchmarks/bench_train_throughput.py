"""Training throughput: images/s and peak memory per (batch size, gradient checkpointing), as a GPU user trains.

Per batch size, one ``digseg.training.trainer.Trainer`` over synthetic scenes at ``--size`` px, latents encoded by the frozen VAE
every step (no latent cache: how training with augmentation runs; the scenes themselves are
generated at the crop size by ``--num-workers`` DataLoader workers, without augmentation), mixed precision ``--precision`` (bf16 by
default, accelerate's autocast), AdamW. Gradient checkpointing is switched off/on between
optimisation steps on the same trainer (one AdamW state), round-robin: one untimed warm-up round (AdamW state,
cuDNN autotuning, first touches), then ``--repeats`` timed rounds; s/step = median; images/s = batch / s/step.

A step is timed from the end of the previous one to the end of its ``optimizer.step()`` and ``loss.item()``
(which synchronises the device): data (scene generation and VAE encodes of image and target mask), text,
U-Net forward and backward, clipping, AdamW, LR schedule. Peak memory: on CUDA ``torch.cuda.max_memory_allocated``
during the cell's steps (weights + AdamW state + activations); on CPU, not measured (see bench_training.py).

Model: ``sd2`` = SD2's U-Net (widened to 8 input channels) + SD's VAE with RANDOM weights (speed only);
``--quick``: the tiny test model at 64 px (a smoke run).

Usage::

    python benchmarks/bench_train_throughput.py --device cuda             # SD2-sized, 512 px, batch 4 and 8, bf16
    python benchmarks/bench_train_throughput.py --quick                   # tiny model, 64 px, CPU smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from digseg import DiGSegPipeline
from digseg.data.synthetic import SyntheticScenes
from digseg.training.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from digseg.training.run import build_run
from digseg.training.trainer import Trainer

from common import StopSteps, random_backbone


class CellClock:
    """Stands in for the trainer's progress bar: `update()` ends a step's timing and sets up the next cell."""

    def __init__(self, trainer: Trainer, cells: list[bool], rounds: int) -> None:
        self.trainer, self.cells = trainer, cells
        self.unet = trainer.accelerator.unwrap_model(trainer.unet)
        self.schedule = [c for r in range(rounds) for c in (range(len(cells)) if r % 2 == 0 else reversed(range(len(cells))))]
        self.times: dict[int, list[float]] = {c: [] for c in range(len(cells))}
        self.peak: dict[int, float] = {c: 0.0 for c in range(len(cells))}
        self.i = 0
        self.cuda = trainer.accelerator.device.type == "cuda"

    def start(self) -> None:
        checkpointing = self.cells[self.schedule[self.i]]
        (self.unet.enable_gradient_checkpointing if checkpointing else self.unet.disable_gradient_checkpointing)()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()

    def update(self, n: int = 1) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - self.t0
        cell = self.schedule[self.i]
        if self.i >= len(self.cells):  # the first round warms up
            self.times[cell].append(dt)
        if self.cuda:
            self.peak[cell] = max(self.peak[cell], torch.cuda.max_memory_allocated() / 2**30)
        self.i += 1
        if self.i == len(self.schedule):
            raise StopSteps
        self.start()

    def set_postfix(self, **kwargs) -> None:
        pass


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model at 64 px")
    parser.add_argument("--size", type=int, default=None, help="training resolution (default 512; --quick 64)")
    parser.add_argument("--batch-sizes", default="4,8")
    parser.add_argument("--precision", default="bf16", choices=["no", "fp16", "bf16"])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers generating the scenes")
    parser.add_argument("--device", default="auto", help="cuda | cpu | auto (cuda when available)")
    parser.add_argument("--backbone-dir", type=Path, default=None,
                        help="the random backbone: saved here once, loaded by later runs (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available()):
        os.environ["ACCELERATE_USE_CPU"] = "true"  # accelerate's own switch
    size = args.size or (64 if args.quick else 512)
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    times: dict[tuple[int, bool], list[float]] = {}
    peaks: dict[tuple[int, bool], float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        model = "tiny" if args.quick else "sd2"
        backbone = random_backbone(args.backbone_dir or tmp / model, model)
        dataset = SyntheticScenes(args.scenes, size=size, seed=0)
        print(f"backbone built in {time.perf_counter() - t0:.0f} s", flush=True)
        for batch in batch_sizes:  # a fresh model and trainer per batch size (the loop's batch is fixed)
            pipe = DiGSegPipeline.from_backbone(backbone, processing_resolution=size)
            pipe.set_progress_bar_config(disable=True)
            config = TrainConfig(
                model=ModelConfig(pretrained=str(backbone)),
                data=DataConfig(dataset="synthetic", crop_size=size, augmentation=False, num_workers=args.num_workers),
                optim=OptimConfig(max_steps=10**6, batch_size=batch, mixed_precision=args.precision, lr_warmup_steps=0),
                run=RunConfig(output_dir=str(tmp / "run"), checkpoint_every=10**9, log_every=10**9, sample_every=0,
                              log_with="none"))
            trainer = build_run(config, pipe=pipe, dataset=dataset, show_progress=False)
            device = trainer.accelerator.device
            clock = CellClock(trainer, [False, True], 1 + args.repeats)
            clock.start()
            try:
                trainer._run_steps(clock)
            except StopSteps:
                pass
            for ck in (False, True):
                times[batch, ck], peaks[batch, ck] = clock.times[ck], clock.peak[ck]
                print(f"batch {batch}, checkpointing {'on' if ck else 'off'}: "
                      f"{', '.join(f'{t:.3f}' for t in clock.times[ck])} s/step", flush=True)
            del trainer, pipe, clock
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    header = (f"# digseg training throughput: {'tiny' if args.quick else 'SD2-sized'} model (random weights: speed "
              f"only), {size} px, {args.precision}, AdamW, VAE encodes every step, on {name}, torch {torch.__version__}")
    lines = [header, "", "| batch | grad. checkpointing | s/step (median) | images/s | peak GPU memory GiB | runs (s) |",
             "|---:|---|---:|---:|---:|---|"]
    for (batch, ck), runs in times.items():
        s = statistics.median(runs)
        peak = f"{peaks[batch, ck]:.1f}" if device.type == "cuda" else "-"
        lines.append(f"| {batch} | {'on' if ck else 'off'} | {s:.3f} | {batch / s:.1f} | {peak} | "
                     f"{', '.join(f'{t:.3f}' for t in runs)} |")
    table = "\n".join(lines)
    print("\n" + table, flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": name, "size": size, "precision": args.precision, "table": table,
                                         "cells": [{"batch": b, "checkpointing": ck, "seconds_per_step": statistics.median(r),
                                                    "images_per_s": b / statistics.median(r), "peak_gib": peaks[b, ck]}
                                                   for (b, ck), r in times.items()]}, indent=1))
    return table


if __name__ == "__main__":
    main()
