"""Training logs: `log.jsonl` always, TensorBoard through accelerate's trackers, and sample predictions.

TensorBoard (`<output_dir>/logs/digseg/`, `tensorboard --logdir <output_dir>/logs`) gets
  train/loss, train/lr                  every `log_every` steps (the loss averaged over those steps); on CUDA
                                        log.jsonl's line also holds memory_mib and memory_reserved_mib, the peak
                                        GPU memory so far (devices.peak_memory_mib)
  val/<score>                           every `eval_every` steps: the validation scores (training/validation.py)
  samples/prediction                    every `sample_every` steps: for a fixed batch of images (the first
                                        `num_sample_images` of the validation split; training images if there
                                        is none), rows of input | ground truth | prediction (1x1, the model's
                                        own classes)
Only the main process writes. Without the `tensorboard` package, log.jsonl is still written and one warning
says how to get TensorBoard.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image

from ..data.io import tensor_to_image
from ..devices import peak_memory_mib
from ..visualize import overlay, side_by_side

logger = logging.getLogger("digseg.train")


def tensorboard_available() -> bool:
    """torch's SummaryWriter (accelerate's TensorBoard tracker) needs the `tensorboard` package."""
    return importlib.util.find_spec("tensorboard") is not None


def _hparams(config: dict[str, Any]) -> dict[str, Any]:
    """The config's scalar entries as "section.key" (what TensorBoard's hparams accept); lists are joined."""
    out = {}
    flat = {f"{section}.{key}": value for section, keys in config.items() for key, value in keys.items()}
    for key, value in flat.items():
        if isinstance(value, dict):
            value = str(value)
        if isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value))[:500]
        if value is None:
            value = ""
        if isinstance(value, (bool, int, float, str)):
            out[key] = value
    return out


class TrainingLogger:
    """Owns the run's logs. With `use_tensorboard`, `accelerator` must have been built with the arguments
    `tracker_kwargs` returns (its TensorBoard tracker)."""

    def __init__(self, accelerator: Accelerator, output_dir: Path, config: dict[str, Any], use_tensorboard: bool) -> None:
        self.accelerator = accelerator
        self.output_dir = output_dir
        self.use_tensorboard = use_tensorboard
        if use_tensorboard:
            accelerator.init_trackers("digseg", config=_hparams(config))

    @staticmethod
    def tracker_kwargs(log_with: str, output_dir: Path) -> dict[str, Any]:
        """Accelerator(...) arguments for this run's trackers."""
        if log_with != "tensorboard":
            return {}
        if not tensorboard_available():
            logger.warning("TensorBoard logs are off: `pip install tensorboard` to get them (log.jsonl is written)")
            return {}
        return {"log_with": "tensorboard", "project_dir": str(output_dir / "logs")}

    def truncate_after(self, step: int, revalidate: bool = False) -> None:
        """Drop log.jsonl lines after `step` (written by a killed run after its last checkpoint); with `revalidate`
        also the validation line of `step` itself (the resumed run validates that step again)."""
        log = self.output_dir / "log.jsonl"
        if not (self.accelerator.is_main_process and log.is_file()):
            return
        entries = [(line, json.loads(line)) for line in log.read_text().splitlines() if line.strip()]
        kept = [line for line, entry in entries if entry["step"] < step
                or (entry["step"] == step and not (revalidate and any(k.startswith("val/") for k in entry)))]
        log.write_text("".join(line + "\n" for line in kept))

    def log_scalars(self, step: int, loss: float, lr: float) -> None:
        memory = peak_memory_mib(self.accelerator.device)
        self._log(step, {"loss": loss, "lr": lr, **memory}, {"train/loss": loss, "train/lr": lr})

    def log_validation(self, step: int, scores: dict[str, float]) -> None:
        """`scores`: {"val/mIoU": 41.2, ...}, under the same names in log.jsonl and TensorBoard."""
        self._log(step, scores, scores)

    def _log(self, step: int, line: dict[str, float], tensorboard: dict[str, float]) -> None:
        """One log.jsonl line {"step": step, **line}; `tensorboard`'s scalars at `step`. Main process only."""
        if not self.accelerator.is_main_process:
            return
        with open(self.output_dir / "log.jsonl", "a") as log:
            log.write(json.dumps({"step": step, **line}) + "\n")
        if self.use_tensorboard:
            self.accelerator.log(tensorboard, step=step)

    @torch.no_grad()
    def log_samples(self, step: int, pipe, samples: list[dict], resolution: int, seed: int) -> None:
        """Predict `samples` (dataset items: image [3, H, W] in [-1, 1], label [H, W]) and log one grid image."""
        if not (self.use_tensorboard and self.accelerator.is_main_process and samples):
            return
        unet, pathway = pipe.unet, pipe.text_pathway
        was_training = unet.training, pathway.training
        unet.eval(), pathway.eval()
        try:
            images = [tensor_to_image(s["image"]) for s in samples]  # uint8 [H, W, 3]
            result = pipe(images, ensemble_size=1, num_inference_steps=1, processing_resolution=resolution,
                          generator=torch.Generator().manual_seed(seed), show_progress_bar=False)
        finally:
            unet.train(was_training[0]), pathway.train(was_training[1])
        k = len(result.class_names)
        rows = [side_by_side(Image.fromarray(img), overlay(img, s["label"].cpu().numpy(), k, skip_background=False),
                             overlay(img, labels, k, skip_background=False))
                for img, s, labels in zip(images, samples, result.labels)]
        grid = np.concatenate([np.asarray(r) for r in rows], axis=0)  # [rows*H, 3*W, 3]
        tracker = self.accelerator.get_tracker("tensorboard", unwrap=True)
        tracker.add_image("samples/prediction", grid, global_step=step, dataformats="HWC")

    def end(self) -> None:
        if self.use_tensorboard:
            self.accelerator.end_training()
