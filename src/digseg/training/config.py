"""Training configuration: four sections (model: `run.build_pipeline`, data: `run.build_training_data`, optim and
run: `Trainer`) in YAML, which may name a parent (`base: other.yaml`, any depth, the child's keys winning), and
`--cfg-options` (`parse_overrides`)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data.check import BAD_SAMPLES
from ..data.hf_options import hf_options
from ..data.splits import split_options
from ..errors import ConfigError
from ..models.choices import MASK_DECODERS, OBJECTIVES, PREDICTION_TYPES  # (re-read by the CLI)

TASKS = ("binary", "palette", "both")
MASK_DECODER_TARGETS = ("mask", "vae")  # what `digseg train-mask-decoder --target` learns (training/mask_decoder.py)
MASK_DECODER_STEPS = 500  # enough to read masks back as well as the VAE (docs/mask_decoder.md)

CHOICES = {  # "section.field": its allowed values
    "model.prediction_type": PREDICTION_TYPES, "model.objective": OBJECTIVES, "model.one_step_decoder": MASK_DECODERS,
    "data.bad_samples": BAD_SAMPLES, "data.task": TASKS, "optim.optimizer": ("adamw", "adamw8bit"),
    "optim.ema_device": ("accelerator", "cpu"), "optim.finetune": ("full", "lora"), "run.sharding": ("none", "fsdp"),
    "optim.mixed_precision": ("", "no", "fp16", "bf16"),  # "": the launcher's
}
AT_LEAST = {  # "section.field": its lowest value
    **dict.fromkeys(("data.num_workers", "data.cache_max_mib", "optim.weight_decay", "optim.max_grad_norm",
                     "run.sample_every", "run.eval_every", "run.seed"), 0),
    **dict.fromkeys(("data.prefetch_factor", "optim.max_steps", "optim.batch_size", "optim.gradient_accumulation_steps",
                     "optim.max_consecutive_skips", "optim.lora_rank", "run.checkpoint_every", "run.keep_checkpoints",
                     "run.log_every", "run.num_sample_images", "run.eval_samples"), 1),
}
FRACTIONS = ("data.negative_prob", "optim.max_timestep_prob")  # in [0, 1]


def _check_field(name: str, value: Any) -> None:
    """A one-line ConfigError naming `name` ("section.field") when `value` is outside what the tables above allow."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}")
    if name in CHOICES and value not in CHOICES[name]:
        raise ConfigError(f"{name} must be one of {', '.join(filter(None, CHOICES[name]))}, got {value!r}")
    if name in AT_LEAST and value < AT_LEAST[name]:
        raise ConfigError(f"{name} must be >= {AT_LEAST[name]}, got {value}")
    if name in FRACTIONS and not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be in [0, 1], got {value}")


@dataclass
class ModelConfig:
    pretrained: str = ""  # SD 1.x / 2.x / XL folder or hub id, or a DiGSeg model folder to continue training
    # the backbone's weight files (variant "fp16": *.fp16.safetensors, loaded in float32) and hub revision
    variant: str | None = None
    revision: str | None = None
    prediction_type: str = "sample"  # sample (x0) | v_prediction | epsilon; x0 trains best in few steps
    text_encoder: str = ""  # "" = the backbone's own; else a CLIP text encoder folder or hub id, or open_clip:<name>
    text_encoder_variant: str | None = None  # as variant and revision, for that text encoder
    text_encoder_revision: str | None = None
    prompt_template: str = ""  # "" = the dataset's default (e.g. "a photo of a {}."); must contain "{}"
    # diffusion: MSE on the scheduler's target at random timesteps (the paper); one-step: one deterministic pass
    # trained with cross-entropy on the labels (one_step.py)
    objective: str = "diffusion"
    one_step_decoder: str = "auto"  # one-step: the mask decoder trained through (light | vae | auto)


