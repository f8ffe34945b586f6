"""VAE and U-Net time with NCHW vs channels-last input, SD-sized random weights, CPU (speed only).

    python benchmarks/bench_vae_layout.py            # 256 px, bf16 and fp32 (~2 min on 2 cores)

Why digseg's `encode_latents` / `decode_latents` pass channels-last tensors to the VAE (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse

import torch

from common import median_time, sd2_unet, sd_vae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(0)
    vae = sd_vae()
    unet = sd2_unet(in_channels=8)
    cl = torch.channels_last
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {args.size} px, random weights (speed only)")
    print("| dtype | module | NCHW s | channels-last input s | NCHW / channels-last |")
    print("|---|---|---:|---:|---:|")
    h = args.size // 8
    for dtype in (torch.bfloat16, torch.float32):
        vae.to(dtype)
        unet.to(dtype)
        x = torch.randn(1, 3, args.size, args.size, dtype=dtype)
        z = torch.randn(1, 4, h, h, dtype=dtype)
        zz = torch.randn(1, 8, h, h, dtype=dtype)
        text = torch.randn(1, 2, 1024, dtype=dtype)
        cells = {
            "VAE encode": (lambda t: vae.encode(t).latent_dist.mean, x),
            "VAE decode": (lambda t: vae.decode(t).sample, z),
            "U-Net": (lambda t: unet(t, 999, text).sample, zz),
        }
        with torch.no_grad():
            for name, (fn, inp) in cells.items():
                a = median_time(lambda: fn(inp))
                b = median_time(lambda: fn(inp.contiguous(memory_format=cl)))
                print(f"| {str(dtype).replace('torch.', '')} | {name} | {a:.3f} | {b:.3f} | {a / b:.2f} |", flush=True)


if __name__ == "__main__":
    main()
