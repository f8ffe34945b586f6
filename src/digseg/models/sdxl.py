"""Stable Diffusion XL's conditioning, for DiGSeg: two text encoders and the size ids of the added embedding.

The U-Net takes token features [B, L, D1 + D2], `text_embeds` (the second encoder's pooled projection [B, P]) and
`time_ids` [B, 6]. Here the pooled embedding rides along as the last P features of every token (one tensor for the
prompt cache and template averaging) and `TextPathway` splits it off."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import DigsegError
from .text import CachedPromptEncoder


class SDXLPromptEncoder(CachedPromptEncoder):
    """SDXL's two frozen CLIP text encoders: `encode(prompts)` -> [N, L, D1 + D2 + P]: both penultimate hidden
    states (as SDXL's `encode_prompt`), then the second encoder's pooled `text_embeds` on every token."""

    def __init__(self, text_encoder: nn.Module, tokenizer, text_encoder_2: nn.Module, tokenizer_2) -> None:
        super().__init__()
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.text_encoder_2 = text_encoder_2.requires_grad_(False).eval()
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2

    def _encode_new(self, prompts: list[str]) -> torch.Tensor:
        states, pooled = [], None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids.to(encoder.device)
            out = encoder(ids, output_hidden_states=True)
            states.append(out.hidden_states[-2])  # [M, L, D_i]
            pooled = out[0]  # the last encoder's: CLIPTextModelWithProjection's text_embeds [M, P]
        if states[0].shape[1] != states[1].shape[1]:
            raise DigsegError(f"SDXL's tokenizers pad to different lengths ({states[0].shape[1]} and "
                              f"{states[1].shape[1]}): their model_max_length must match")
        tokens = torch.cat(states, dim=-1)  # [M, L, D1 + D2]
        return torch.cat([tokens, pooled[:, None].expand(-1, tokens.shape[1], -1).to(tokens.dtype)], dim=-1)

