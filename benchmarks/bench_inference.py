"""Inference speed: digseg (latent ensemble, one decode) vs diffusers' Marigold (every member decoded).

The paper's E-Step table (ensemble size E x denoising steps K: 1x1, 1x2, 4x2, 8x2; 20x50 with
``--with-20x50``), per image, for:

- ``ours``: ``DiGSegPipeline(image, prompt="object", ensemble_size=E, num_inference_steps=K,
  processing_resolution=S)``: one image encode, E members denoised together (one U-Net batch of E) for K
  DDIM steps (trailing spacing), members' latents combined (element-wise median, the default), ONE VAE decode,
  resized back to the input size.
- ``marigold``: diffusers' ``MarigoldDepthPipeline`` built in the same process from the SAME modules: digseg's
  8-channel (widened) U-Net, VAE, DDIM scheduler with trailing spacing, and text encoder/tokenizer (Marigold
  conditions on the embedding of the empty prompt). Called with ``ensemble_size=E, num_inference_steps=K,
  processing_resolution=S, batch_size=E`` (all members in one U-Net batch, as ours), ``match_input_resolution=
  True`` (ours also resizes back to the input size), ``output_type="np"``. It decodes every member (E VAE
  decodes) and ensembles them with its default affine-invariant alignment (scipy BFGS, max 2 iterations) and
  median; the alignment + ensembling time is reported separately (it is part of Marigold's time), and the goal
  is also checked against Marigold's time without it, so that the comparison of the decode strategies alone is
  visible. Own CPU share per call (CPU time / (wall time x threads)) is reported: well below 100% means other
  processes took the cores during the call (on 2 cores, OpenMP barriers then spin and small ops slow down a lot).

digseg's cross-attention processors fall back to the stock behaviour (attend to ``encoder_hidden_states``)
when no per-level text is set, which is the case in Marigold's calls; this is checked at start-up by comparing
one U-Net pass through the installed processors with one through stock ``AttnProcessor2_0`` processors.

Model: ``sd2`` = the Stable Diffusion 2 U-Net + SD VAE architecture with RANDOM weights (built by
``common.save_sd2_sized_backbone``), so the figures are speed only. ``--quick``: the tiny test model
at 64 px (a smoke run, < 1 min; its ratios say nothing about the SD2-sized model).

dtypes: fp32, then bf16 by casting ALL modules of the shared model to bfloat16 (``pipe.to(torch.bfloat16)``),
which both pipelines then use alike. Timing: for each dtype, one untimed warm-up call per pipeline and cell,
then ``--repeats`` rounds; each round runs every (size, E-Step) cell once for both pipelines, alternating
which pipeline goes first, so background load hits both alike. Seconds per image = median over the rounds.
Peak extra RSS = max RSS sampled by a background thread during the call minus the RSS just before it.

Usage::

    python benchmarks/bench_inference.py                     # SD2-sized, 256 px, fp32 + bf16 (~15 min, 2 cores)
    python benchmarks/bench_inference.py --sizes 256,512     # + 512 px cells (1x1 and 4x2 by default)
    python benchmarks/bench_inference.py --quick             # tiny model, 64 px, smoke run
    python benchmarks/bench_inference.py --light-decoder     # ours with a light mask decoder (docs/mask_decoder.md)
    # on a GPU: 512 px, bf16, 8 images per call, torch.compile; FPS printed beside the paper's
    python benchmarks/bench_inference.py --device cuda --sizes 512 --dtypes bf16 --batch 8 --compile \
        --settings 1x1,1x2,4x2,8x2

On a GPU, timing synchronises the device, and peak memory is ``torch.cuda.max_memory_allocated`` above the
memory in use before the call. ``--batch B`` passes B images per call to both pipelines (ours denoises B x E
latents in one U-Net batch; Marigold gets the list), so images/s = B / seconds per call. ``--compile`` compiles
the shared U-Net and VAE in place (``nn.Module.compile``), so both pipelines run the same compiled modules.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from digseg import DiGSegPipeline
from digseg.devices import resolve_dtype
from digseg.models.digseg_model import vae_scale_factor
from digseg.models.mask_decoder import LightMaskDecoder

from common import CallCost, format_number, gib, load_average, machine_summary, random_backbone, trim_memory

GOAL_SPEEDUP = 1.5  # ours >= 1.5x faster than Marigold at 4x2 and 8x2
NO_SLOWER_TOL = 0.03  # "no slower" at 1x1: Marigold / ours >= 1 - 3% (timing noise allowance)
PAPER_FPS_512 = {(1, 1): 11.27, (1, 2): 10.61, (4, 2): 5.82, (8, 2): 3.15, (20, 50): 0.12}  # its GPU, 512x512
GPU_GOAL_FPS = 60.0  # 1x1 at 512 px with batching, on a GPU


@dataclass
class Cell:
    times: list[float] = field(default_factory=list)
    peak_gib: float = 0.0
    align_s: list[float] = field(default_factory=list)  # Marigold only: alignment + ensembling time per call
    cpu: list[float] = field(default_factory=list)  # own CPU share per call

    @property
    def seconds(self) -> float:
        return statistics.median(self.times)


def parse_setting(text: str) -> tuple[int, int]:
    e, k = text.lower().split("x")
    return int(e), int(k)


# ------------------------------------------------------------------------------------------------ models
def build(model: str, tmp: Path, resolution: int, backbone_dir: Path | None = None):
    """-> (digseg pipeline, Marigold pipeline sharing its modules). `backbone_dir`: the random backbone is saved
    there once and loaded by later runs (several runs in one job build it once)."""
    from diffusers import MarigoldDepthPipeline

    folder = random_backbone(backbone_dir or tmp / model, model)
    pipe = DiGSegPipeline.from_backbone(folder, processing_resolution=resolution)
    marigold = MarigoldDepthPipeline(
        unet=pipe.unet, vae=pipe.vae, scheduler=pipe.scheduler, text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer, prediction_type="depth", default_denoising_steps=1,
        default_processing_resolution=resolution,
    )
    pipe.set_progress_bar_config(disable=True)
    marigold.set_progress_bar_config(disable=True)
    return pipe, marigold


@torch.no_grad()
def check_shared_unet(pipe: DiGSegPipeline, size: int) -> float:
    """Max |difference| between one U-Net pass through digseg's installed processors (no per-level text set,
    as in Marigold's calls) and one through stock AttnProcessor2_0 processors. Restores digseg's processors."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet = pipe.unet
    h = size // vae_scale_factor(pipe.vae)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, unet.config.in_channels, h, h, generator=gen)
    text = torch.randn(1, 2, unet.config.cross_attention_dim, generator=gen)
    t = torch.tensor(999)
    assert pipe.level_context.levels is None
    installed = unet.attn_processors
    out_installed = unet(x, t, encoder_hidden_states=text, return_dict=False)[0]
    unet.set_attn_processor(AttnProcessor2_0())
    try:
        out_stock = unet(x, t, encoder_hidden_states=text, return_dict=False)[0]
    finally:
        unet.set_attn_processor(installed)
    return float((out_installed - out_stock).abs().max())


