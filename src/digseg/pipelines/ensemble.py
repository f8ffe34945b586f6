"""Combining ensemble members and queries, decoded from items ordered (image, query, member), into per-class
probabilities and an uncertainty map."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def combine_member_latents(latents: torch.Tensor, how: str = "median") -> torch.Tensor:
    """[n, E, C, h, w] ensemble members' final latents -> [n, C, h, w]. "median": element-wise (the mean of the two
    middle values when E is even), the default because it stays closer to decoding every member than the mean
    (docs/benchmarks.md)."""
    if how == "mean":
        return latents.mean(dim=1)
    ordered = latents.sort(dim=1).values
    e = latents.shape[1]
    return (ordered[:, (e - 1) // 2] + ordered[:, e // 2]) / 2


def assemble_probabilities(decoded: torch.Tensor, b: int, q: int, members: int, mode: str,
                           keep: torch.Tensor | None = None, num_queries: int | None = None) -> torch.Tensor:
    """Decoded probabilities of items ordered (image, query, member), [B*q*members, K, H, W] in palette mode, else
    each query's foreground [B*q*members, 1, H, W] -> [B, members, K, H, W] (binary: K = 2; per-class: one channel
    per query, scattered back among all `num_queries` by `keep` [B, q] after top-k pruning, the others at 0)."""
    probs = decoded.view(b, q, members, *decoded.shape[1:])
    if mode == "palette":
        return probs[:, 0]  # [B, members, K, H, W]
    probs = probs[:, :, :, 0].transpose(1, 2)  # [B, members, q, H, W]
    if mode == "binary":
        return torch.cat([1 - probs, probs], dim=2)  # [B, members, 2, H, W]
    if keep is not None:
        full = probs.new_zeros(b, members, num_queries, *probs.shape[-2:])
        index = keep[:, None, :, None, None].expand(-1, members, -1, *probs.shape[-2:])
        probs = full.scatter(2, index, probs)
    return probs


def latent_spread_map(spreads: torch.Tensor, b: int, q: int, size: tuple[int, int]) -> torch.Tensor:
    """Members' latent spread [B*q, h, w] (per query) -> uncertainty [B, H, W]: mean over queries, upsampled."""
    spread = spreads.view(b, q, *spreads.shape[-2:]).mean(dim=1, keepdim=True)  # [B, 1, h, w]
    return F.interpolate(spread, size=size, mode="bilinear", align_corners=False)[:, 0]
