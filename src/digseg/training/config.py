"""Training configuration: one dataclass, read from / written to YAML, overridden by command-line flags.

A YAML file may name a parent with `base: other.yaml` (one level of inheritance, path relative to the file).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

TASKS = ("binary", "palette", "both")


@dataclass
class TrainConfig:
    # model
    pretrained: str = ""  # Stable Diffusion folder or hub id
    prediction_type: str = "sample"  # sample (x0) | v_prediction | epsilon; x0 trains best in few steps
    text_encoder: str = ""  # "" = the backbone's own; else a CLIP text encoder folder or hub id
    prompt_template: str = ""  # "" = the dataset's default (e.g. "a photo of a {}."); must contain "{}"
    # share of training samples at the last timestep (T-1), where few-step trailing inference starts; the rest
    # are uniform over [0, T). Uniform alone spends most updates on nearly noise-free, easy inputs.
    max_timestep_prob: float = 0.5
    # data
    dataset: str = "synthetic"  # synthetic | folder
    data_root: str | None = None
    num_scenes: int = 2000  # synthetic only
    resolution: int = 0  # training images are resized to resolution x resolution; 0 = the backbone's native size
    task: str = "both"  # binary (prompt -> mask) | palette (closed-set classes) | both (alternating at random)
    negative_prob: float = 0.1  # binary: chance of querying a class absent from the image (target: empty mask)
    cache_latents: bool = True  # keep the frozen VAE's latents in memory after their first use
    latent_cache: str = ""  # a folder written by `digseg cache-latents`: the trainer reads latents, never runs the VAE
    # optimisation
    output_dir: str = "runs/digseg"
    max_steps: int = 1000
    batch_size: int = 4  # per process, per micro-step
    gradient_accumulation_steps: int = 1
    learning_rate: float = 3e-5  # fine-tuning a pretrained U-Net; a tiny model from scratch wants ~5e-4
    lr_scheduler: str = "cosine"  # any name diffusers.optimization.get_scheduler accepts
    lr_warmup_steps: int = 50
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    mixed_precision: str = ""  # no | fp16 | bf16 | "" = what the launcher says (accelerate config), else no
    gradient_checkpointing: bool = False  # recompute U-Net activations in backward: less memory, ~30% slower
    use_ema: bool = False
    ema_decay: float = 0.999
    # bookkeeping
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 25
    log_with: str = "tensorboard"  # tensorboard (<output_dir>/logs, when installed) | none; log.jsonl is always written
    sample_every: int = 250  # predictions on a fixed batch of training images into TensorBoard; 0 = never
    num_sample_images: int = 4
    seed: int = 0
    class_names: list[str] = field(default_factory=list)  # filled from the dataset when empty

    def validate(self) -> "TrainConfig":
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.prediction_type not in ("sample", "v_prediction", "epsilon"):
            raise ConfigError(f"prediction_type must be sample, v_prediction or epsilon, got {self.prediction_type!r}")
        if self.mixed_precision not in ("", "no", "fp16", "bf16"):
            raise ConfigError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.log_with not in ("tensorboard", "none"):
            raise ConfigError(f"log_with must be tensorboard or none, got {self.log_with!r}")
        if self.sample_every < 0 or self.num_sample_images < 1:
            raise ConfigError(f"sample_every must be >= 0 and num_sample_images >= 1, got {self.sample_every}, "
                              f"{self.num_sample_images}")
        if self.resolution < 0:
            raise ConfigError(f"resolution must be >= 0 (0 = native), got {self.resolution}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.max_timestep_prob <= 1.0:
            raise ConfigError(f"max_timestep_prob must be in [0, 1], got {self.max_timestep_prob}")
        if self.prompt_template and "{}" not in self.prompt_template:
            raise ConfigError(f"prompt_template must contain '{{}}', got {self.prompt_template!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
        return cls(**values).validate()

    @classmethod
    def load(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> "TrainConfig":
        values = read_yaml_with_base(Path(path))
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.from_dict(values)


def read_yaml_with_base(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse {path}: {exc}") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys")
    base = values.pop("base", None)
    if base is None:
        return values
    base_path = (path.parent / base).resolve()
    if not base_path.is_file():
        raise ConfigError(f"base config {base_path} (named in {path}) not found")
    parent = yaml.safe_load(base_path.read_text()) or {}
    if "base" in parent:
        raise ConfigError(f"{base_path}: configs inherit one level at most")
    return {**parent, **values}