@dataclass
class DataConfig:
    # a name in the dataset registry (digseg.data.registry.dataset_names()) or "hf:<name or path>" (digseg.data.hf)
    dataset: str = "synthetic"
    data_root: str | None = None
    num_scenes: int = 2000  # synthetic only
    # folder only (digseg.data.splits): the share held out for val (None: 0.1), a file of the training images' stems
    val_fraction: float | None = None
    split_file: str | None = None
    # hf: datasets only: {option: value} over digseg.data.hf_options.HFOptions (docs/data.md)
    hf: dict[str, Any] = field(default_factory=dict)
    # training crop, height x width (an int: square). None = the dataset preset's crop (docs/augmentation.md)
    crop_size: int | list[int] | None = None
    # overrides of the dataset's augmentation preset (keys of digseg.data.augment.Augmentation); false: off
    augmentation: dict[str, Any] | bool = True
    task: str = "both"  # binary (prompt -> mask) | palette (closed-set classes) | both (alternating at random)
    negative_prob: float = 0.1  # binary: chance of querying a class absent from the image (target: empty mask)
    class_names: list[str] = field(default_factory=list)  # renames the dataset's classes (same count); [] = its own
    num_workers: int = 0  # DataLoader worker processes reading, decoding and augmenting samples
    prefetch_factor: int = 2  # micro-batches each worker prepares ahead (with num_workers > 0)
    cache_latents: bool = False  # keep the frozen VAE's latents in memory (only without augmentation)
    cache_max_mib: int = 2048  # memory cap of that cache; latents past it are encoded again at each use
    latent_cache: str = ""  # a folder written by `digseg cache-latents` (only without augmentation)
    # every sample is read once before step 1 (digseg.data.check); error: refuse bad samples; skip: train without them
    bad_samples: str = "error"

    @property
    def augments(self) -> bool:
        """True unless augmentation is turned off (`false` or `{enabled: false}`)."""
        if isinstance(self.augmentation, dict):
            return bool(self.augmentation.get("enabled", True))
        return bool(self.augmentation)


@dataclass
class OptimConfig:
    max_steps: int = 1000
    batch_size: int = 4  # per process, per micro-step
    gradient_accumulation_steps: int = 1
    learning_rate: float = 3e-5  # fine-tuning a pretrained U-Net; a tiny model from scratch wants ~5e-4
    lr_scheduler: str = "cosine"  # any name diffusers.optimization.get_scheduler accepts
    lr_warmup_steps: int = 50
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    optimizer: str = "adamw"  # adamw8bit: torchao's, moments in 8 bits (pip install -e ".[lowmem]")
    mixed_precision: str = ""  # no | fp16 | bf16 | "": the launcher's, else the machine's best (--dtype auto)
    gradient_checkpointing: bool = False  # recompute U-Net activations in backward: less memory, ~30% slower
    use_ema: bool = False
    ema_decay: float = 0.999
    # cpu: the EMA copy waits in host memory between updates (diffusers' --offload_ema): lower peak memory
    ema_device: str = "accelerator"
    # share of training samples at the last timestep (T-1), where few-step trailing inference starts; the rest
    # are uniform over [0, T). Uniform alone spends most updates on nearly noise-free, easy inputs.
    max_timestep_prob: float = 0.5
    # steps with non-finite gradients are skipped; this many in a row stop the run (divergence.py)
    max_consecutive_skips: int = 20
    # full | lora: the U-Net frozen but for conv_in and LoRA matrices (scale lora_alpha / lora_rank; alpha None = the
    # rank) on the modules lora_targets names; the run saves an adapter folder (docs/adapters.md)
    finetune: str = "full"
    lora_rank: int = 16
    lora_alpha: float | None = None
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])

    def __post_init__(self) -> None:
        if self.mixed_precision is None or self.mixed_precision is False:  # YAML reads an unquoted `no` as false
            self.mixed_precision = "" if self.mixed_precision is None else "no"


@dataclass
class RunConfig:
    output_dir: str = "runs/digseg"
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 25
    # experiment trackers, comma-separated, all or none (tracking.py); log.jsonl is always written
    log_with: str | list[str] = "tensorboard"
    sample_every: int = 250  # predictions on a fixed batch of validation images into the trackers; 0 = never
    num_sample_images: int = 4
    # score the first `eval_samples` validation images every `eval_every` steps (0 = never), best kept (validation.py)
    eval_every: int = 0
    eval_samples: int = 50
    # none: whole weights on every process (DDP); fsdp: each of N processes holds 1/N of them (sharding.py)
    sharding: str = "none"
    # after training, upload the model to this Hub repository (user/name; hub.py), private when hub_private
    push_to_hub: str = ""
    hub_private: bool | None = None


SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "run": RunConfig}
CHANGES_KEY = "config_changes"  # config.yaml's history of changes made on resume (resume_check.py), skipped on load


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> "TrainConfig":
        from .tracking import tracker_names

        for name in SECTIONS:
            for key, value in vars(getattr(self, name)).items():
                _check_field(f"{name}.{key}", value)
        model, data, optim = self.model, self.data, self.optim
        if model.prompt_template and "{}" not in model.prompt_template:
            raise ConfigError(f"model.prompt_template must contain '{{}}', got {model.prompt_template!r}")
        split_options(data.dataset, data.val_fraction, data.split_file)
        hf_options(data.dataset, data.hf)
        if not isinstance(data.augmentation, (bool, dict)):
            raise ConfigError(f"data.augmentation must be true, false or a mapping of overrides, got "
                              f"{data.augmentation!r}")
        if data.augments and (data.cache_latents or data.latent_cache):
            raise ConfigError("latent caches (data.cache_latents, data.latent_cache) need fixed samples: "
                              "turn augmentation off (data.augmentation: false) to use them")
        if not optim.learning_rate > 0:
            raise ConfigError(f"optim.learning_rate must be > 0, got {optim.learning_rate}")
        if optim.lora_alpha is not None and not optim.lora_alpha > 0:
            raise ConfigError(f"optim.lora_alpha must be > 0 (or null: the rank), got {optim.lora_alpha}")
        targets = optim.lora_targets
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t.strip() for t in targets):
            raise ConfigError(f"optim.lora_targets must list module names (e.g. [to_q, to_k, to_v, to_out.0]), "
                              f"got {targets!r}")
        if "conv_in" in targets:
            raise ConfigError("optim.lora_targets: conv_in trains in full beside the LoRA; leave it out")
        tracker_names(self.run.log_with)
        sharded, lora = self.run.sharding == "fsdp", optim.finetune == "lora"
        if sharded and lora:
            raise ConfigError("optim.finetune lora with run.sharding fsdp is not supported: LoRA's trainable "
                              "weights are small, use run.sharding none (DDP)")
        if sharded and optim.optimizer != "adamw":
            raise ConfigError(f"run.sharding fsdp checkpoints AdamW's moments as sharded tensors; optimizer "
                              f"{optim.optimizer} keeps them in another form: use optim.optimizer adamw")
        if sharded and self.run.eval_every:
            raise ConfigError("run.eval_every (--eval-every) runs the pipeline on whole weights, which run.sharding "
                              "fsdp splits over the processes: score the trained model with `digseg eval` instead")
        if lora and self.run.push_to_hub:
            raise ConfigError("run.push_to_hub uploads a model folder; a LoRA run saves an adapter folder "
                              "(<output_dir>/adapter): upload that one yourself")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path, changes: list[dict[str, Any]] | None = None) -> None:
        """The four sections as YAML; `changes`: the run's history of config changes on resume, after them."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if changes:
            text += ("# changes made on resume, each from its step on: {field: [old, new]}; trajectory: changed = "
                     "--allow-config-change,\n# the run no longer follows one config's trajectory (docs/training.md)\n")
            text += yaml.safe_dump({CHANGES_KEY: changes}, sort_keys=False, default_flow_style=None)
        Path(path).write_text(text)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """{"model": {...}, "data": {...}, "optim": {...}, "run": {...}} (each optional) -> a validated config."""
        unknown = sorted(set(values) - set(SECTIONS) - {CHANGES_KEY})
        if unknown:
            raise ConfigError(f"unknown config section(s): {', '.join(unknown)}; sections are {', '.join(SECTIONS)} "
                              "(e.g. `optim: {learning_rate: 1.0e-4}`)")
        parts = {}
        for name, section in SECTIONS.items():
            given = values.get(name) or {}
            if not isinstance(given, dict):
                raise ConfigError(f"config section {name} must be a mapping, got {given!r}")
            known = {f.name for f in dataclasses.fields(section)}
            bad = sorted(set(given) - known)
            if bad:
                raise ConfigError(f"unknown key(s) in section {name}: {', '.join(bad)}; known: "
                                  f"{', '.join(sorted(known))}")
            parts[name] = section(**given)
        return cls(**parts).validate()

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> "TrainConfig":
        """The YAML file (if any), then `overrides` ({section: {key: value}}, None skipped) on top."""
        values = read_yaml_with_base(Path(path)) if path else {}
        for section, keys in (overrides or {}).items():
            merged = values[section] = dict(values.get(section) or {})
            for key, value in keys.items():
                if isinstance(value, dict) and isinstance(merged.get(key), dict):
                    value = {**merged[key], **value}  # a mapping's keys: over the file's mapping
                if value is not None:
                    merged[key] = value
        return cls.from_dict(values)


def read_yaml_with_base(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The config file's sections merged over those of its `base` chain (any depth)."""
    path = path.resolve()
    if path in _seen:
        raise ConfigError(f"config {path} names itself as a base (through {' -> '.join(p.name for p in _seen)})")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (f" (the base named in {_seen[-1]})" if _seen else ""))
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse {path}: {exc}") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections")
    base = values.pop("base", None)
    if base is None:
        return values
    parent = read_yaml_with_base(path.parent / base, (*_seen, path))
    merged = dict(parent)
    for section, keys in values.items():  # section by section: the child's keys win
        both = isinstance(keys, dict) and isinstance(parent.get(section), dict)
        merged[section] = {**parent[section], **keys} if both else keys
    return merged


