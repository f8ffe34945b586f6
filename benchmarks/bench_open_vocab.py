"""Open-vocabulary cost benchmark: per-image time and peak memory of the fast (top-k) and exact paths.

For each model and vocabulary size N (the first N ADE20K-847 class names) this measures, per image:

- fast path:  ``pipe(image, classes=names, top_k=min(8, N))`` - one U-Net "relevance" pass attending to all N
  class vectors ranks the classes, then exact binary queries run for the top k only. For N <= 8, top_k = N
  prunes nothing and the call is the exact path.
- exact path: ``pipe(image, classes=names)`` - one binary diffusion query (U-Net pass + VAE decode) per class.

Models:

- ``tiny``: ``digseg.models.tiny`` random backbone, 64x64 images (fast; mostly Python/dispatch overhead).
- ``sd2``: the Stable Diffusion 2 U-Net and VAE architecture with RANDOM weights at 256x256, a 1024-wide CLIP
  text encoder with only 2 layers (the real 23-layer OpenCLIP-H text tower only changes the one-time, cached
  prompt-encoding cost, not the per-image cost), the tiny tokenizer (77 tokens) and SD's DDIM schedule.

Settings: float32, ``torch.no_grad``, 1x1 E-step (ensemble 1, 1 denoising step), batch of one image. The prompt
embedding cache is warmed before timing; its one-time cost is reported separately, as is the per-call cost of
projecting the cached embeddings through the text pathway (part of every call).

Peak memory = max RSS sampled by a background thread during the call minus the RSS just before it (after
``gc.collect()`` and ``malloc_trim``), so it is the extra memory one call needs on top of the loaded model.

Exact-path costs that would take too long are extrapolated linearly from the measured per-class cost and are
marked "extrapolated". Speed only: random weights, so no accuracy claim; "agreement" is the fraction of pixels
where the fast and exact label maps are equal (same seed), which only shows whether pruning changed the answer.

Usage::

    python benchmarks/bench_open_vocab.py            # full run (tiny + sd2), ~8 min on 2 CPU cores
    python benchmarks/bench_open_vocab.py --quick    # smoke run: tiny only, N = 1, 8, 64
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import torch

from digseg import DiGSegPipeline
from digseg.data.base import read_class_file
from digseg.models.tiny import save_tiny_backbone, tiny_scheduler, tiny_tokenizer
from digseg.prompts import class_prompts, resolve_templates

GOAL_RATIO = 10.0
GOAL_N = 847

try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc
    _LIBC = None


def _trim() -> None:
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


# ------------------------------------------------------------------------------------------------ measuring
class PeakRSS:
    """Context manager: peak RSS above the RSS at entry, sampled by a background thread."""

    def __init__(self, interval: float = 0.003) -> None:
        self.interval = interval
        self.proc = psutil.Process(os.getpid())
        self.extra_bytes = 0

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self.proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        _trim()
        self.base = self.proc.memory_info().rss
        self._peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self.proc.memory_info().rss)
        self.extra_bytes = self._peak - self.base

    @property
    def extra_mib(self) -> float:
        return self.extra_bytes / 2**20


@dataclass
class Measure:
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # own CPU time / (wall time x torch threads) per call
    peak_mib: float = 0.0
    labels: np.ndarray | None = None

    @property
    def seconds(self) -> float:
        return statistics.median(self.times)

    def describe(self) -> str:
        runs = ", ".join(f"{t:.3g}" for t in self.times)
        return (f"{self.seconds:.3f} s/image (runs: {runs}; own CPU use {statistics.median(self.cpu):.0%} of "
                f"{torch.get_num_threads()} threads), peak +{self.peak_mib:.0f} MiB")


def one_call(pipe: DiGSegPipeline, image: torch.Tensor, names: list[str], top_k: int | None, seed: int,
             into: Measure | None) -> None:
    """One timed call (fresh generator with `seed`, so fast and exact draw the same noise); adds to `into`."""
    proc = psutil.Process(os.getpid())
    gen = torch.Generator().manual_seed(seed)
    with PeakRSS() as mem:
        c0 = sum(proc.cpu_times()[:2])
        t0 = time.perf_counter()
        out = pipe(image, classes=names, top_k=top_k, ensemble_size=1, num_inference_steps=1,
                   generator=gen, show_progress_bar=False)
        dt = time.perf_counter() - t0
        cpu = sum(proc.cpu_times()[:2]) - c0
    if into is not None:
        into.times.append(dt)
        into.cpu.append(cpu / (dt * torch.get_num_threads()))
        into.peak_mib = max(into.peak_mib, mem.extra_mib)
        into.labels = out.labels[0]


def query_table(pipe: DiGSegPipeline, names: list[str]) -> list[list[str]]:
    """The prompt table `__call__` builds for `classes=names` with the pipeline's own template."""
    templates = resolve_templates(None, pipe.config.prompt_template)
    return [class_prompts(n, templates) for n in names]


