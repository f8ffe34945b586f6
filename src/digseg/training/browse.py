"""`digseg browse-data` (docs/training.md): training samples exactly as the trainer reads them (sample k: micro-step
k // B, slot k % B of one process), as <k>_image.png, <k>_label.png and <k>_overlay.png (ignore untinted)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..data.io import save_label_png, tensor_to_image
from ..errors import DataError
from ..pipelines.visualize import class_overlay
from .config import TrainConfig
from .run import build_dataset, checked_dataset, training_augmentation
from .samples import MicroStepSampler, TrainingSamples


def write_training_samples(config: TrainConfig, output: str | Path, num: int) -> int:
    """Write the first `num` training samples of `config` to `output`; -> how many were written."""
    if num < 1:
        raise DataError(f"--num must be >= 1, got {num}")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    dataset, _ = checked_dataset(config.data, build_dataset(config.data, config.run.seed), None)  # as training
    names = list(config.data.class_names) or list(dataset.class_names)
    ignore = getattr(dataset, "ignore_index", 255)
    samples = TrainingSamples(dataset, training_augmentation(config.data), config.run.seed, ignore,
                              skip_bad=config.data.bad_samples == "skip")
    batch = config.optim.batch_size
    sampler = MicroStepSampler(len(dataset), batch, 1, 0, config.run.seed, 0, -(-num // batch))
    requests = [r for step in sampler for r in step][:num]
    for k, request in enumerate(requests):
        sample = samples[request]
        if "error" in sample:
            raise DataError(sample["error"])
        image = tensor_to_image(sample["image"])  # uint8 [h, w, 3]
        label = sample["label"].numpy()  # int64 [h, w]
        Image.fromarray(image).save(out / f"{k:04d}_image.png")
        save_label_png(out / f"{k:04d}_label.png", label, len(names))  # ignore: 255 (65535 over 255 classes)
        shown = np.where(label == ignore, len(names), label)  # ignore: untinted
        class_overlay(image, shown, names).save(out / f"{k:04d}_overlay.png")
    return len(requests)