TYPES = {"bool": bool, "list": list, "tuple": list, "dict": dict}  # what YAML reads for each annotation


def _typed(item: str, annotation: str, text: str) -> Any:
    """`text` read as YAML, then as the `annotation`'s type (`1e-4`: a float for a float field, `2017`: a str)."""
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--cfg-options {item}: cannot read the value: {exc}") from exc
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    for kind in (part.strip().split("[")[0] for part in annotation.split("|")):  # "int | list[int]": int, list
        if kind in ("int", "float") and (isinstance(value, str) or number and (kind == "float" or type(value) is int)):
            with contextlib.suppress(ValueError):
                return int(value) if kind == "int" else float(value)
        elif kind == "str" and (isinstance(value, (str, bool)) or number):
            return value if isinstance(value, str) else text.strip()  # a name that looks like a number or a bool
        elif (kind == "None" and value is None) or isinstance(value, TYPES.get(kind, ())):
            return value
    raise ConfigError(f"--cfg-options {item}: {item.partition('=')[0].strip()} takes {annotation}, got {value!r}")


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """`--cfg-options` ["section.field=value", "section.mapping.key=value"] -> {section: {field: value}}."""
    from ..data.augment import Augmentation
    from ..data.hf_options import HFOptions

    def annotations(cls) -> dict[str, str]:
        return {f.name: str(f.type) for f in dataclasses.fields(cls)}

    mappings = {"hf": HFOptions, "augmentation": Augmentation}  # data.hf.label_column=mask sets one key
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, text = item.partition("=")
        section, _, name = key.strip().partition(".")
        name, _, sub = name.partition(".")
        if not eq or not name:
            raise ConfigError(f"--cfg-options takes section.field=value, got {item!r} (e.g. optim.lr_warmup_steps=0)")
        fields = annotations(SECTIONS[section]) if section in SECTIONS else {}
        if name not in fields:
            known = ", ".join(sorted(fields) if fields else SECTIONS)
            raise ConfigError(f"--cfg-options {item}: no field '{section}.{name}'; known: {known}")
        if not sub:
            out.setdefault(section, {})[name] = _typed(item, fields[name], text)
            continue
        keys = annotations(mappings[name]) if section == "data" and name in mappings else {}
        if sub not in keys:
            known = f"known: {', '.join(keys)}" if keys else f"{section}.{name} is no mapping"
            raise ConfigError(f"--cfg-options {item}: no field {key.strip()!r}; {known}")
        mapping = out.setdefault(section, {}).setdefault(name, {})
        if not isinstance(mapping, dict):
            raise ConfigError(f"--cfg-options {item}: {section}.{name} is also given whole")
        mapping[sub] = _typed(item, keys[sub], text)
    return out