def text_costs(pipe: DiGSegPipeline, names: list[str]) -> tuple[int, float, float]:
    """-> (distinct prompts, one-time encode s from a cold cache, per-call gather s on a warm cache).

    Per call the pipeline gathers the cached encoder features and averages each class's prompt variants
    (`query_states`); the per-level projections run later, only on pooled vectors and queried classes.

    Leaves the cache warm for `names`.
    """
    table = query_table(pipe, names)
    prompts = list(dict.fromkeys(p for row in table for p in row))
    pipe.prompt_encoder.clear_cache()
    t0 = time.perf_counter()
    pipe.prompt_encoder.encode(prompts)
    encode_s = time.perf_counter() - t0
    pipe.query_states(table)  # warm (allocator) once
    t0 = time.perf_counter()
    states = pipe.query_states(table)
    project_s = time.perf_counter() - t0
    del states
    return len(prompts), encode_s, project_s


# ------------------------------------------------------------------------------------------------ models
def build_tiny(tmp: Path) -> tuple[DiGSegPipeline, int]:
    save_tiny_backbone(tmp / "tiny")
    return DiGSegPipeline.from_backbone(tmp / "tiny"), 64


def sd2_unet(in_channels: int = 4):
    """Stable Diffusion 2's U-Net architecture (865 M parameters with 4 input channels), random weights."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=96, in_channels=in_channels, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024, use_linear_projection=True,
    ).eval()


def sd_vae():
    """Stable Diffusion's VAE architecture (84 M parameters), random weights."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=768,
        scaling_factor=0.18215,
    ).eval()


