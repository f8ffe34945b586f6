"""Text pathway: a frozen CLIP-aligned text encoder and learned per-level projections into the U-Net. Level l of
the U-Net has its own projection P_l: encoder features [B, L, D] -> [B, L, C] (C = cross_attention_dim), which every
cross-attention layer at that level attends to. The projections live in `TextPathway`, so the U-Net stays a stock
`UNet2DConditionModel`; attention processors route each level's features to its layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from diffusers import ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

from ..errors import DigsegError
from .backbone_layout import SDXL_TIME_IDS


class CachedPromptEncoder:
    """A frozen text encoder with a per-prompt cache: `encode(prompts)` -> float [N, L, D], each distinct prompt
    encoded once. Subclasses implement `_encode_new(prompts) -> [M, L, D]`."""

    def __init__(self) -> None:
        self._cache: dict[str, torch.Tensor] = {}

    def clear_cache(self) -> None:
        self._cache.clear()

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        for prompt in prompts:
            if not isinstance(prompt, str) or not prompt.strip():
                raise DigsegError(f"empty prompt {prompt!r}: give a class name or a phrase")
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            self._cache.update(zip(missing, self._encode_new(missing)))  # [M, L, D]
        return torch.stack([self._cache[p] for p in prompts])  # [N, L, D]


class CLIPPromptEncoder(CachedPromptEncoder):
    """transformers CLIP text encoder + tokenizer (last hidden state, as Stable Diffusion conditions on it)."""

    def __init__(self, text_encoder: nn.Module, tokenizer) -> None:
        super().__init__()
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.tokenizer = tokenizer

    def _encode_new(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.text_encoder.device)
        return self.text_encoder(ids)[0]  # [M, L, D]


class SDXLPromptEncoder(CLIPPromptEncoder):
    """SDXL's two frozen CLIP text encoders: `encode(prompts)` -> [N, L, D1 + D2 + P]: both penultimate hidden
    states (as SDXL's `encode_prompt`), then the second encoder's pooled `text_embeds` [N, P] on every token (one
    tensor for the prompt cache and template averaging; `TextPathway` splits it off)."""

    def __init__(self, text_encoder: nn.Module, tokenizer, text_encoder_2: nn.Module, tokenizer_2) -> None:
        super().__init__(text_encoder, tokenizer)
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2.requires_grad_(False).eval(), tokenizer_2

    def _encode_new(self, prompts: list[str]) -> torch.Tensor:
        ids = [tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids.to(encoder.device)
               for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2))]
        if ids[0].shape[1] != ids[1].shape[1]:
            raise DigsegError(f"SDXL's tokenizers pad to different lengths ({ids[0].shape[1]} and "
                              f"{ids[1].shape[1]}): their model_max_length must match")
        return self.states(*ids)

    def states(self, ids: torch.Tensor, ids_2: torch.Tensor) -> torch.Tensor:
        """Each tokenizer's ids [M, L] -> [M, L, D1 + D2 + P] (the exported text graph runs this too)."""
        first = self.text_encoder(ids, output_hidden_states=True)
        second = self.text_encoder_2(ids_2, output_hidden_states=True)
        tokens = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)  # [M, L, D1 + D2]
        pooled = second[0]  # CLIPTextModelWithProjection's text_embeds [M, P]
        return torch.cat([tokens, pooled[:, None].expand(-1, tokens.shape[1], -1).to(tokens.dtype)], dim=-1)


class TextPathway(ModelMixin, ConfigMixin):
    """One learned linear projection per U-Net level with cross-attention (`levels`; None: all). forward(states
    [B, L, D + P] or [B, D + P]) -> num_levels x [B, L, C] (or [B, C]), then, when `pooled_dim` P > 0, the pooled
    embedding [B, P] (the last P features of the first token)."""

    @register_to_config
    def __init__(self, encoder_dim: int, cross_attention_dim: int, num_levels: int, pooled_dim: int = 0,
                 levels: list[int] | None = None) -> None:
        super().__init__()
        levels = list(range(num_levels)) if levels is None else sorted(levels)
        if not levels or not all(0 <= level < num_levels for level in levels):
            raise ValueError(f"levels must be a non-empty subset of 0..{num_levels - 1}, got {levels}")
        # keys "0", "1", ...: the state-dict names of a ModuleList, as saved models have them
        self.projections = nn.ModuleDict({str(level): nn.Linear(encoder_dim, cross_attention_dim) for level in levels})
        for proj in self.projections.values():  # identity (rectangular when D != C): step 0 = the pretrained U-Net
            nn.init.eye_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, states: torch.Tensor) -> list[torch.Tensor]:
        tokens = states[..., : self.config.encoder_dim]  # [B, L, D]
        projected = {int(level): proj(tokens) for level, proj in self.projections.items()}  # [B, L, C] each
        first = projected[min(projected)]
        out = [projected.get(level, first) for level in range(self.config.num_levels)]
        if self.config.pooled_dim:
            pooled = states[..., self.config.encoder_dim:]  # [B, L, P] (the same on every token) or [B, P]
            out.append(pooled[:, 0] if pooled.dim() == 3 else pooled)
        return out


