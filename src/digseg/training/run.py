"""`build_run` builds a training run from a `TrainConfig`, for the CLI, `quickstart`, benchmarks and tests alike:

    trainer = build_run(TrainConfig.load("configs/ade20k_150.yaml"))
    pipe = trainer.train(resume="latest")
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..data.augment import Augmentation, augmentation_for
from ..data.check import DataCheck, check_dataset, keep_good
from ..data.hf_options import hf_options
from ..data.io import save_label_png, tensor_to_image
from ..data.model_data import record_training_data
from ..errors import ConfigError, DataError, DigsegError
from ..pipelines.pipeline import DiGSegPipeline
from ..pipelines.visualize import class_overlay
from .batches import LatentBatcher
from .config import DataConfig, ModelConfig, TrainConfig
from .samples import MicroStepSampler, TrainingData, TrainingSamples

if TYPE_CHECKING:
    from .trainer import Trainer


def require_backbone(model: ModelConfig) -> None:
    if not model.pretrained:
        raise ConfigError("no backbone: pass --pretrained (a Stable Diffusion folder or hub id, e.g. the backbone/ "
                          "folder `digseg quickstart` writes) or set model.pretrained in the config")


def build_pipeline(model: ModelConfig) -> DiGSegPipeline:
    """A fresh DiGSeg model on a Stable Diffusion backbone, or a DiGSeg model folder to continue training."""
    require_backbone(model)
    if (Path(model.pretrained) / "text_pathway").is_dir():  # continue training a DiGSeg model
        return DiGSegPipeline.from_pretrained(model.pretrained)
    return DiGSegPipeline.from_backbone(model.pretrained, prediction_type=model.prediction_type,
                                        text_encoder=model.text_encoder or None, variant=model.variant,
                                        revision=model.revision, text_encoder_variant=model.text_encoder_variant,
                                        text_encoder_revision=model.text_encoder_revision)


def training_augmentation(data: DataConfig) -> Augmentation:
    """The dataset's preset, at `data.crop_size`, with the config's overrides (or turned off)."""
    overrides = data.augmentation if isinstance(data.augmentation, dict) else {"enabled": bool(data.augmentation)}
    return augmentation_for(data.dataset, data.crop_size, overrides)


def build_dataset(data: DataConfig, seed: int, split: str = "train") -> Dataset:
    """The dataset a `data` section names, split "train" or "val"; synthetic scenes of the crop's size."""
    from ..data.registry import build_dataset as build

    crop = training_augmentation(data).crop_size
    return build(data.dataset, data.data_root, split=split, size=crop[0] if crop[0] == crop[1] else None,
                 num_scenes=data.num_scenes, seed=seed, val_fraction=data.val_fraction,
                 train_split_file=data.split_file, hf=hf_options(data.dataset, data.hf))


def class_names(data: DataConfig, dataset: Dataset) -> list[str]:
    """`data.class_names` when given (as many as the dataset has), else the dataset's."""
    names = list(data.class_names) or list(dataset.class_names)
    if len(names) != len(dataset.class_names):
        raise ConfigError(f"data.class_names lists {len(names)} names but dataset {data.dataset} has "
                          f"{len(dataset.class_names)} classes")
    return names


def checked_dataset(data: DataConfig, dataset: Dataset, run_dir: str | Path | None, split: str = "train",
                    show_progress: bool = True) -> tuple[Dataset, DataCheck | None]:
    """The class list checked, then every sample read once (`digseg.data.check`, kept in `run_dir` for a resume)
    -> (the dataset `data.bad_samples` leaves, the check)."""
    class_names(data, dataset)
    cache = Path(run_dir) / ("data-check.json" if split == "train" else f"data-check-{split}.json") if run_dir else None
    check = check_dataset(dataset, cache, data.num_workers, show_progress, desc=f"check {split} data")
    return keep_good(dataset, check, data.bad_samples, f"{split} split"), check


