"""LoRA fine-tuning in the trainer (`optim.finetune: lora`): the U-Net frozen but for conv_in and LoRA matrices
(seeded by `run.seed`), the text pathway in full; checkpoints hold the U-Net's trainable tensors only, and the run
saves `adapter/` instead of a whole model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import DigsegError
from ..models.adapters import TRAINED_ADAPTER, AdapterParts, add_lora, has_lora, lora_state_dict, save_adapter
from .config import OptimConfig, TrainConfig

ADAPTER_FOLDER = "adapter"  # <output_dir>/adapter: what a LoRA run saves


def begin_lora(unet: nn.Module, optim: OptimConfig, seed: int) -> None:
    """LoRA adapter `TRAINED_ADAPTER` on `unet` (rank, alpha, targets from `optim`); only it and conv_in train."""
    if has_lora(unet):
        raise DigsegError("optim.finetune lora: this model has LoRA adapters loaded already; train from the base "
                          "model (model.pretrained) instead")
    unet.requires_grad_(False)
    add_lora(unet, optim.lora_rank, optim.lora_alpha, optim.lora_targets, TRAINED_ADAPTER, seed=seed)
    unet.conv_in.requires_grad_(True)


def load_unet_weights(unet: nn.Module, weights: dict[str, torch.Tensor], keys: list[str] | None) -> None:
    """A checkpoint's U-Net weights into `unet`: the whole state dict (`keys` None), or exactly a LoRA run's `keys`."""
    if keys is None:
        unet.load_state_dict(weights)
        return
    missing = sorted(set(keys) - set(weights))
    unexpected = sorted(set(weights) - set(keys))
    if missing or unexpected:
        raise RuntimeError(f"the LoRA run's U-Net tensors differ: "
                           f"{'missing ' + missing[0] if missing else 'unexpected ' + unexpected[0]} "
                           f"({len(missing)} missing, {len(unexpected)} unexpected)")
    unet.load_state_dict(weights, strict=False)


def save_run_adapter(folder: Path, pipe, config: TrainConfig) -> Path:
    """The trained adapter of `pipe` as an adapter folder naming `config.model`'s backbone as its base."""
    model, optim = config.model, config.optim
    facts = {"class_names": pipe.config.class_names, "task": pipe.config.task,
             "processing_resolution": pipe.config.default_processing_resolution,
             "prompt_template": pipe.config.prompt_template,
             "prediction_type": pipe.scheduler.config.prediction_type, "objective": pipe.config.objective,
             "one_step_decoder": pipe.config.one_step_decoder}
    parts = AdapterParts(pipe.unet.conv_in, pipe.text_pathway, pipe.mask_decoder, facts)
    base = {"pretrained": model.pretrained, "revision": model.revision, "variant": model.variant}
    return save_adapter(folder, lora_state_dict(pipe.unet, TRAINED_ADAPTER), parts, base, optim.lora_rank,
                        optim.lora_alpha, list(optim.lora_targets))
