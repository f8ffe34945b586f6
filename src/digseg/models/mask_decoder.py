"""`LightMaskDecoder`: mask latents -> mask image at under 1% of the VAE decoder's cost, since a mask is a few flat
colours. Its output is the VAE decoder's ([B, 3, h*f, w*f] in about [-1, 1]), so `MaskCodec.decode` reads it as is."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from .digseg_model import vae_scale_factor


class _ResidualBlock(nn.Module):
    """x + conv(silu(conv(silu(x)))), width kept."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class LightMaskDecoder(ModelMixin, ConfigMixin):
    """forward(latents [B, C, h, w]) -> images [B, 3, h*f, w*f] (f = upsample_factor)."""

    @register_to_config
    def __init__(self, latent_channels: int = 4, upsample_factor: int = 8,
                 block_channels: Sequence[int] = (128, 64, 32, 16), blocks_per_level: int = 1) -> None:
        super().__init__()
        stages = int(round(math.log2(upsample_factor))) if upsample_factor >= 1 else -1
        if stages < 0 or 2**stages != upsample_factor:
            raise ValueError(f"upsample_factor must be a power of 2, got {upsample_factor}")
        widths = list(block_channels)
        if len(widths) != stages + 1:
            raise ValueError(f"upsample_factor {upsample_factor} needs {stages + 1} block_channels "
                             f"(one per resolution), got {len(widths)}: {widths}")
        self.conv_in = nn.Conv2d(latent_channels, widths[0], 3, padding=1)
        self.levels = nn.ModuleList()
        for i, width in enumerate(widths):
            layers: list[nn.Module] = []
            if i > 0:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(widths[i - 1], width, 3, padding=1)]
            layers += [_ResidualBlock(width) for _ in range(blocks_per_level)]
            self.levels.append(nn.Sequential(*layers))
        self.conv_out = nn.Conv2d(widths[-1], 3, 3, padding=1)

    @classmethod
    def for_vae(cls, vae, block_channels: Sequence[int] | None = None, blocks_per_level: int = 1) -> "LightMaskDecoder":
        """A decoder for `vae`'s latents: its latent channels and downsampling factor; widths halve from 128."""
        levels = len(vae.config.block_out_channels)  # one width per resolution
        widths = list(block_channels) if block_channels else [max(16, 128 >> i) for i in range(levels)]
        return cls(vae.config.latent_channels, vae_scale_factor(vae), widths, blocks_per_level)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(latents)  # [B, c0, h, w]
        for level in self.levels:
            x = level(x)  # [B, c_i, h*2^i, w*2^i]
        return self.conv_out(F.silu(x))  # [B, 3, h*f, w*f]


def count_flops(module: nn.Module, example: torch.Tensor) -> float:
    """GFLOP of one forward pass of `module` on `example` (torch's `FlopCounterMode`: convolutions and matmuls)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(example)
    return counter.get_total_flops() / 1e9