# ------------------------------------------------------------------------------------------------ calls
def run_ours(pipe, image, e, k, size, seed):
    gen = torch.Generator().manual_seed(seed)
    return pipe(image, prompt="object", ensemble_size=e, num_inference_steps=k, processing_resolution=size,
                generator=gen, output_type="np", show_progress_bar=False)


def run_marigold(marigold, image, e, k, size, seed):
    gen = torch.Generator().manual_seed(seed)
    return marigold(image, ensemble_size=e, num_inference_steps=k, processing_resolution=size, batch_size=e,
                    match_input_resolution=True, generator=gen, output_type="np")


def timed(fn, *args, device: torch.device = torch.device("cpu")) -> tuple[float, float, float]:
    """-> (seconds, peak extra GiB, own CPU time / (seconds x torch threads): < 1 when others took the cores).

    On CUDA: the device is synchronised around the call, and the peak is GPU memory above what was in use."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    with CallCost() as cost:
        fn(*args)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    peak = cost.extra_bytes if device.type != "cuda" else torch.cuda.max_memory_allocated(device) - base
    return cost.seconds, gib(peak), cost.cpu_share


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model at 64 px, 2 rounds")
    parser.add_argument("--sizes", default=None, help="processing resolutions (default 256; --quick 64)")
    parser.add_argument("--settings", default="1x1,1x2,4x2,8x2", help="E-Step cells at the first size")
    parser.add_argument("--large-settings", default="1x1,4x2",
                        help="E-Step cells at every further (larger) size (default 1x1,4x2: time)")
    parser.add_argument("--with-20x50", action="store_true", help="add the 20x50 cell (first size only; slow)")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3; --quick 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto (cuda when available)")
    parser.add_argument("--batch", type=int, default=1, help="images per call (images/s = batch / s per call)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the shared U-Net and VAE in place")
    parser.add_argument("--backbone-dir", type=Path, default=None,
                        help="save the random backbone here once and reuse it in later runs (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write every cell's figures to this JSON file")
    parser.add_argument("--light-decoder", action="store_true",
                        help="ours decodes masks with a LightMaskDecoder (random weights; Marigold keeps the VAE)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))

    from diffusers.utils import logging as dlogging
    dlogging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = "tiny" if args.quick else "sd2"
    sizes = [int(s) for s in (args.sizes or ("64" if args.quick else "256")).split(",")]
    repeats = args.repeats or (2 if args.quick else 3)
    dtypes = args.dtypes.split(",")
    cells: list[tuple[int, tuple[int, int]]] = []
    for i, size in enumerate(sizes):
        settings = [parse_setting(s) for s in (args.settings if i == 0 else args.large_settings).split(",")]
        if args.with_20x50 and i == 0:
            settings.append((20, 50))
        cells += [(size, s) for s in settings]

    print("# digseg inference benchmark: ours (latent ensemble, one decode) vs diffusers MarigoldDepthPipeline")
    print(f"{machine_summary()}, {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'no GPU'}, "
          f"device {device}, model {model} (random weights: speed only), {repeats} timed rounds per cell, "
          f"{args.batch} image(s) per call{', torch.compile' if args.compile else ''}")
    print(f"load average (1/5/15 min) at start: {load_average()}", flush=True)
    torch.set_grad_enabled(False)
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
        t0 = time.perf_counter()
        pipe, marigold = build(model, Path(tmp), sizes[0], args.backbone_dir)
    print(f"built + saved + loaded in {time.perf_counter() - t0:.1f} s (U-Net "
          f"{sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.1f} M params, in_channels "
          f"{pipe.unet.config.in_channels}; VAE {sum(p.numel() for p in pipe.vae.parameters()) / 1e6:.1f} M)",
          flush=True)
    diff = check_shared_unet(pipe, sizes[0])
    if args.light_decoder:  # ours only: mask_decoder="auto" picks it up
        pipe.set_mask_decoder(LightMaskDecoder.for_vae(pipe.vae))
        print(f"ours decodes masks with LightMaskDecoder {list(pipe.mask_decoder.config.block_channels)} "
              "(random weights: speed only); Marigold decodes with the VAE", flush=True)
    pipe.to(device)  # the Marigold pipeline shares every module
    if args.compile:  # in place: both pipelines run the same compiled modules
        for module in [pipe.unet, pipe.vae.encoder, pipe.vae.decoder] + ([pipe.mask_decoder] if args.light_decoder else []):
            module.compile()
    print(f"shared U-Net check: digseg processors without per-level text vs stock processors, max |diff| = "
          f"{diff:.2e} -> {'OK (Marigold sees the stock U-Net)' if diff < 1e-4 else 'MISMATCH'}", flush=True)

    # Marigold's alignment + ensembling, timed separately (it is inside Marigold's call time)
    align_log: list[float] = []
    original_ensemble = marigold.ensemble_depth

    def timed_ensemble(*a, **kw):
        t = time.perf_counter()
        try:
            return original_ensemble(*a, **kw)
        finally:
            align_log.append(time.perf_counter() - t)

    marigold.ensemble_depth = timed_ensemble

    rng = np.random.default_rng(args.seed)
    images = {s: [Image.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8)) for _ in range(args.batch)]
              for s in sizes}
    if args.batch == 1:
        images = {s: batch[0] for s, batch in images.items()}
    results: dict[tuple, Cell] = {}
    for dname in dtypes:
        dtype = resolve_dtype(dname, device)
        pipe.to(device, dtype)  # the Marigold pipeline shares every module
        trim_memory()
        print(f"\n## {dname}: warm-up (one untimed call per pipeline and cell; none for 20x50, whose modules are "
              f"warm from the other cells); load average {load_average()}", flush=True)
        for size, (e, k) in cells:
            if (e, k) == (20, 50):
                continue
            for name, fn, p in (("ours", run_ours, pipe), ("marigold", run_marigold, marigold)):
                t0 = time.perf_counter()
                fn(p, images[size], e, k, size, args.seed)
                print(f"  warm-up {size}px {e}x{k} {name}: {time.perf_counter() - t0:.2f} s", flush=True)
        for r in range(repeats):
            for size, (e, k) in cells:
                order = [("ours", run_ours, pipe), ("marigold", run_marigold, marigold)]
                if r % 2:
                    order.reverse()
                for name, fn, p in order:
                    cell = results.setdefault((dname, size, e, k, name), Cell())
                    align_log.clear()
                    dt, peak, cpu = timed(fn, p, images[size], e, k, size, args.seed, device=device)
                    cell.times.append(dt)
                    cell.cpu.append(cpu)
                    cell.peak_gib = max(cell.peak_gib, peak)
                    if name == "marigold":
                        cell.align_s.append(sum(align_log))
                    print(f"  round {r + 1} {dname} {size}px {e}x{k} {name}: {dt:.3f} s, peak +{peak:.3f} GiB, own CPU {cpu:.0%}",
                          flush=True)
        print(f"load average after {dname}: {load_average()}", flush=True)

    # ------------------------------------------------------------------ report
    lines = [
        "| dtype | size | E x K | ours s/img | ours img/s | ours peak GiB | Marigold s/img | Marigold img/s | "
        "Marigold peak GiB | of which Marigold align+ensemble s | Marigold / ours | (Marigold - align) / ours | "
        "paper FPS (its GPU, 512 px) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios, ratios_noalign = {}, {}
    for dname in dtypes:
        for size, (e, k) in cells:
            o, m = results[dname, size, e, k, "ours"], results[dname, size, e, k, "marigold"]
            ratio = m.seconds / o.seconds
            ratios[dname, size, e, k] = ratio
            align = statistics.median(m.align_s) if e > 1 else 0.0
            ratios_noalign[dname, size, e, k] = (m.seconds - align) / o.seconds
            b = args.batch  # images per call
            paper = PAPER_FPS_512.get((e, k)) if size == 512 else None
            lines.append(
                f"| {dname} | {size} | {e}x{k} | {format_number(o.seconds / b)} | {format_number(b / o.seconds)} | "
                f"{format_number(o.peak_gib)} | "
                f"{format_number(m.seconds / b)} | {format_number(b / m.seconds)} | {format_number(m.peak_gib)} | "
                f"{format_number(align) if e > 1 else '-'} | {ratio:.2f} | {(m.seconds - align) / o.seconds:.2f} | "
                f"{paper if paper else '-'} |")
    table = "\n".join(lines)
    print("\n# Results (median over rounds; runs listed below)\n")
    print(table)
    print("\nRuns (s) and own CPU share (median): " + "; ".join(
        f"{d} {s}px {e}x{k} {n} [{', '.join(f'{t:.3g}' for t in c.times)}] {statistics.median(c.cpu):.0%}"
        for (d, s, e, k, n), c in results.items()))

    print("\n# Goals (measured in this run" + (", tiny model: smoke run only, not the goal measurement" if args.quick else "") + ")\n")
    for dname in dtypes:
        for size in sizes:
            have = {(e, k) for s, (e, k) in cells if s == size}
            fast = [(e, k) for e, k in ((4, 2), (8, 2)) if (e, k) in have]
            if fast:
                ok = all(ratios[dname, size, e, k] >= GOAL_SPEEDUP for e, k in fast)
                detail = ", ".join(f"{e}x{k}: {ratios[dname, size, e, k]:.2f}x" for e, k in fast)
                print(f"GOAL ({dname}, {size}px): ours >= {GOAL_SPEEDUP}x faster than Marigold at "
                      f"{' and '.join(f'{e}x{k}' for e, k in fast)} (same dtype) -> {'PASS' if ok else 'FAIL'} ({detail})")
                ok = all(ratios_noalign[dname, size, e, k] >= GOAL_SPEEDUP for e, k in fast)
                detail = ", ".join(f"{e}x{k}: {ratios_noalign[dname, size, e, k]:.2f}x" for e, k in fast)
                print(f"  same goal against Marigold WITHOUT its alignment+ensembling time (decode cost only) -> "
                      f"{'PASS' if ok else 'FAIL'} ({detail})")
            if (1, 1) in have:
                r = ratios[dname, size, 1, 1]
                print(f"GOAL ({dname}, {size}px): ours no slower at 1x1 (Marigold / ours >= {1 - NO_SLOWER_TOL:.2f}) "
                      f"-> {'PASS' if r >= 1 - NO_SLOWER_TOL else 'FAIL'} ({r:.3f}x)")
            if device.type == "cuda" and size == 512 and (1, 1) in have:
                fps = args.batch / results[dname, size, 1, 1, "ours"].seconds
                print(f"GOAL (GPU, {dname}, 512px): ours 1x1 >= {GPU_GOAL_FPS:.0f} FPS with batching ({args.batch} "
                      f"images per call) -> {'PASS' if fps >= GPU_GOAL_FPS else 'FAIL'} ({fps:.1f} FPS; "
                      f"paper {PAPER_FPS_512[1, 1]} FPS)")
    print(f"\nload average at end: {load_average()} on {os.cpu_count()} CPUs")
    print(f"total wall time {time.perf_counter() - t_all:.0f} s")
    if args.json:
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        args.json.write_text(json.dumps({
            "device": device_name, "model": model, "batch": args.batch, "compile": args.compile,
            "light_decoder": args.light_decoder, "table": table,
            "cells": [{"dtype": d, "size": s, "setting": f"{e}x{k}", "pipeline": n, "seconds_per_call": c.seconds,
                       "images_per_s": args.batch / c.seconds, "peak_gib": c.peak_gib}
                      for (d, s, e, k, n), c in results.items()],
        }, indent=1))


if __name__ == "__main__":
    main()