def save_sd2_sized_backbone(path: Path, seed: int = 0) -> Path:
    """SD2's U-Net + SD's VAE (random weights), a 2-layer 1024-wide CLIP text encoder, tiny tokenizer (77 tokens)."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=4096, num_hidden_layers=2,
        num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )).eval()
    unet = sd2_unet()
    vae = sd_vae()
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=tiny_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path


def build_sd2(tmp: Path) -> tuple[DiGSegPipeline, int]:
    save_sd2_sized_backbone(tmp / "sd2")
    _trim()
    return DiGSegPipeline.from_backbone(tmp / "sd2", processing_resolution=256), 256


MODELS = {
    "tiny": dict(build=build_tiny, title="tiny model (digseg.models.tiny, random weights), 64x64 images"),
    "sd2": dict(build=build_sd2, title="SD2-sized model (SD2 U-Net + SD VAE, RANDOM weights, 2-layer 1024-wide "
                                       "CLIP text encoder), 256x256 images"),
}


# ------------------------------------------------------------------------------------------------ report
def fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.{digits}g}"


def bench_model(key: str, sizes: list[int], exact_sizes: list[int], top_k: int, repeats: int, warmup: int,
                seed: int, all_names: list[str]) -> dict:
    spec = MODELS[key]
    print(f"\n## {spec['title']}\n", flush=True)
    with tempfile.TemporaryDirectory(prefix=f"bench_{key}_") as tmp:
        t0 = time.perf_counter()
        pipe, size = spec["build"](Path(tmp))
        print(f"built + saved + loaded in {time.perf_counter() - t0:.1f} s "
              f"(U-Net {sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.1f} M params, "
              f"VAE {sum(p.numel() for p in pipe.vae.parameters()) / 1e6:.1f} M, "
              f"text encoder {sum(p.numel() for p in pipe.text_encoder.parameters()) / 1e6:.1f} M)", flush=True)
    pipe.set_progress_bar_config(disable=True)
    print(f"load average (1/5/15 min) before timing: {', '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))

    # text: one-time encoding per vocabulary (cold cache), then the per-call gather of cached features (warm cache)
    text = {}
    for n in sizes:
        text[n] = text_costs(pipe, all_names[:n])
        print(f"N={n}: {text[n][0]} prompts, one-time encode {text[n][1]:.3f} s, "
              f"per-call text gather {text[n][2]:.3f} s", flush=True)
    pipe.query_states(query_table(pipe, all_names[: max(sizes)]))  # whole vocabulary cached from here on

    # one untimed call so one-time costs (first touch of the weights, allocator growth) are not counted
    t0 = time.perf_counter()
    one_call(pipe, image, all_names[:1], None, seed, None)
    print(f"warm-up call {time.perf_counter() - t0:.2f} s", flush=True)

    # cells are run round-robin (every cell once per round), so a burst of load from other processes hits all
    # cells alike instead of one; per cell: `warmup` untimed rounds, then the median of `repeats` timed rounds
    cells = []
    for n in sizes:
        if n in exact_sizes:
            cells.append((n, "exact", None))
        cells.append((n, "fast", min(top_k, n)))
    results = {(n, mode): Measure() for n, mode, _ in cells}
    for r in range(warmup + repeats):
        for n, mode, k in cells:
            one_call(pipe, image, all_names[:n], k, seed, results[n, mode] if r >= warmup else None)
            if r == warmup + repeats - 1:
                print(f"N={n} {mode}{f' (top_k={k})' if mode == 'fast' else ''}: {results[n, mode].describe()}",
                      flush=True)
    print(f"load average (1/5/15 min) after timing: {', '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs", flush=True)
    fast = {n: results[n, "fast"] for n in sizes}
    exact = {n: results[n, "exact"] for n in sizes if n in exact_sizes}

    # linear model of the exact path from the measured sizes: t(N) = t(1) + (N - 1) * per_class
    measured = sorted(exact)
    one = exact[measured[0]].seconds if measured[0] == 1 else None
    if len(measured) >= 2:
        lo, hi = measured[0], measured[-1]
        per_class = (exact[hi].seconds - exact[lo].seconds) / (hi - lo)
        intercept = exact[lo].seconds - lo * per_class
    else:
        per_class = intercept = None

    lines = [
        f"### {spec['title']}",
        "",
        f"Per image, text cache warm; fast = top_k={top_k} (top_k = N when N <= {top_k}: nothing pruned, same path as "
        f"exact). {'Median of ' + str(repeats) + ' runs (round-robin over cells)' if repeats > 1 else '1 run'} per cell. "
        f"Exact per-class cost {fmt(per_class)} s (from N={measured[0]}..{measured[-1]}).",
        "",
        "| N | fast s/image | exact s/image | fast peak MiB | exact peak MiB | fast / one-class | exact / one-class | fast vs exact labels agree |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = {}
    for n in sizes:
        f = fast[n].seconds
        if n in exact:
            e, e_txt, e_mem = exact[n].seconds, fmt(exact[n].seconds), fmt(exact[n].peak_mib)
            agree = f"{float((fast[n].labels == exact[n].labels).mean()):.3f}"
        else:
            e = intercept + n * per_class if per_class is not None else None
            e_txt, e_mem, agree = f"{fmt(e)} (extrapolated)", "n/a", "n/a"
        ratios[n] = f / one if one else None
        e_ratio = fmt(e / one) + (" (extrapolated)" if n not in exact else "") if (one and e is not None) else "n/a"
        lines.append(f"| {n} | {fmt(f)} | {e_txt} | {fmt(fast[n].peak_mib)} | {e_mem} | "
                     f"{fmt(ratios[n])} | {e_ratio} | {agree} |")
    lines += [
        "",
        "Text costs (not in the table above: encoding is one-time per vocabulary and cached; the gather is "
        "inside every call):",
        "",
        "| N | distinct prompts | one-time text encode s | per-call text gather s |",
        "|---:|---:|---:|---:|",
    ]
    for n in sizes:
        lines.append(f"| {n} | {text[n][0]} | {fmt(text[n][1])} | {fmt(text[n][2])} |")
    table = "\n".join(lines)
    print("\n" + table + "\n", flush=True)

    if GOAL_N in fast and one:
        r = ratios[GOAL_N]
        verdict = "PASS" if r <= GOAL_RATIO else "FAIL"
        goal = (f"GOAL ({key}): {GOAL_N} classes cost at most {GOAL_RATIO:g}x one class -> {verdict} "
                f"(fast {GOAL_N} classes {fast[GOAL_N].seconds:.3f} s / one class {one:.3f} s = {r:.2f}x)")
    else:
        goal = f"GOAL ({key}): {GOAL_N} classes cost at most {GOAL_RATIO:g}x one class -> not checked ({GOAL_N} not in sizes)"
    print(goal, flush=True)
    del pipe
    _trim()
    return dict(table=table, goal=goal)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model only, N = 1, 8, 64, 3 runs")
    parser.add_argument("--models", default=None, help="comma list of: tiny, sd2 (default: both; --quick: tiny)")
    parser.add_argument("--sizes", default=None, help="vocabulary sizes (default 1,8,64,847; --quick 1,8,64)")
    parser.add_argument("--top-k", type=int, default=8, help="classes kept by the fast path (default 8)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per tiny-model cell (default 7; --quick 3)")
    parser.add_argument("--tiny-exact", default="1,8,64", help="sizes where the tiny model's exact path is measured")
    parser.add_argument("--sd2-exact", default="1,8", help="sizes where the SD2-sized exact path is measured")
    parser.add_argument("--sd2-repeats", type=int, default=3, help="timed rounds per SD2-sized cell (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's default)")
    args = parser.parse_args(argv)

    models = (args.models or ("tiny" if args.quick else "tiny,sd2")).split(",")
    sizes = [int(s) for s in (args.sizes or ("1,8,64" if args.quick else "1,8,64,847")).split(",")]
    if 1 not in sizes:
        parser.error("--sizes must include 1 (the one-class reference)")
    repeats = args.repeats or (3 if args.quick else 7)
    if args.threads:
        torch.set_num_threads(args.threads)
    all_names = read_class_file("ade20k_847.txt")
    if max(sizes) > len(all_names):
        all_names = all_names + [f"class {i}" for i in range(len(all_names), max(sizes))]

    print("# digseg open-vocabulary benchmark")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, {platform.processor() or platform.machine()}, "
          f"float32, no_grad, ensemble 1, 1 step, class names = first N of ADE20K-847")
    torch.set_grad_enabled(False)
    t_all = time.perf_counter()
    results = {}
    for key in models:
        if key not in MODELS:
            parser.error(f"unknown model {key!r}")
        exact_sizes = [int(s) for s in (args.tiny_exact if key == "tiny" else args.sd2_exact).split(",")]
        exact_sizes = [n for n in exact_sizes if n in sizes]
        if 1 not in exact_sizes:
            exact_sizes = [1] + exact_sizes
        results[key] = bench_model(key, sizes, exact_sizes, args.top_k,
                                   repeats if key == "tiny" else args.sd2_repeats, 1 if key == "tiny" else 0, args.seed,
                                   all_names)
    print("\n# Summary\n")
    for key, res in results.items():
        print(res["table"] + "\n")
    for key, res in results.items():
        print(res["goal"])
    print(f"\ntotal wall time {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
