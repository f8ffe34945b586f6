"""Building a DiGSeg model from a Stable-Diffusion-layout checkpoint: `load_backbone`, `widen_conv_in`,
`make_scheduler`, and the frozen VAE's `encode_latents` / `decode_latents`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ..errors import DigsegError, first_line
from ..hub_ids import check_hub_id, hub_id_or_none
from .choices import PREDICTION_TYPES
from .backbone_layout import (SDXL_TIME_IDS, SUBFOLDERS, WEIGHT_SUBFOLDERS, backbone_record, read_layout,
                              resolve_variant)


@torch.no_grad()
def widen_conv_in(unet: UNet2DConditionModel, in_channels: int = 8) -> UNet2DConditionModel:
    """Widen `unet.conv_in` to `in_channels` by repeating the pretrained kernel and dividing by the repeat count
    (image latent first): the widened U-Net fed [z, z] computes what the pretrained one computed on z."""
    old = unet.conv_in
    if old.in_channels == in_channels:
        return unet
    if in_channels % old.in_channels:
        raise ValueError(f"cannot widen conv_in from {old.in_channels} to {in_channels} channels")
    repeats = in_channels // old.in_channels
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    device=old.weight.device, dtype=old.weight.dtype)
    new.weight.copy_(old.weight.repeat(1, repeats, 1, 1) / repeats)  # [C_out, 8, 3, 3]
    new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


def vae_scale_factor(model: AutoencoderKL | UNet2DConditionModel) -> int:
    """A VAE's latent downsampling factor (or a U-Net's, between its first and last level)."""
    return 2 ** (len(model.config.block_out_channels) - 1)


def encode_latents(vae: AutoencoderKL, images: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """images [B, 3, H, W] in [-1, 1] -> latents [B, C, H/f, W/f] (posterior mean, scaled). `channels_last` halves
    the VAE's bf16 time on CPU; the trainer passes False, where a latent does not depend on its batch (resumes)."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    mean = vae.encode(images.to(vae.dtype, memory_format=layout)).latent_dist.mean
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (mean - shift) * vae.config.scaling_factor


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """latents [B, C, h, w] -> images [B, 3, h*f, w*f], roughly in [-1, 1] (channels-last, as encode_latents)."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    latents = latents.to(vae.dtype, memory_format=torch.channels_last)
    return vae.decode(latents / vae.config.scaling_factor + shift).sample


@dataclass
class Backbone:
    """The parts of a Stable Diffusion checkpoint that DiGSeg uses (SDXL: also its second text encoder)."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: CLIPTokenizer | None = None
    record: dict | None = None  # `backbone_layout.backbone_record`: id, revision, variant


def load_backbone(path_or_id: str | os.PathLike, torch_dtype: torch.dtype | None = None, variant: str | None = None,
                  revision: str | None = None) -> Backbone:
    """The SD / SDXL components of a local folder or a hub id (safetensors) at `revision` and `variant` (None: the
    plain files, or a local folder's only variant), in `torch_dtype` (None: float32, what training keeps)."""
    path = Path(path_or_id).expanduser()
    if hub_id_or_none(str(path_or_id)) is None:  # a local folder
        path_or_id, family = str(path), read_layout(str(path), local=True)
        variant = resolve_variant(path, [n for n in WEIGHT_SUBFOLDERS if n in SUBFOLDERS[family]], variant)
    else:  # cached, or the Hub reachable and holding it: else one line now, not a minute of retries
        check_hub_id(str(path_or_id), "Stable Diffusion backbone", "unet/config.json",
                     "a local Stable Diffusion folder", revision=revision)
        family = read_layout(str(path_or_id), local=False, revision=revision)
    dtype = torch_dtype or torch.float32
    common = {"revision": revision, "variant": variant, "use_safetensors": True}
    try:
        unet = UNet2DConditionModel.from_pretrained(path_or_id, subfolder="unet", dtype=dtype, **common)
        vae = AutoencoderKL.from_pretrained(path_or_id, subfolder="vae", dtype=dtype, **common)
        text_encoder = CLIPTextModel.from_pretrained(path_or_id, subfolder="text_encoder", torch_dtype=dtype, **common)
        tokenizer = CLIPTokenizer.from_pretrained(path_or_id, subfolder="tokenizer", revision=revision)
        scheduler = DDIMScheduler.from_pretrained(path_or_id, subfolder="scheduler", revision=revision)
        text_encoder_2 = tokenizer_2 = None
        if family == "sdxl":
            text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
                path_or_id, subfolder="text_encoder_2", torch_dtype=dtype, **common)
            tokenizer_2 = CLIPTokenizer.from_pretrained(path_or_id, subfolder="tokenizer_2", revision=revision)
    except (OSError, ValueError) as exc:  # hub id unreachable / not found, or a broken file
        hint = (" (a download of one weight variant only? pass it, e.g. --cfg-options model.variant=fp16)"
                if "no file named" in str(exc) and variant is None else "")
        raise DigsegError(f"cannot load Stable Diffusion backbone {path_or_id!s}: {first_line(exc)}{hint}") from exc
    if text_encoder_2 is not None:  # SDXL's U-Net must take exactly 6 size ids and the pooled embedding (no refiner)
        pooled, time_dim = int(text_encoder_2.config.projection_dim), unet.config.addition_time_embed_dim
        expected, given = unet.add_embedding.linear_1.in_features, time_dim * SDXL_TIME_IDS + pooled
        if expected != given:
            raise DigsegError(f"{path_or_id}: the U-Net's added embedding takes {expected} features, but SDXL's 6 "
                              f"size ids x {time_dim} + text_encoder_2's pooled {pooled} give {given} (an SDXL "
                              "refiner or another variant, which digseg does not support)")
    return Backbone(unet, vae, text_encoder, tokenizer, scheduler, text_encoder_2, tokenizer_2,
                    record=backbone_record(str(path_or_id), revision, variant))


