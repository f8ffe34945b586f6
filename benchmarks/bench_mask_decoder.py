"""Light mask decoder vs the VAE decoder: accuracy on a trained model, speed at Stable Diffusion size.

    digseg quickstart --output digseg-quickstart
    digseg train-mask-decoder --model digseg-quickstart/model --output digseg-quickstart/model-light \
        --widths 64,32,16 --max-steps 600
    python benchmarks/bench_mask_decoder.py --model digseg-quickstart/model-light          # ~4 min, 2 cores
    python benchmarks/bench_mask_decoder.py --skip-accuracy --pipeline                     # + SD2-sized pipeline

1. Accuracy (`--model`, a model folder with a `mask_decoder/`): the same held-out synthetic scenes and seed,
   masks decoded by the VAE or by the light decoder; mIoU of binary prompts and palette, the difference, and
   images/s. Goal: within 1 point. These are a tiny model on synthetic data.
2. Decoder speed: SD's VAE decoder (`decode_latents`) against `LightMaskDecoder.for_vae` (widths 128, 64,
   32, 16), both with random weights (speed only), one latent [1, 4, S/8, S/8] per call, channels-last, at
   each size and dtype: GFLOP (`count_flops`), median seconds over `--repeats` after one warm-up, and the ratio.
3. `--pipeline`: the SD2-sized DiGSeg pipeline (random weights, `common.save_sd2_sized_backbone`) at
   256 px, 1x1 and 4x2, seconds per image with `mask_decoder="vae"` and `"light"`.
4. `--readback` (with `--model`, instead of 1): the decoder alone, without the U-Net. The VAE encoder's latents
   of the held-out scenes' rendered masks (the palette rendering, and each class's binary mask) are decoded by
   the VAE and by the light decoder; mIoU of the masks read back against the labels. The U-Net plays no part,
   so a quickstart model trained for one step (`digseg quickstart --max-steps 1`: the same trained VAE)
   measures a decoder as well as the full quickstart model does:

    digseg quickstart --output qs1 --max-steps 1 --device cpu
    digseg train-mask-decoder --model qs1/model --output qs1/light --max-steps 500
    python benchmarks/bench_mask_decoder.py --model qs1/light --readback --sizes ""
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import diffusers
import torch

from digseg import DiGSegPipeline
from digseg.data.synthetic import SyntheticScenes
from digseg.devices import resolve_dtype
from digseg.evaluation.estep import EStep, evaluate_binary, evaluate_palette
from digseg.evaluation.metrics import format_markdown_table
from digseg.models.digseg_model import decode_latents
from digseg.models.mask_decoder import LightMaskDecoder, count_flops
from digseg.pipelines.masks import MaskCodec

from common import random_backbone, sd_vae


def median_time(fn, repeats: int = 3) -> float:
    """Median wall seconds of `fn()` over `repeats` calls, after one untimed warm-up call."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[repeats // 2]


def accuracy(model: str, scenes: int, settings: list[str], seed: int) -> None:
    pipe = DiGSegPipeline.from_pretrained(model)
    if pipe.mask_decoder is None:
        sys.exit(f"{model} has no mask_decoder/: run `digseg train-mask-decoder --model {model} --output ...` first")
    pipe.set_progress_bar_config(disable=True)
    held_out = SyntheticScenes(scenes, seed=seed + 1)  # the quickstart's held-out scenes
    print(f"## Accuracy: {model} (light decoder widths {list(pipe.mask_decoder.config.block_channels)}), "
          f"{scenes} held-out synthetic scenes (tiny model, synthetic data)\n")
    rows = []
    for text in settings:
        for name, evaluate in (("binary", evaluate_binary), ("palette", evaluate_palette)):
            vae = evaluate(pipe, held_out, EStep.parse(text), seed=seed, mask_decoder="vae")
            light = evaluate(pipe, held_out, EStep.parse(text), seed=seed, mask_decoder="light")
            rows.append({"E-Step": text, "mode": name, "mIoU VAE": vae["mIoU"], "mIoU light": light["mIoU"],
                         "diff": light["mIoU"] - vae["mIoU"], "img/s VAE": vae["images_per_s"],
                         "img/s light": light["images_per_s"], "speed ratio": light["images_per_s"] / vae["images_per_s"]})
    print(format_markdown_table(rows, list(rows[0])))
    worst = max(abs(r["diff"]) for r in rows)
    print(f"\nGOAL: mIoU with the light mask decoder within 1 point of the VAE decoder -> "
          f"{'PASS' if worst <= 1.0 else 'FAIL'} (largest difference {worst:.2f})\n")


