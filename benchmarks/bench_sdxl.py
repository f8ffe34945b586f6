"""Memory and speed at Stable Diffusion XL size beside SD2: inference at 512 and 1024 px, and what training needs.

Models (random weights: speed and memory only, no accuracy): ``sd2`` = ``common.save_sd2_sized_backbone`` (SD2's
866 M-parameter U-Net once widened, SD's VAE), ``sdxl`` = ``common.save_sdxl_sized_backbone`` (SDXL base's 2.57 B
U-Net, SD's VAE layout, written as an fp16-only download that digseg finds and loads in the cell's dtype). Both
carry 2-layer text encoders of their real widths; the real ones are frozen and add 0.35 B (SD2) and 0.82 B
(SDXL) parameters of weights. ``--quick``: the tiny SD and SDXL test models at 64 and 128 px (a smoke run).

Inference: one subprocess per (model, dtype), so each cell's memory is its own. It loads
``DiGSegPipeline.from_backbone(folder, torch_dtype=dtype)`` (load seconds), makes one untimed 1x1 call at
256 px (RSS, or GPU memory, after it: the loaded model, every weight resident), then one 1x1 call per size (a
binary prompt: encode the image, one U-Net pass, one VAE decode, resize back): seconds, and peak extra RSS above
the loaded model (CPU, sampled by a thread) or peak GPU memory above it (``torch.cuda.max_memory_allocated``).

Training: per lever set of ``digseg train``, the bytes of a step's float32 master weights, gradients, optimizer
moments and EMA copy, counted from the trainable parameters (the U-Net is built on the meta device: no memory
used). Activations come on top; gradient checkpointing and bf16 autocast shrink those, not these. With
``--train`` the cells whose weights, gradients and optimizer state fit the device's free memory also run
(``--steps`` steps, the first untimed, bf16 autocast, batch ``--train-batch``): s/step and peak memory (the
child's ru_maxrss on a CPU, ``max_memory_allocated`` on a GPU). A cell that cannot fit is reported, not run.

Usage::

    python benchmarks/bench_sdxl.py                                  # CPU: sd2 + sdxl, 512 and 1024 px, fp32 + bf16
    python benchmarks/bench_sdxl.py --quick                          # tiny SD + tiny SDXL, smoke run (< 2 min)
    python benchmarks/bench_sdxl.py --device cuda --dtypes bf16 --train --train-batch 4    # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

from common import (CallCost, StopSteps, gib, load_average, machine_summary, random_backbone, sd2_unet, sdxl_unet,
                    trim_memory)

# lever set -> (optimizer, use_ema, gradient checkpointing); bytes per trainable parameter besides activations:
# float32 weights 4 + gradients 4 + AdamW's two moments 8 (adamw8bit: 2) + the EMA copy 4
LEVERS = {
    "AdamW + EMA (the shipped configs)": ("adamw", True, False),
    "AdamW, no EMA": ("adamw", False, False),
    "8-bit AdamW, no EMA, checkpointing": ("adamw8bit", False, True),
}
MOMENT_BYTES = {"adamw": 8, "adamw8bit": 2}
UNETS = {"sd2": sd2_unet, "sdxl": sdxl_unet}  # the architectures counted on the meta device
NAMES = {"sd2": "SD2-sized", "sdxl": "SDXL-sized", "tiny": "tiny SD", "tiny-sdxl": "tiny SDXL"}


def trainable_parameters(model: str, folder: Path) -> int:
    """U-Net (widened to 8 input channels) + text pathway parameters, counted without allocating them."""
    from digseg.models.text import cross_attention_levels

    if model in UNETS:
        with torch.device("meta"):
            unet = UNETS[model](in_channels=8)
    else:
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_config({**UNet2DConditionModel.load_config(folder / "unet"), "in_channels": 8})
    width = unet.config.cross_attention_dim
    pathway = len(cross_attention_levels(unet)) * (width * width + width)
    return sum(p.numel() for p in unet.parameters()) + pathway


def state_bytes(params: int, lever: str) -> int:
    optimizer, ema, _ = LEVERS[lever]
    return params * (4 + 4 + MOMENT_BYTES[optimizer] + (4 if ema else 0))


def device_memory(device: str) -> tuple[int, int]:
    """(free, total) bytes of the GPU, or of the machine's RAM."""
    if device == "cuda":
        return torch.cuda.mem_get_info()
    memory = psutil.virtual_memory()
    return memory.available, memory.total