def check_clip_text_encoder(path_or_id: str | os.PathLike, revision: str | None = None) -> Path | None:
    """The local folder a CLIP text encoder is read from, or None for a hub id that can be had (no weights read)."""
    path = Path(path_or_id).expanduser()
    if hub_id_or_none(str(path_or_id)) is None:  # a local folder
        if not path.is_dir():
            raise DigsegError(f"text encoder folder not found: {path}")
        return path
    check_hub_id(str(path_or_id), "CLIP text encoder", "config.json",
                 "a local CLIP text encoder folder (or a Stable Diffusion folder: its text_encoder/)",
                 revision=revision)
    return None


def load_clip_text_encoder(path_or_id: str | os.PathLike, torch_dtype: torch.dtype | None = None,
                           variant: str | None = None,
                           revision: str | None = None) -> tuple[CLIPTextModel, CLIPTokenizer]:
    """A frozen CLIP text encoder + tokenizer from a CLIP folder / hub id (e.g. openai/clip-vit-large-patch14) or
    a Stable Diffusion folder's text_encoder/ + tokenizer/, in `torch_dtype` (None: float32)."""
    path = check_clip_text_encoder(path_or_id, revision)
    source, encoder_folder, tokenizer_folder = str(path or path_or_id), {}, {}  # the local folder, or the hub id
    if path is not None:
        if (path / "text_encoder").is_dir() and (path / "tokenizer").is_dir():  # a Stable Diffusion folder
            encoder_folder, tokenizer_folder = {"subfolder": "text_encoder"}, {"subfolder": "tokenizer"}
        variant = resolve_variant(path, [encoder_folder.get("subfolder", ".")], variant)
    try:
        encoder = CLIPTextModel.from_pretrained(source, **encoder_folder, torch_dtype=torch_dtype or torch.float32,
                                                variant=variant, revision=revision, use_safetensors=True)
        tokenizer = CLIPTokenizer.from_pretrained(source, **tokenizer_folder, revision=revision)
    except (OSError, ValueError) as exc:
        raise DigsegError(f"cannot load CLIP text encoder {path_or_id!s}: {first_line(exc)}") from exc
    return encoder.requires_grad_(False).eval(), tokenizer


def make_scheduler(base: DDIMScheduler, prediction_type: str) -> DDIMScheduler:
    """DDIM with the backbone's noise schedule, trailing timestep spacing and the chosen prediction target; for x0
    and v prediction the betas are rescaled to zero terminal SNR (SD's keeps ~0.07 of the signal at t = T-1, a leak
    that inference, from pure noise, never sees; epsilon prediction is undefined at zero SNR)."""
    if prediction_type not in PREDICTION_TYPES:
        raise DigsegError(f"unknown prediction type {prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}")
    return DDIMScheduler.from_config(base.config, prediction_type=prediction_type, timestep_spacing="trailing",
                                     clip_sample=False, set_alpha_to_one=True, steps_offset=0,
                                     rescale_betas_zero_snr=prediction_type != "epsilon")
