"""Tiny random Stable-Diffusion components, built offline and written with diffusers' own `save_pretrained`, so tests
and `digseg quickstart` run the loaders a real SD folder goes through. Images 64x64 -> latents [B, 4, 16, 16]."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

# Words given whole-word tokens in the tiny tokenizer (anything else falls back to characters).
_TINY_WORDS = ("a an the of in on with photo picture image this that and or background circle square triangle object "
               "shape thing red green blue yellow magenta cyan white orange black road car person sky building tree "
               "grass cup disc nucleus nuclei crop weed soil").split()

TINY_FAMILIES = ("sd1", "sd2", "sd2-v")  # save_tiny_backbone's; SDXL: save_tiny_sdxl_backbone
VARIANT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}  # the dtype each weight variant is written in


def tiny_tokenizer(max_length: int = 32) -> CLIPTokenizer:
    """A CLIP tokenizer over the byte alphabet plus whole-word merges for `_TINY_WORDS`."""
    # GPT-2/CLIP's byte-level BPE alphabet: the printable bytes as themselves, then the others from chr(256) on
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = [chr(c) for c in printable] + [chr(256 + n) for n in range(256 - len(printable))]
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars])}
    merges: list[tuple[str, str]] = []
    for word in _TINY_WORDS:
        current, *rest = list(word[:-1]) + [word[-1] + "</w>"]
        for symbol in rest:
            merged = current + symbol
            if merged not in vocab:
                merges.append((current, symbol))
                vocab[merged] = len(vocab)
            current = merged
    end = "<|endoftext|>"
    vocab.update({"<|startoftext|>": len(vocab), end: len(vocab) + 1})
    return CLIPTokenizer(vocab=vocab, merges=merges, unk_token=end, bos_token="<|startoftext|>", eos_token=end,
                         pad_token=end, model_max_length=max_length)


def tiny_text_encoder(tokenizer: CLIPTokenizer, hidden_size: int = 32, seed: int = 0, hidden_act: str = "quick_gelu",
                      with_projection: bool = False) -> CLIPTextModel:
    """A 2-layer CLIP text encoder; `with_projection`: SDXL's second encoder (`CLIPTextModelWithProjection`)."""
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length, hidden_act=hidden_act,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        projection_dim=hidden_size)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval()


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    """VAE with downsampling factor 4 (three blocks), 4 latent channels."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 32), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, mid_block_add_attention=False, sample_size=64, scaling_factor=1.0)


def tiny_unet(seed: int = 0, family: str = "sd1") -> UNet2DConditionModel:
    """A 4-channel (pretrained-style, not yet widened) two-level conditional U-Net for 32-wide text, cross-attention
    at the first level (the second's is the mid block's). SD 2 layouts: linear projections, head widths per level."""
    torch.manual_seed(seed)
    sd2 = family.startswith("sd2")
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, norm_num_groups=16,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64), cross_attention_dim=32, attention_head_dim=(4, 8) if sd2 else 8,
        use_linear_projection=sd2)


def tiny_scheduler(prediction_type: str = "epsilon") -> DDIMScheduler:
    """Stable Diffusion's training schedule (scaled-linear betas, 1000 steps)."""
    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)


def save_variants(pipe, path: str | Path, variants: Sequence[str | None] = (None,)) -> Path:
    """`pipe.save_pretrained(path)` per variant: None float32, else *.<variant>.safetensors in `VARIANT_DTYPES`."""
    path = Path(path)
    for variant in variants:
        if variant is None:
            pipe.save_pretrained(path)
        else:  # a copy: the caller's modules keep their float32 weights
            copy.deepcopy(pipe).to(VARIANT_DTYPES[variant]).save_pretrained(path, variant=variant)
    return path


def save_tiny_backbone(path: str | Path, seed: int = 0, vae: AutoencoderKL | None = None, family: str = "sd1",
                       variants: Sequence[str | None] = (None,)) -> Path:
    """Write a tiny random SD folder (`family` in `TINY_FAMILIES`, `variants` as `save_variants`, `vae` its own VAE)."""
    if family not in TINY_FAMILIES:
        raise ValueError(f"family must be one of {', '.join(TINY_FAMILIES)}, got {family!r}")
    tokenizer = tiny_tokenizer()
    sd2 = family.startswith("sd2")
    text_encoder = tiny_text_encoder(tokenizer, seed=seed, hidden_act="gelu" if sd2 else "quick_gelu")
    pipe = StableDiffusionPipeline(
        vae=vae if vae is not None else tiny_vae(seed), text_encoder=text_encoder, tokenizer=tokenizer,
        unet=tiny_unet(seed, family),
        scheduler=tiny_scheduler("v_prediction" if family == "sd2-v" else "epsilon"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return save_variants(pipe, path, variants)


def save_tiny_sdxl_backbone(path: str | Path, seed: int = 0, variants: Sequence[str | None] = (None,)) -> Path:
    """Write a tiny random SDXL folder: text encoders of width 32 (the second with a 32-wide projection)."""
    tokenizer = tiny_tokenizer()
    text_encoder = tiny_text_encoder(tokenizer, seed=seed)
    text_encoder_2 = tiny_text_encoder(tokenizer, seed=seed + 1, hidden_act="gelu", with_projection=True)
    scheduler = EulerDiscreteScheduler.from_config(tiny_scheduler().config, timestep_spacing="leading")
    # SDXL's U-Net layout: no cross-attention at the first level, two transformer layers at the second, linear
    # projections, and the added embedding of 6 size ids (8 sinusoids each) and the pooled text embedding
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, norm_num_groups=16,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64), transformer_layers_per_block=(1, 2), attention_head_dim=(4, 8),
        use_linear_projection=True, cross_attention_dim=64, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + text_encoder_2.config.projection_dim)
    pipe = StableDiffusionXLPipeline(vae=tiny_vae(seed), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    return save_variants(pipe, path, variants)
