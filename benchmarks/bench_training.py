"""Training step speed: latent cache vs encoding on the fly, gradient checkpointing off/on.

Model: ``sd2`` = the Stable Diffusion 2 U-Net (widened to 8 input channels) + SD VAE with RANDOM weights and a
2-layer 1024-wide CLIP text encoder (``common.save_sd2_sized_backbone``): speed only. ``--quick``:
the tiny test model at 64 px (a smoke run, < 1 min).

Per size S: a small synthetic dataset (``SyntheticScenes(n, size=S)``, its class names), a latent cache built
with ``build_latent_cache`` (one-time cost reported), then ONE ``digseg.training.trainer.Trainer`` (batch size 1,
fp32, AdamW, data section ``latent_cache=<cache>``, ``augmentation=False``, ``crop_size=S``) runs four cells:

- ``on the fly``: the trainer's ``LatentBatcher`` swapped for one without the cache (built exactly as the
  Trainer builds its own, ``store=None``) and ``cache_latents=False``: every step encodes the image and the
  target mask with the frozen VAE.
- ``latent cache``: the trainer's own batcher, reading latents from the cache folder (never runs the VAE).

each with gradient checkpointing off and on (``unet.enable_gradient_checkpointing()`` /
``disable_gradient_checkpointing()`` between steps). One trainer, so one optimizer state (AdamW on a 866 M
parameter U-Net is ~7 GB), shared by all cells; the cells are switched between steps.

Method: ``Trainer._run_steps(bar)`` is called directly with ``max_steps`` large and ``checkpoint_every`` larger,
so no checkpoint and no final pipeline save happen; ``bar`` is a clock object whose ``update()`` (called once at
the end of every optimisation step, after ``optimizer.step()`` and ``loss.item()``) records the time, switches
the cell for the next step, and stops the loop (by raising) after the last step. Step time = time from the end
of the previous step's bookkeeping to this ``update()``: data (cache read or VAE encode), text, forward,
backward, gradient clipping, AdamW step, LR scheduler. The cells run round-robin (one step each per round):
one untimed warm-up round (allocates AdamW state, first touches), then ``--repeats`` timed rounds; s/step =
median. Also per step: time inside ``make_batch`` (data: cache read or VAE encode) and inside the optimizer step
(AdamW). Peak extra RSS per cell = max RSS during its steps (sampled every 5 ms) minus the RSS of the loaded
model before the Trainer was built, so it includes gradients and AdamW state (~3x the U-Net's weights); and
the peak above the RSS at the step's start (after ``malloc_trim``; gradients are freed between steps by
``zero_grad(set_to_none=True)``): the step's gradients and activations, as far as the allocator returns freed
memory to the OS (it does not always, so read it as a rough figure).

Usage::

    python benchmarks/bench_training.py                  # SD2-sized, 256 px (~5 min on 2 cores, ~17 GB RAM)
    python benchmarks/bench_training.py --sizes 512 --scenes 4 --repeats 2   # 512 px only (more memory)
    python benchmarks/bench_training.py --quick          # tiny model, 64 px, smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

from digseg import DiGSegPipeline
from digseg.data.synthetic import SyntheticScenes
from digseg.training.batches import LatentBatcher
from digseg.training.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from digseg.training.latent_cache import build_latent_cache
from digseg.training.run import build_run

from common import StopSteps, load_average, machine_summary, random_backbone, trim_memory

GOAL_RATIO = 1.5
CELLS = [("on the fly", False), ("latent cache", False), ("on the fly", True), ("latent cache", True)]


class RSSSampler:
    """Background thread: max RSS since the last `take()`."""

    def __init__(self, interval: float = 0.005) -> None:
        self.proc = psutil.Process(os.getpid())
        self.interval = interval
        self.peak = self.proc.memory_info().rss
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            rss = self.proc.memory_info().rss
            with self._lock:
                self.peak = max(self.peak, rss)
            self._stop.wait(self.interval)

    def take(self) -> int:
        rss = self.proc.memory_info().rss
        with self._lock:
            peak, self.peak = max(self.peak, rss), rss
        return peak

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class StepClock:
    """Stands in for the trainer's tqdm bar: times every step, switches cells between steps, stops the loop."""

    def __init__(self, schedule: list[int], set_cell, sampler: RSSSampler) -> None:
        self.schedule = schedule  # cell index of every step
        self.set_cell = set_cell
        self.sampler = sampler
        self.records: list[tuple[int, float, int, int]] = []  # (cell, seconds, peak RSS, RSS at step start)
        self.i = 0

    def _begin(self) -> None:
        self.set_cell(self.schedule[self.i])  # not timed
        trim_memory()
        self.rss0 = self.sampler.take()
        self.t0 = time.perf_counter()

    def start(self) -> None:
        self._begin()

    def update(self, n: int = 1) -> None:
        dt = time.perf_counter() - self.t0
        self.records.append((self.schedule[self.i], dt, self.sampler.take(), self.rss0))
        self.i += 1
        if self.i == len(self.schedule):
            raise StopSteps
        self._begin()

    def set_postfix(self, **kwargs) -> None:
        pass