def memory_now(device: str) -> int:
    return torch.cuda.memory_allocated() if device == "cuda" else psutil.Process().memory_info().rss


# ------------------------------------------------------------------------------------------------ children
def inference_cell(folder: Path, dtype: str, sizes: list[int], device: str) -> dict:
    """Load the model in `dtype` on `device`, warm up at 256 px, then one 1x1 call per size."""
    from digseg import DiGSegPipeline
    from digseg.devices import resolve_dtype

    t0 = time.perf_counter()
    pipe = DiGSegPipeline.from_backbone(folder, torch_dtype=resolve_dtype(dtype, device)).to(device)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    pipe(torch.rand(3, 256, 256, generator=gen), prompt="object", processing_resolution=256)  # warm-up
    trim_memory()
    loaded = memory_now(device)  # after the warm-up: weights read from a memory-mapped file are resident by now
    cells = []
    for size in sizes:
        image = torch.rand(3, size, size, generator=gen)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with CallCost() as cost:
            pipe(image, prompt="object", processing_resolution=size, generator=torch.Generator().manual_seed(0))
            if device == "cuda":
                torch.cuda.synchronize()
        extra = (torch.cuda.max_memory_allocated() - loaded) if device == "cuda" else cost.extra_bytes
        cells.append({"size": size, "seconds": cost.seconds, "extra_gib": gib(extra), "cpu_share": cost.cpu_share})
    return {"load_s": load_s, "loaded_gib": gib(loaded), "cells": cells}


class StepClock:
    """Stands in for the trainer's progress bar: records each step's wall time, stops after `steps`."""

    def __init__(self, steps: int, device: str) -> None:
        self.steps, self.device, self.times = steps, device, []
        self.t0 = time.perf_counter()

    def update(self, n: int = 1) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.times.append(now - self.t0)
        self.t0 = now
        if len(self.times) == self.steps:
            raise StopSteps

    def set_postfix(self, **kwargs) -> None:
        pass


