"""The one-step objective (`model.objective: one-step`; docs/training.md): one deterministic U-Net pass decoded by
the frozen mask decoder, read as class scores as inference reads them, trained with cross-entropy on the labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..pipelines.masks import MaskCodec
from ..pipelines.pipeline import DiGSegPipeline
from .batches import Batch


def one_step_loss(pipe: DiGSegPipeline, unet: nn.Module, pathway: nn.Module, batch: Batch, palette_codec: MaskCodec,
                  binary_codec: MaskCodec, mask_decoder: str) -> torch.Tensor:
    """Cross-entropy of the decoded one-step prediction against `batch.targets` (ignore masked out), averaged per
    sample, then over samples. `mask_decoder`: "light" or "vae"."""
    if batch.targets is None or batch.palette is None:
        raise ValueError("the one-step loss needs label targets: build the LatentBatcher with label_targets=True")
    device = batch.image_latents.device
    text = pathway(pipe.prompt_states(batch.prompts).to(device))  # num_levels x [B, L, C]
    z0 = pipe.one_step_latents(unet, batch.image_latents, text)  # [B, 4, h, w]
    images = pipe.decode_masks(z0, mask_decoder)  # [B, 3, H', W'], float32, differentiable
    targets = batch.targets  # [B, H, W]
    if tuple(images.shape[-2:]) != tuple(targets.shape[-2:]):  # a crop that is not a multiple of the VAE's factor
        images = F.interpolate(images, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    is_palette = torch.tensor(batch.palette, device=device)  # [B] bool
    per_sample = images.new_zeros(len(batch.palette))  # [B]
    with torch.autocast(device.type, enabled=False):  # palette logits of many classes need float32
        for codec, rows in ((palette_codec, is_palette), (binary_codec, ~is_palette)):
            if not bool(rows.any()):
                continue
            logits = codec.logits(images[rows].float())  # [n, K, H, W]
            target = targets[rows]  # [n, H, W]
            pixel = F.cross_entropy(logits, target, ignore_index=codec.ignore_index, reduction="none")  # [n, H, W]
            counted = (target != codec.ignore_index).flatten(1).sum(1).clamp(min=1)  # [n]
            per_sample = per_sample.index_put((rows.nonzero()[:, 0],), pixel.flatten(1).sum(1) / counted)
    return per_sample.mean()
