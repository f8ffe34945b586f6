"""Does a channels-last U-Net input speed up the SD2-sized pipeline? 256 px, bf16 and fp32, CPU (speed only).

    python benchmarks/bench_unet_input_layout.py      # ~3 min on 2 cores

`bench_vae_layout.py` showed 1.20x for the bare U-Net in bf16 with a channels-last input. This re-checks it in
the pipeline: the same calls (1x1 and 4x2, same seed) with the U-Net's input in the default layout or made
channels-last just before each U-Net pass (`ChannelsLastInputPipeline`, a subclass local to this probe that
overrides `DiGSegPipeline.unet_prediction`, the method every U-Net pass goes through). Median of 3 rounds,
alternating which layout goes first; the largest probability difference shows the outputs agree to float rounding.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import diffusers
import torch

from digseg import DiGSegPipeline

from common import random_backbone


class ChannelsLastInputPipeline(DiGSegPipeline):
    """This probe's pipeline: with `channels_last_input` set, every U-Net input [B, 8, h, w] is made channels-last
    just before the U-Net pass; unset, it is exactly `DiGSegPipeline`."""

    channels_last_input = False

    def unet_prediction(self, unet: torch.nn.Module, model_input: torch.Tensor, timesteps: torch.Tensor,
                        text_levels: list[torch.Tensor]) -> torch.Tensor:
        if self.channels_last_input:
            model_input = model_input.contiguous(memory_format=torch.channels_last)
        return super().unet_prediction(unet, model_input, timesteps, text_levels)


def main() -> None:
    diffusers.utils.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        backbone = random_backbone(Path(tmp) / "sd2", "sd2")
        pipe = ChannelsLastInputPipeline.from_backbone(backbone, processing_resolution=256)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(3, 256, 256)
    layouts = {"default": False, "channels-last": True}  # name -> channels_last_input
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
            for name, channels_last in layouts.items():  # warm-up
                pipe.channels_last_input = channels_last
                call()
            for r in range(3):
                for name in (list(layouts) if r % 2 == 0 else list(layouts)[::-1]):
                    pipe.channels_last_input = layouts[name]
                    start = time.perf_counter()
                    probs[name] = call()
                    times[name].append(time.perf_counter() - start)
            a, b = (statistics.median(times[name]) for name in layouts)
            diff = abs(probs["default"] - probs["channels-last"]).max()
            print(f"| {str(dtype).replace('torch.', '')} | {e}x{k} | {a:.3f} | {b:.3f} | {a / b:.2f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