def cross_attention_levels(unet: UNet2DConditionModel) -> list[int]:
    """The resolution levels whose blocks have cross-attention layers."""
    num_levels = len(unet.config.block_out_channels)
    return sorted({level for name in unet.attn_processors if (level := unet_level_of(name, num_levels)) is not None})


def unet_level_of(processor_name: str, num_levels: int) -> int | None:
    """Resolution level of an attention processor (down_blocks.i -> i; mid_block -> num_levels - 1;
    up_blocks.j -> num_levels - 1 - j), or None for self-attention."""
    if ".attn2." not in processor_name:
        return None
    parts = processor_name.split(".")
    if parts[0] == "down_blocks":
        return int(parts[1])
    if parts[0] == "up_blocks":
        return num_levels - 1 - int(parts[1])
    return num_levels - 1  # mid_block


@dataclass
class _LevelContext:
    """Per-call holder of the projected text features, shared by the processors of one U-Net."""

    num_levels: int
    needs_size_ids: bool  # SDXL: the U-Net also takes text_embeds and time_ids
    levels: list[torch.Tensor] | None = None
    record: list[torch.Tensor] | None = None  # a list: each layer appends its attention, head mean, position max [B, K]


class LevelCrossAttnProcessor:
    """Cross-attention that attends to its level's projected text instead of the U-Net's shared input."""

    def __init__(self, level: int, context: _LevelContext) -> None:
        self.level, self.context, self.base = level, context, AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        if self.context.levels is not None:
            encoder_hidden_states = self.context.levels[self.level]
        if self.context.record is not None:
            query = attn.head_to_batch_dim(attn.to_q(hidden_states))
            key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
            probs = attn.get_attention_scores(query, key, None)  # [B*heads, HW, K]
            b = hidden_states.shape[0]
            self.context.record.append(probs.view(b, attn.heads, -1, probs.shape[-1]).mean(1).amax(1))  # [B, K]
        return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


def install_level_processors(unet: UNet2DConditionModel) -> _LevelContext:
    """Give every cross-attention layer a level-routing processor; returns the shared context."""
    num_levels = len(unet.config.block_out_channels)
    context = _LevelContext(num_levels, unet.config.addition_embed_type == "text_time")
    unet.set_attn_processor({name: processor if (level := unet_level_of(name, num_levels)) is None
                             else LevelCrossAttnProcessor(level, context)
                             for name, processor in unet.attn_processors.items()})
    return context


def unet_forward_with_text(unet: UNet2DConditionModel, context: _LevelContext, sample: torch.Tensor,
                           timestep: torch.Tensor, text_levels: list[torch.Tensor],
                           image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """sample [B, 8, h, w], timestep [B] or scalar, text_levels num_levels x [B, L, C] (then SDXL's pooled [B, P])
    -> prediction [B, 4, h, w]. `image_size`: (H, W) of the processed image, for SDXL's size ids."""
    added = None
    if context.needs_size_ids:
        pooled = text_levels[context.num_levels]  # [B, P]
        # the processed image's (H, W) as original and target size, crop top-left (0, 0): [B, 6]
        time_ids = torch.tensor([*image_size, 0, 0, *image_size], device=pooled.device, dtype=torch.float32)
        added = {"text_embeds": pooled, "time_ids": time_ids.expand(pooled.shape[0], SDXL_TIME_IDS)}
    context.levels = text_levels[: context.num_levels]
    try:
        return unet(sample, timestep, encoder_hidden_states=text_levels[0], added_cond_kwargs=added,
                    return_dict=False)[0]
    finally:
        context.levels = None
