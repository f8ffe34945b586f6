"""Training logs (docs/training.md, "Experiment trackers"): `log.jsonl` always (main process only: loss, lr and peak
memory, validation scores, notes), accelerate's trackers (`run.log_with`) the same scalars, and those that take
images "samples/prediction": rows of input | ground truth | prediction for a fixed batch of images."""

from __future__ import annotations

from importlib.util import find_spec
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers
from accelerate.utils import LoggerType
from PIL import Image

from ..data.io import tensor_to_image
from ..devices import peak_memory_mib
from ..errors import ConfigError, first_line
from ..pipelines.visualize import overlay, side_by_side
from .validation import evaluation_weights

logger = logging.getLogger("digseg.train")


def tracker_names(log_with: str | list[str]) -> list[str]:
    """`run.log_with` ("tensorboard", "wandb,mlflow", ["aim"], "all", "none") as accelerate's tracker names."""
    names = log_with.split(",") if isinstance(log_with, str) else log_with if isinstance(log_with, list) else [log_with]
    names = [str(name).strip() for name in names if str(name).strip()]
    if names == ["none"]:
        return []
    known = sorted(LOGGER_TYPE_TO_CLASS)
    if not names or any(name not in (*known, "all") for name in names):
        raise ConfigError(f"run.log_with takes trackers accelerate supports, comma-separated: "
                          f"{', '.join(known)}; or all, or none; got {log_with!r}")
    return list(dict.fromkeys(names))


def _hparams(config: dict[str, Any]) -> dict[str, Any]:
    """The config as "section.key" scalars (what TensorBoard's hparams accept)."""
    def scalar(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return ", ".join(map(str, value))[:500]
        return "" if value is None else str(value) if isinstance(value, dict) else value

    return {f"{section}.{key}": scalar(value) for section, keys in config.items() for key, value in keys.items()}


class TrainingLogger:
    """The run's logs. With `use_trackers`, `accelerator` was built with `tracker_kwargs`."""

    def __init__(self, accelerator: Accelerator, output_dir: Path, config: dict[str, Any], use_trackers: bool) -> None:
        self.accelerator, self.output_dir, self.use_trackers = accelerator, output_dir, use_trackers
        self._no_images: set[str] = set()  # trackers already said to take no images
        if use_trackers:
            try:
                accelerator.init_trackers("digseg", config=_hparams(config),
                                          init_kwargs={"mlflow": {"run_name": output_dir.name},
                                                       "wandb": {"name": output_dir.name}})
            except Exception as exc:  # a tracker's own setup (no login, an unreachable server...)
                names = ", ".join(str(t) for t in accelerator.log_with)
                raise ConfigError(f"cannot start the tracker(s) {names} of run.log_with: {first_line(exc)}") from exc

    @staticmethod
    def tracker_kwargs(log_with: str | list[str], output_dir: Path) -> dict[str, Any]:
        """Accelerator(...) arguments for this run's trackers (TensorBoard, if not installed, dropped)."""
        names = tracker_names(log_with)
        if "tensorboard" in names and find_spec("tensorboard") is None:  # torch's SummaryWriter needs it
            logger.warning("TensorBoard logs are off: `pip install tensorboard` to get them (log.jsonl is written)")
            names.remove("tensorboard")
        available = {getattr(t, "value", t) for t in get_available_trackers()}
        builtin = {t.value for t in LoggerType} - {"all"}  # a registered tracker class is not built in
        missing = [name for name in names if name in builtin and name not in available]
        if missing:
            raise ConfigError(f"run.log_with names {', '.join(missing)}, which is not installed: "
                              f"pip install {' '.join(missing)}")
        if names == ["all"] and not get_available_trackers():
            logger.warning("run.log_with is all, but no tracker is installed (log.jsonl is written)")
            return {}
        return {"log_with": names, "project_dir": str(output_dir / "logs")} if names else {}

    def truncate_after(self, step: int, revalidate: bool = False) -> None:
        """Drop log.jsonl lines after `step` (a killed run's), and those of `step` that a resume writes again: its
        config-change and bad-samples notes, and with `revalidate` its validation scores."""
        log = self.output_dir / "log.jsonl"
        if not (self.accelerator.is_main_process and log.is_file()):
            return
        entries = [(line, json.loads(line)) for line in log.read_text().splitlines() if line.strip()]
        kept = [line for line, entry in entries if entry["step"] < step
                or (entry["step"] == step and "config_change" not in entry and "bad_samples" not in entry
                    and not (revalidate and any(k.startswith("val/") for k in entry)))]
        log.write_text("".join(line + "\n" for line in kept))

    def log_scalars(self, step: int, loss: float, lr: float) -> None:
        memory = peak_memory_mib(self.accelerator.device)
        self._log(step, {"loss": loss, "lr": lr, **memory}, {"train/loss": loss, "train/lr": lr})

    def log_note(self, step: int, **note: Any) -> None:
        """Facts of a step (a config change, bad samples, a skipped step), log.jsonl only."""
        self._log(step, note, {})

    def log_validation(self, step: int, scores: dict[str, float]) -> None:
        self._log(step, scores, scores)

    def _log(self, step: int, line: dict[str, float], scalars: dict[str, float]) -> None:
        if not self.accelerator.is_main_process:
            return
        with open(self.output_dir / "log.jsonl", "a") as log:
            log.write(json.dumps({"step": step, **line}) + "\n")
        if self.use_trackers and scalars:
            self.accelerator.log(scalars, step=step)

    def log_samples(self, step: int, pipe, samples: list[dict], resolution: int, seed: int) -> None:
        """Predict `samples` (items: image [3, H, W] in [-1, 1], label [H, W]); log one grid image to the trackers."""
        if not samples:
            return
        images = [tensor_to_image(s["image"]) for s in samples]  # uint8 [H, W, 3]
        with evaluation_weights([pipe.unet, pipe.text_pathway]):
            result = pipe(images, ensemble_size=1, num_inference_steps=1, processing_resolution=resolution,
                          generator=torch.Generator().manual_seed(seed), show_progress_bar=False)
        k = len(result.class_names)
        rows = [side_by_side(Image.fromarray(img), overlay(img, s["label"].cpu().numpy(), k, skip_background=False),
                             overlay(img, labels, k, skip_background=False))
                for img, s, labels in zip(images, samples, result.labels)]
        grid = np.concatenate([np.asarray(r) for r in rows], axis=0)  # [rows*H, 3*W, 3]
        name = "samples/prediction"
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image(name, grid, global_step=step, dataformats="HWC")
            elif tracker.name == "mlflow":
                import mlflow

                mlflow.log_image(grid, key=name, step=step)
            elif tracker.name in ("wandb", "swanlab"):
                tracker.log_images({name: [grid]}, step=step)
            elif tracker.name in ("aim", "clearml"):
                tracker.log_images({name: grid}, step=step)
            elif tracker.name not in self._no_images:  # comet_ml, ...
                self._no_images.add(tracker.name)
                logger.info("sample predictions are not sent to %s, which digseg logs no images to", tracker.name)

    def end(self) -> None:
        if self.use_trackers:
            self.accelerator.end_training()