def build_training_data(data: DataConfig, pipe: DiGSegPipeline, dataset: Dataset, seed: int,
                        check: DataCheck | None = None) -> TrainingData:
    """The batcher and samples of `dataset`; the pipeline gets the classes and what it is trained on."""
    names = class_names(data, dataset)
    pipe.set_class_names(names)
    augmentation = training_augmentation(data)
    # what the saved model was trained on, which `digseg eval` and train-mask-decoder default to
    pipe.register_to_config(task=data.task, default_processing_resolution=max(augmentation.crop_size),
                            training_data=record_training_data(data, dataset))
    ignore_index = getattr(dataset, "ignore_index", 255)
    store = None
    if data.latent_cache:
        from .latent_cache import LatentCache

        h, w = augmentation.crop_size
        if h != w:
            raise ConfigError(f"latent caches hold square samples; data.crop_size is {h}x{w}")
        store = LatentCache(data.latent_cache, names, pipe.vae, h)
    label_targets = pipe.config.objective == "one-step"  # the task loss needs every sample's labels
    batcher = LatentBatcher(dataset, names, pipe.vae, data.task, pipe.config.prompt_template, data.negative_prob,
                            data.cache_latents, ignore_index, store=store, fixed_samples=not augmentation.enabled,
                            cache_max_mib=data.cache_max_mib, label_targets=label_targets)
    # fixed samples with a latent cache: the batcher reads a sample itself, only when its latents are not cached
    cached = not label_targets and (store is not None or (data.cache_latents and not augmentation.enabled))
    samples = TrainingSamples(dataset, augmentation, seed, ignore_index, read=not cached,
                              skip_bad=data.bad_samples == "skip")
    return TrainingData(samples, batcher, data.num_workers, data.prefetch_factor, check)


def validation_split(config: TrainConfig) -> Dataset | None:
    """The validation split, for validation and previews; None when none is needed or, for previews only, found."""
    from .tracking import tracker_names

    previews = config.run.sample_every and tracker_names(config.run.log_with)
    if not (previews or config.run.eval_every):
        return None
    try:
        return build_dataset(config.data, config.run.seed, split="val")
    except (DigsegError, OSError, ValueError) as exc:
        if config.run.eval_every:
            raise ConfigError(f"run.eval_every (--eval-every) scores the validation split, which cannot be read: "
                              f"{exc}") from exc
        print(f"sample previews use training images: no validation split ({exc})", file=sys.stderr)
        return None


def set_objective(pipe: DiGSegPipeline, model: ModelConfig) -> None:
    """The training objective (and for one-step the mask decoder it trains through) into the pipeline's config."""
    decoder = None
    if model.objective == "one-step":
        decoder = model.one_step_decoder
        if decoder == "auto":
            decoder = "light" if pipe.mask_decoder is not None else "vae"
        if decoder == "light" and pipe.mask_decoder is None:
            raise ConfigError("model.one_step_decoder is light but the model has no light mask decoder: train one "
                              "with `digseg train-mask-decoder`, or use vae")
    pipe.register_to_config(objective=model.objective, one_step_decoder=decoder)


def build_run(config: TrainConfig, pipe: DiGSegPipeline | None = None, dataset: Dataset | None = None,
              show_progress: bool = True, val_dataset: Dataset | None = None, resume: str | None = None,
              allow_config_change: bool = False) -> Trainer:
    """The `Trainer` of a run, its pipeline, data and validation split (when `dataset` is not given either) built
    from `config` unless given; the data and `resume` are checked before the model loads."""
    from ..distributed import is_main_process, process_info
    from .resume_check import launch_facts, plan_resume
    from .trainer import Trainer

    config.validate()  # an unknown tracker, too, fails before the model loads
    if pipe is None:
        require_backbone(config.model)  # before the data is read
    own_val = val_dataset is None and dataset is None
    dataset = dataset if dataset is not None else build_dataset(config.data, config.run.seed)  # its errors first
    if own_val:
        val_dataset = validation_split(config)
    show = show_progress and is_main_process()
    dataset, check = checked_dataset(config.data, dataset, config.run.output_dir, "train", show)
    if val_dataset is not None and config.run.eval_every:  # validation reads all of it (previews skip)
        val_dataset, _ = checked_dataset(config.data, val_dataset, config.run.output_dir, "val", show)
    plan = plan_resume(config, resume, allow_config_change, launch_facts(config.optim, process_info()[1]), check)
    pipe = pipe if pipe is not None else build_pipeline(config.model)
    template = config.model.prompt_template or getattr(dataset, "prompt_template", None) or pipe.config.prompt_template
    pipe.register_to_config(prompt_template=template)
    set_objective(pipe, config.model)
    data = build_training_data(config.data, pipe, dataset, config.run.seed, check)
    trainer = Trainer(config, pipe, data, show_progress=show_progress, val_dataset=val_dataset)
    trainer.resume_plan = plan
    return trainer


def write_training_samples(config: TrainConfig, output: str | Path, num: int) -> int:
    """`digseg browse-data` (docs/training.md): the first `num` training samples exactly as the trainer reads them
    (sample k: micro-step k // B, slot k % B of one process) into `output`; -> how many were written."""
    if num < 1:
        raise DataError(f"--num must be >= 1, got {num}")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    dataset, _ = checked_dataset(config.data, build_dataset(config.data, config.run.seed), None)  # as training
    names = class_names(config.data, dataset)
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