def _miou(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> float:
    """Mean IoU (percent) of label maps [N, H, W] over the classes present in either."""
    both = torch.bincount((label * num_classes + pred).flatten(), minlength=num_classes ** 2)
    confusion = both.reshape(num_classes, num_classes).double()  # [true, predicted]
    union = confusion.sum(0) + confusion.sum(1) - confusion.diag()
    return float(100 * (confusion.diag()[union > 0] / union[union > 0]).mean())


@torch.no_grad()
def readback(model: str, scenes: int, seed: int) -> None:
    pipe = DiGSegPipeline.from_pretrained(model)
    if pipe.mask_decoder is None:
        sys.exit(f"{model} has no mask_decoder/: run `digseg train-mask-decoder --model {model} --output ...` first")
    held_out = SyntheticScenes(scenes, seed=seed + 1)  # the quickstart's held-out scenes
    labels = torch.stack([held_out[i]["label"] for i in range(len(held_out))])  # [N, H, W]
    k = len(held_out.class_names)
    vae = pipe.vae

    def read(codec: MaskCodec, target: torch.Tensor, choice: str) -> torch.Tensor:
        z = vae.encode(codec.encode(target)).latent_dist.mean * vae.config.scaling_factor  # [N, C, h, w]
        return codec.decode(pipe.decode_masks(z, choice)).argmax(dim=1)  # [N, H, W]

    print(f"## Read-back: {model} (light decoder widths {list(pipe.mask_decoder.config.block_channels)}), "
          f"{scenes} held-out synthetic scenes, the VAE encoder's mask latents, no U-Net\n")
    rows = []
    palette, binary = MaskCodec("palette", k), MaskCodec("binary", 2)
    for choice in ("vae", "light"):
        binary_miou = [_miou(read(binary, (labels == c).long(), choice), (labels == c).long(), 2) for c in range(1, k)]
        rows.append({"decoder": choice, "palette mIoU": _miou(read(palette, labels, choice), labels, k),
                     "binary mIoU (mean over classes)": sum(binary_miou) / len(binary_miou)})
    print(format_markdown_table(rows, list(rows[0])))
    print()


@torch.no_grad()
def decoder_speed(sizes: list[int], dtypes: list[str], repeats: int) -> None:
    torch.manual_seed(0)
    vae = sd_vae()
    light = LightMaskDecoder.for_vae(vae).eval()
    params = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    print(f"## Decoder speed: SD's VAE decoder ({params(vae.decoder):.1f} M parameters) vs LightMaskDecoder "
          f"{list(light.config.block_channels)} ({params(light):.2f} M), random weights (speed only), "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}\n")
    rows = []
    for dtype_name in dtypes:
        dtype = resolve_dtype(dtype_name)
        vae.to(dtype, memory_format=torch.channels_last)
        light.to(dtype, memory_format=torch.channels_last)
        for size in sizes:
            z = torch.randn(1, 4, size // 8, size // 8, dtype=dtype)
            vae_s = median_time(lambda: decode_latents(vae, z), repeats)
            light_s = median_time(lambda: light(z.contiguous(memory_format=torch.channels_last)), repeats)
            rows.append({"dtype": dtype_name, "size": size,
                         "VAE GFLOP": count_flops(vae.decoder, z.float().to(dtype)), "light GFLOP": count_flops(light, z),
                         "VAE decode s": f"{vae_s:.3f}", "light decode s": f"{light_s:.4f}",
                         "VAE / light": vae_s / light_s})
            print(f"  {dtype_name} {size}px: VAE {vae_s:.3f} s, light {light_s:.4f} s", flush=True)
    print()
    print(format_markdown_table(rows, list(rows[0])))
    print()


def pipeline_speed(dtypes: list[str], repeats: int, size: int = 256) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        backbone = random_backbone(Path(tmp) / "sd2", "sd2")
        pipe = DiGSegPipeline.from_backbone(backbone, processing_resolution=size)
    pipe.set_mask_decoder(LightMaskDecoder.for_vae(pipe.vae))
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(3, size, size)
    print(f"## SD2-sized pipeline, {size} px, random weights (speed only), load average {os.getloadavg()[0]:.2f}\n")
    rows = []
    for dtype_name in dtypes:
        pipe.to(resolve_dtype(dtype_name))
        for text in ("1x1", "4x2"):
            s = EStep.parse(text)
            call = lambda choice: pipe(image, prompt="object", ensemble_size=s.ensemble_size,  # noqa: E731
                                       num_inference_steps=s.steps, generator=torch.Generator().manual_seed(0),
                                       mask_decoder=choice, show_progress_bar=False)
            vae_s = median_time(lambda: call("vae"), repeats)
            light_s = median_time(lambda: call("light"), repeats)
            rows.append({"dtype": dtype_name, "E-Step": text, "s/img VAE decoder": f"{vae_s:.3f}",
                         "s/img light decoder": f"{light_s:.3f}", "VAE / light": vae_s / light_s})
            print(f"  {dtype_name} {text}: VAE {vae_s:.2f} s, light {light_s:.2f} s", flush=True)
    print()
    print(format_markdown_table(rows, list(rows[0])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digseg-quickstart/model-light", help="a model folder with mask_decoder/")
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--settings", default="1x1,4x2")
    parser.add_argument("--seed", type=int, default=0, help="the quickstart's held-out scenes use seed + 1")
    parser.add_argument("--sizes", default="256,512", help="decoder-speed sizes ('' to skip that part)")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--pipeline", action="store_true", help="also time the SD2-sized pipeline at 256 px")
    parser.add_argument("--readback", action="store_true",
                        help="instead of the accuracy of whole calls: the masks the decoders read back from the VAE "
                             "encoder's latents (no U-Net)")
    args = parser.parse_args()
    diffusers.utils.logging.set_verbosity_error()  # no "kept in float32" notes when casting random models
    dtypes = args.dtypes.split(",")
    if args.readback:
        readback(args.model, args.scenes, args.seed)
    elif not args.skip_accuracy:
        accuracy(args.model, args.scenes, args.settings.split(","), args.seed)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if sizes:
        decoder_speed(sizes, dtypes, args.repeats)
    if args.pipeline:
        pipeline_speed(dtypes, args.repeats)


if __name__ == "__main__":
    main()
