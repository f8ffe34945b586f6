"""Does a channels-last U-Net input speed up the SD2-sized pipeline? 256 px, bf16 and fp32, CPU (speed only).

    python benchmarks/bench_unet_input_layout.py      # ~3 min on 2 cores

`bench_vae_layout.py` showed 1.20x for the bare U-Net in bf16 with a channels-last input. This re-checks it in
the pipeline: the same calls (1x1 and 4x2, same seed) with the U-Net's input in the default layout or made
channels-last just before each U-Net pass (patched in for this probe only). Median of 3 rounds, alternating
which layout goes first; the largest probability difference shows the outputs agree to float rounding.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import diffusers
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_open_vocab import _trim, save_sd2_sized_backbone  # noqa: E402

import digseg.pipeline as pipeline_module  # noqa: E402
from digseg import DiGSegPipeline  # noqa: E402

STOCK = pipeline_module.unet_forward_with_text


def channels_last_forward(unet, context, sample, timestep, text):
    return STOCK(unet, context, sample.contiguous(memory_format=torch.channels_last), timestep, text)


def main() -> None:
    diffusers.utils.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        save_sd2_sized_backbone(Path(tmp) / "sd2")
        _trim()
        pipe = DiGSegPipeline.from_backbone(Path(tmp) / "sd2", processing_resolution=256)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(3, 256, 256)
    layouts = {"default": STOCK, "channels-last": channels_last_forward}
    print("| dtype | E x K | default input s | channels-last input s | default / channels-last | max prob diff |")
    print("|---|---|---:|---:|---:|---:|")
    for dtype in (torch.bfloat16, torch.float32):
        pipe.to(dtype)
        for e, k in ((1, 1), (4, 2)):
            def call():
                return pipe(image, prompt="object", ensemble_size=e, num_inference_steps=k,
                            generator=torch.Generator().manual_seed(0), show_progress_bar=False).probabilities
            times: dict[str, list[float]] = {name: [] for name in layouts}
            probs = {}
            try:
                for name, forward in layouts.items():  # warm-up
                    pipeline_module.unet_forward_with_text = forward
                    call()
                for r in range(3):
                    for name in (list(layouts) if r % 2 == 0 else list(layouts)[::-1]):
                        pipeline_module.unet_forward_with_text = layouts[name]
                        start = time.perf_counter()
                        probs[name] = call()
                        times[name].append(time.perf_counter() - start)
            finally:
                pipeline_module.unet_forward_with_text = STOCK
            a, b = (statistics.median(times[name]) for name in layouts)
            diff = abs(probs["default"] - probs["channels-last"]).max()
            print(f"| {str(dtype).replace('torch.', '')} | {e}x{k} | {a:.3f} | {b:.3f} | {a / b:.2f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
