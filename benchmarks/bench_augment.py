"""Time of one training augmentation per sample (digseg.data.augment), CPU, one thread as in a DataLoader worker.

    python benchmarks/bench_augment.py            # Cityscapes- and ADE20K-sized samples, ~10 s

The data stage must keep up with the accelerator: N workers give N / (ms per sample) samples per ms.
Inputs are a smooth synthetic image and a blocky 19-class label (the crop retry rule accepts most crops).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from digseg.data.augment import apply_augmentation
from digseg.data.augment_presets import augmentation_for


def sample(width: int, height: int) -> tuple[Image.Image, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([(xx // 8) % 256, (yy // 4) % 256, ((xx + yy) // 16) % 256], -1).astype(np.uint8)
    label = ((xx // 256) + 8 * (yy // 256)) % 19
    return Image.fromarray(image), label.astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = [("cityscapes", 2048, 1024, True), ("cityscapes", 2048, 1024, False), ("ade20k-150", 683, 512, True)]
    print(f"# torch {torch.__version__}, 1 thread, {args.samples} samples per row")
    print("| preset | input W x H | crop h x w | photometric | median ms | p90 ms |")
    print("|---|---|---|---|---:|---:|")
    for name, width, height, photometric in cases:
        image, label = sample(width, height)
        aug = augmentation_for(name, overrides={"photometric": photometric})
        gen = torch.Generator().manual_seed(0)
        apply_augmentation(image, label, aug, gen, 255)  # warm-up
        times = []
        for _ in range(args.samples):
            start = time.perf_counter()
            apply_augmentation(image, label, aug, gen, 255)
            times.append(1000 * (time.perf_counter() - start))
        crop = f"{aug.crop_size[0]}x{aug.crop_size[1]}"
        print(f"| {name} | {width}x{height} | {crop} | {photometric} | {np.median(times):.1f} | "
              f"{np.percentile(times, 90):.1f} |", flush=True)


if __name__ == "__main__":
    main()