def fmt(x: float) -> str:
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def bench_size(pipe: DiGSegPipeline, size: int, tmp: Path, scenes: int, repeats: int, seed: int) -> dict:
    print(f"\n## {size} px", flush=True)
    dataset = SyntheticScenes(scenes, size=size, seed=seed)
    names = list(dataset.class_names)
    pipe.set_class_names(names)
    t0 = time.perf_counter()
    cache = build_latent_cache(dataset, names, pipe.vae, tmp / f"cache{size}", resolution=size, task="both",
                               show_progress=False)
    build_s = time.perf_counter() - t0
    print(f"latent cache for {scenes} scenes built in {build_s:.1f} s ({build_s / scenes:.2f} s/scene, one-time)",
          flush=True)
    config = TrainConfig(
        model=ModelConfig(pretrained="(built above)"),
        data=DataConfig(dataset="synthetic", crop_size=size, augmentation=False, latent_cache=str(cache), task="both"),
        optim=OptimConfig(max_steps=10**6, batch_size=1, mixed_precision="no", lr_warmup_steps=0),
        run=RunConfig(output_dir=str(tmp / f"run{size}"), checkpoint_every=10**9, log_every=10**9, seed=seed),
    )
    trim_memory()
    sampler = RSSSampler()
    base_rss = sampler.take()  # loaded model, before the trainer exists
    trainer = build_run(config, pipe=pipe, dataset=dataset, show_progress=False)
    cached_batcher = trainer.data.batcher
    fly_batcher = LatentBatcher(dataset, names, pipe.vae, "both", pipe.config.prompt_template, config.data.negative_prob,
                                False, getattr(dataset, "ignore_index", 255), store=None)
    unet = trainer.accelerator.unwrap_model(trainer.unet)
    # breakdown: time in make_batch (data: cache read or VAE encode) and in the optimizer step, per step
    parts: dict[str, list[float]] = {"data": [], "optimizer": []}

    def timing(fn, key):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                parts[key].append(time.perf_counter() - t)
        return wrapper

    for b in (cached_batcher, fly_batcher):
        b.make_batch = timing(b.make_batch, "data")
    trainer.optimizer.step = timing(trainer.optimizer.step, "optimizer")

    def set_cell(c: int) -> None:
        source, checkpointing = CELLS[c]
        trainer.data.batcher = cached_batcher if source == "latent cache" else fly_batcher
        if checkpointing:
            unet.enable_gradient_checkpointing()
        else:
            unet.disable_gradient_checkpointing()

    rounds = 1 + repeats
    schedule = [c for r in range(rounds) for c in (range(len(CELLS)) if r % 2 == 0 else reversed(range(len(CELLS))))]
    clock = StepClock(schedule, set_cell, sampler)
    output = Path(config.run.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    print(f"load average before the steps: {load_average()}", flush=True)
    t0 = time.perf_counter()
    clock.start()
    try:
        trainer._run_steps(clock)
    except StopSteps:
        pass
    total = time.perf_counter() - t0
    sampler.close()
    print(f"{len(schedule)} steps in {total:.0f} s; load average after: {load_average()}", flush=True)
    unet.disable_gradient_checkpointing()
    saved = sorted(p.name for p in output.rglob("*") if p.is_file())
    assert not any("checkpoint" in s for s in saved), f"a checkpoint was written: {saved}"

    warm = len(CELLS)
    assert len(parts["data"]) == len(parts["optimizer"]) == len(clock.records)
    timed_steps = range(warm, len(clock.records))
    per_cell = {c: [clock.records[i][1] for i in timed_steps if clock.records[i][0] == c] for c in range(len(CELLS))}
    part_med = {(c, key): statistics.median(parts[key][i] for i in timed_steps if clock.records[i][0] == c)
                for c in range(len(CELLS)) for key in parts}
    peak = {c: max(r[2] for r in clock.records if r[0] == c) - base_rss for c in range(len(CELLS))}
    transient = {c: max(r[2] - r[3] for r in clock.records[warm:] if r[0] == c) for c in range(len(CELLS))}
    for i, (c, dt, p, p0) in enumerate(clock.records):
        source, ck = CELLS[c]
        print(f"  step {i + 1}{' (warm-up)' if i < warm else ''}: {source}, checkpointing {'on' if ck else 'off'}: "
              f"{dt:.2f} s (data {parts['data'][i]:.2f} s, optimizer {parts['optimizer'][i]:.2f} s), "
              f"peak +{(p - base_rss) / 2**30:.2f} GiB over the loaded model, +{(p - p0) / 2**30:.2f} GiB over the "
              f"step's start", flush=True)
    med = {c: statistics.median(v) for c, v in per_cell.items()}
    lines = [
        "| size | latents | grad. checkpointing | s/step (median) | steps/s | runs (s) | of which data s | "
        "of which AdamW step s | peak extra RSS GiB (over loaded model) | peak GiB over step start |",
        "|---:|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for c, (source, ck) in enumerate(CELLS):
        lines.append(f"| {size} | {source} | {'on' if ck else 'off'} | {fmt(med[c])} | {fmt(1 / med[c])} | "
                     f"{', '.join(f'{t:.3g}' for t in per_cell[c])} | {fmt(part_med[c, 'data'])} | "
                     f"{fmt(part_med[c, 'optimizer'])} | {peak[c] / 2**30:.2f} | {transient[c] / 2**30:.2f} |")
    goals = []
    for ck in (False, True):
        fly = next(c for c, cell in enumerate(CELLS) if cell == ("on the fly", ck))
        cached = next(c for c, cell in enumerate(CELLS) if cell == ("latent cache", ck))
        ratio = med[fly] / med[cached]  # = steps/s cached / steps/s on the fly
        goals.append(
            f"GOAL ({size}px, gradient checkpointing {'on' if ck else 'off'}): training with the latent cache at least "
            f"{GOAL_RATIO}x the steps/s of encoding on the fly -> {'PASS' if ratio >= GOAL_RATIO else 'FAIL'} "
            f"(cache/no-cache steps/s = {ratio:.2f}x; {1 / med[cached]:.3g} vs {1 / med[fly]:.3g} steps/s)")
    ck_cost = {src: med[CELLS.index((src, True))] / med[CELLS.index((src, False))] for src in ("on the fly", "latent cache")}
    table = "\n".join(lines)
    note = (f"gradient checkpointing step-time factor: on the fly {ck_cost['on the fly']:.2f}x, "
            f"latent cache {ck_cost['latent cache']:.2f}x; latent cache one-time build {build_s:.1f} s for {scenes} scenes")
    print("\n" + table + "\n\n" + note + "\n" + "\n".join(goals), flush=True)
    del trainer, cached_batcher, fly_batcher
    trim_memory()
    return dict(table=table, goals=goals, note=note)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model at 64 px")
    parser.add_argument("--sizes", default=None, help="training resolutions (default 256; --quick 64)")
    parser.add_argument("--scenes", type=int, default=None, help="synthetic scenes in the dataset/cache (default 8)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3; --quick 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    from diffusers.utils import logging as dlogging
    dlogging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in (args.sizes or ("64" if args.quick else "256")).split(",")]
    scenes = args.scenes or (4 if args.quick else 8)
    repeats = args.repeats or (2 if args.quick else 3)
    model = "tiny" if args.quick else "sd2"
    print("# digseg training-step benchmark: latent cache vs on-the-fly VAE encoding, gradient checkpointing")
    print(f"{machine_summary()}, no GPU, model {model} (random weights: speed only), fp32, batch size 1, AdamW")
    print(f"load average (1/5/15 min) at start: {load_average()}", flush=True)
    t_all = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_training_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        backbone = random_backbone(tmp / model, model)
        pipe = DiGSegPipeline.from_backbone(backbone, processing_resolution=sizes[0])
        print(f"built + saved + loaded in {time.perf_counter() - t0:.1f} s (U-Net "
              f"{sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.1f} M params)", flush=True)
        for size in sizes:
            results.append(bench_size(pipe, size, tmp, scenes, repeats, args.seed))
    print("\n# Summary\n")
    for res in results:
        print(res["table"] + "\n\n" + res["note"] + "\n")
    for res in results:
        print("\n".join(res["goals"]))
    print(f"\nload average at end: {load_average()} on {os.cpu_count()} CPUs")
    print(f"total wall time {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