def training_cell(folder: Path, lever: str, size: int, batch: int, steps: int, device: str) -> dict:
    from digseg.data.synthetic import SyntheticScenes
    from digseg.training.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
    from digseg.training.run import build_run

    if device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"
    optimizer, ema, checkpointing = LEVERS[lever]
    with tempfile.TemporaryDirectory(prefix="bench_sdxl_") as tmp:
        config = TrainConfig(
            model=ModelConfig(pretrained=str(folder)),
            data=DataConfig(dataset="synthetic", crop_size=size, augmentation=False),
            optim=OptimConfig(max_steps=10**6, batch_size=batch, mixed_precision="bf16", lr_warmup_steps=0,
                              optimizer=optimizer, use_ema=ema, gradient_checkpointing=checkpointing),
            run=RunConfig(output_dir=tmp, checkpoint_every=10**9, log_every=10**9, sample_every=0, log_with="none"))
        trainer = build_run(config, dataset=SyntheticScenes(max(4, batch), size=size, seed=0), show_progress=False)
        clock = StepClock(steps, device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            trainer._run_steps(clock)
        except StopSteps:
            pass
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    timed = clock.times[1:] or clock.times
    return {"seconds_per_step": sorted(timed)[len(timed) // 2], "peak_gib": gib(peak)}


def run_child(args: list[str]) -> dict:
    """This script as a subprocess (`--child ...`) -> the JSON it prints last."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", DIFFUSERS_VERBOSITY="error")
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="comma-separated: sd2, sdxl (default both; --quick: tiny ones)")
    parser.add_argument("--sizes", default=None, help="processing resolutions (default 512,1024; --quick 64,128)")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--train", action="store_true", help="also run the training cells that fit")
    parser.add_argument("--train-size", type=int, default=None, help="training crop (default 512; --quick 64)")
    parser.add_argument("--train-batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="training steps per cell (the first is not timed)")
    parser.add_argument("--backbone-dir", type=Path, default=None,
                        help="the random backbones: saved here once (<dir>/<model>), reused by later runs")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # kind, folder, ...
        kind, folder, *rest = args.child
        torch.manual_seed(0)
        if kind == "inference":
            out = inference_cell(Path(folder), rest[0], [int(s) for s in rest[1].split(",")], args.device)
        else:
            out = training_cell(Path(folder), rest[0], int(rest[1]), int(rest[2]), int(rest[3]), args.device)
        print(json.dumps(out))
        return

    models = (args.models or ("tiny,tiny-sdxl" if args.quick else "sd2,sdxl")).split(",")
    sizes = args.sizes or ("64,128" if args.quick else "512,1024")
    train_size = args.train_size or (64 if args.quick else 512)
    dtypes = args.dtypes.split(",")
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"{machine_summary()}; {device_name}; load {load_average()}", flush=True)
    report: dict = {"device": device_name, "inference": [], "training": []}
    with tempfile.TemporaryDirectory(prefix="bench_sdxl_") as tmp:
        root = args.backbone_dir or Path(tmp)
        for model in models:
            t0 = time.perf_counter()
            folder = random_backbone(root / model, model)
            print(f"{model}: backbone ready in {time.perf_counter() - t0:.0f} s ({folder})", flush=True)
            for dtype in dtypes:
                cell = run_child(["inference", str(folder), dtype, sizes] + ["--device", args.device])
                cell.update(model=model, dtype=dtype)
                report["inference"].append(cell)
                print(json.dumps(cell), flush=True)
            params = trainable_parameters(model, folder)
            for lever in LEVERS:
                need = state_bytes(params, lever)
                free, total = device_memory(args.device)
                row = {"model": model, "lever": lever, "params": params, "state_gib": gib(need),
                       "free_gib": gib(free), "total_gib": gib(total), "fits": need < free}
                if args.train and row["fits"]:
                    row.update(run_child(["training", str(folder), lever, str(train_size), str(args.train_batch),
                                          str(args.steps), "--device", args.device]))
                report["training"].append(row)
                print(json.dumps(row), flush=True)
    report["table"] = tables(report, args.device, train_size, args.train_batch)
    print("\n" + report["table"])
    print(f"load after: {load_average()}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


def tables(report: dict, device: str, train_size: int, train_batch: int) -> str:
    memory = "peak GPU memory above the model" if device == "cuda" else "peak extra RSS"
    lines = [f"# inference, E-Step 1x1, on {report['device']}: seconds per image ({memory}, GiB)", "",
             "| model | dtype | load s | loaded GiB | " + " | ".join(
                 f"{c['size']} px" for c in next((r["cells"] for r in report["inference"] if "cells" in r), [])) + " |",
             "|---|---|---:|---:|" + "---:|" * max(1, len(next((r["cells"] for r in report["inference"]
                                                               if "cells" in r), [])))]
    for r in report["inference"]:
        if "error" in r:
            lines.append(f"| {NAMES.get(r['model'], r['model'])} | {r['dtype']} | failed: {r['error']} |")
            continue
        lines.append(f"| {NAMES.get(r['model'], r['model'])} | {r['dtype']} | {r['load_s']:.0f} | {r['loaded_gib']:.2f} | "
                     + " | ".join(f"{c['seconds']:.1f} ({c['extra_gib']:.2f})" for c in r["cells"]) + " |")
    lines += ["", f"# training: float32 weights + gradients + optimizer moments (+ EMA), before activations; "
                  f"run cells at {train_size} px, batch {train_batch}, bf16 autocast", "",
              "| model | levers | trainable params | weights+grads+state GiB | memory GiB (free) | fits | s/step | peak GiB |",
              "|---|---|---:|---:|---:|---|---:|---:|"]
    for r in report["training"]:
        ran = f"{r['seconds_per_step']:.1f} | {r['peak_gib']:.2f}" if "seconds_per_step" in r else (
            f"failed: {r['error']} | -" if "error" in r else "not run | -")
        lines.append(f"| {NAMES.get(r['model'], r['model'])} | {r['lever']} | {r['params'] / 1e9:.3f} B | "
                     f"{r['state_gib']:.1f} | {r['total_gib']:.1f} ({r['free_gib']:.1f}) | {'yes' if r['fits'] else 'no'} | "
                     f"{ran} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
