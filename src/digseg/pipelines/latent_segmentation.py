"""The pipeline's work in latent space, mixed into `DiGSegPipeline`: the methods training shares with inference,
`denoise`, `class_relevance` (top-k pruning), `_segment_batch`, and combining ensemble members."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..models.digseg_model import encode_latents, vae_scale_factor
from ..models.text import unet_forward_with_text


def combine_member_latents(latents: torch.Tensor, how: str = "median") -> torch.Tensor:
    """[n, E, C, h, w] members' final latents -> [n, C, h, w]: element-wise "median" (mean of the two middle values
    when E is even; closer to decoding every member than the mean, docs/benchmarks.md) or "mean"."""
    if how == "mean":
        return latents.mean(dim=1)
    ordered = latents.sort(dim=1).values
    e = latents.shape[1]
    return (ordered[:, (e - 1) // 2] + ordered[:, e // 2]) / 2


class LatentSegmentationMixin:
    """Latent-space methods of `DiGSegPipeline` (its `unet`, `vae`, `scheduler`, `text_pathway`, codecs ...)."""

    def prompt_states(self, prompts: Sequence[str]) -> torch.Tensor:
        """Frozen text-encoder features of one prompt per sample (cached by prompt): [B, L, D]."""
        return self.prompt_encoder.encode(list(prompts))

    def unet_prediction(self, unet: torch.nn.Module, model_input: torch.Tensor, timesteps: torch.Tensor,
                        text_levels: list[torch.Tensor]) -> torch.Tensor:
        """[B, 8, h, w] -> [B, 4, h, w] with per-level text (num_levels x [B, L, C], then SDXL's pooled [B, P]);
        `unet` may be a wrapped (DDP, FSDP, compiled) copy of `self.unet`."""
        f = vae_scale_factor(self.vae)
        size = (model_input.shape[-2] * f, model_input.shape[-1] * f)
        return unet_forward_with_text(unet, self.level_context, model_input, timesteps, text_levels, size)

    def noisy_latents_and_target(self, z0: torch.Tensor, noise: torch.Tensor,
                                 t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z0 [B, 4, h, w] noised to timesteps t [B], and the target of the prediction type (noise, z0 or v)."""
        z_t = self.scheduler.add_noise(z0, noise, t)
        target = {"epsilon": noise, "sample": z0}.get(self.scheduler.config.prediction_type)
        return z_t, (self.scheduler.get_velocity(z0, noise, t) if target is None else target)

    def predicted_sample(self, pred: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The U-Net's prediction [B, 4, h, w] at timesteps t [B] (or a scalar) read as the clean latent z0."""
        kind = self.scheduler.config.prediction_type
        if kind == "sample":
            return pred
        alpha = self.scheduler.alphas_cumprod.to(z_t.device)[t].view(-1, 1, 1, 1).to(pred.dtype)  # [B or 1, 1, 1, 1]
        if kind == "epsilon":
            return (z_t - (1 - alpha).sqrt() * pred) / alpha.sqrt()
        return alpha.sqrt() * z_t - (1 - alpha).sqrt() * pred  # v-prediction

    def one_step_latents(self, unet: torch.nn.Module, image_latents: torch.Tensor,
                         text_levels: list[torch.Tensor]) -> torch.Tensor:
        """The one-step objective's deterministic pass (E2E-FT, Lotus): image_latents [B, 4, h, w] and per-level
        text -> mask latents z0 [B, 4, h, w], the U-Net seeing zeros (the noise's mean) at t = T-1."""
        z_t = torch.zeros_like(image_latents)  # [B, 4, h, w]
        t = torch.full((image_latents.shape[0],), self.scheduler.config.num_train_timesteps - 1,
                       device=image_latents.device, dtype=torch.long)  # [B]
        pred = self.unet_prediction(unet, torch.cat([image_latents, z_t], dim=1), t, text_levels)
        return self.predicted_sample(pred, z_t, t)

    def denoise(self, image_latents: torch.Tensor, text: list[torch.Tensor], num_inference_steps: int,
                latents: torch.Tensor) -> torch.Tensor:
        """image_latents [M, 4, h, w], text num_levels x [M, L, C], starting noise `latents` [M, 4, h, w] -> mask
        latents [M, 4, h, w]; a one-step model runs `one_step_latents` instead."""
        if self.config.objective == "one-step":
            return self.one_step_latents(self.unet, image_latents, text)
        self.scheduler.set_timesteps(num_inference_steps, device=image_latents.device)
        for t in self.scheduler.timesteps:
            model_input = torch.cat([image_latents, latents], dim=1)  # [M, 8, h, w]
            pred = self.unet_prediction(self.unet, model_input, t, text)
            latents = self.scheduler.step(pred, t, latents).prev_sample
        return latents

    @torch.no_grad()
    def class_relevance(self, image_latents: torch.Tensor, states: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One U-Net pass attending to all Q classes (each pooled over its tokens), states [Q, L, D] -> relevance
        [B, Q]: cross-attention probability, mean over heads, max over positions, mean over layers."""
        b = image_latents.shape[0]
        n = self.level_context.num_levels
        pooled = self.text_pathway(states.mean(dim=1))  # num_levels x [Q, C] (then SDXL's pooled embeddings [Q, P])
        bag = [level[None].expand(b, -1, -1) for level in pooled[:n]]  # num_levels x [B, Q, C]
        bag += [extra.mean(0, keepdim=True).expand(b, -1) for extra in pooled[n:]]  # SDXL: the classes' mean [B, P]
        self.scheduler.set_timesteps(1, device=image_latents.device)
        t = self.scheduler.timesteps[0]
        self.level_context.record = []
        try:
            self.unet_prediction(self.unet, torch.cat([image_latents, noise], 1), t, bag)
            return torch.stack(self.level_context.record).mean(0)  # [B, Q]
        finally:
            self.level_context.record = None

    def _segment_batch(self, pixels: torch.Tensor, query_ids: list[list[int]], states: torch.Tensor,
                       noise: torch.Tensor, settings):
        """pixels [B, 3, H, W]; query_ids: B lists of Q ids into `states` ([U, L, D]); noise [B, E, 4, h, w]; the
        call's `settings` -> (probs [B, K, H, W], uncertainty [B, H, W] or None, kept [B, K] bool or None). An
        image's noise is shared by its queries (N-class query = N single-class queries); with `top_k` the other
        classes get 0."""
        mode, ensemble_size = settings.mode, settings.ensemble_size
        device, dtype = self.unet.device, self.unet.dtype
        image_latents = encode_latents(self.vae, pixels.to(device, dtype))  # [B, 4, h, w], once per image
        b = len(query_ids)
        noise = noise.to(device, dtype)
        all_ids = torch.tensor(query_ids, device=device)  # [B, Q]
        if mode == "per_class" and settings.top_k and settings.top_k < all_ids.shape[1]:
            relevance = self.class_relevance(image_latents, states[all_ids[0]], noise[:, 0])  # [B, Q]
            keep = relevance.topk(settings.top_k, dim=1).indices.sort(dim=1).values  # [B, k] positions into Q
            run_ids = torch.gather(all_ids, 1, keep)
        else:
            keep, run_ids = None, all_ids
        q = run_ids.shape[1]
        grid = torch.meshgrid(*(torch.arange(n, device=device) for n in (b, q, ensemble_size)), indexing="ij")
        item_image, position, item_member = (g.reshape(-1) for g in grid)  # items (image, query, member): [B*q*E]
        item_query = run_ids[item_image, position]
        codec = self.palette_codec if mode == "palette" else self.binary_codec
        combine = not settings.decode_members and ensemble_size > 1  # combine members' latents, decode once per query
        max_batch = settings.max_unet_batch
        chunk = max(ensemble_size, max_batch // ensemble_size * ensemble_size) if combine else max_batch
        member_probs, spreads = [], []
        for start in range(0, item_image.numel(), chunk):
            sl = slice(start, min(start + chunk, item_image.numel()))
            text = self.text_pathway(states[item_query[sl]])  # num_levels x [m, L, C]
            latents = self.denoise(image_latents[item_image[sl]], text, settings.steps,
                                   noise[item_image[sl], item_member[sl]])  # [m, 4, h, w]
            if combine:
                latents = latents.view(-1, ensemble_size, *latents.shape[1:])  # [m/E, E, 4, h, w]
                spreads.append(latents.float().std(dim=1).mean(dim=1))  # [m/E, h, w]: members' disagreement
                latents = combine_member_latents(latents, settings.ensemble_reduction)  # [m/E, 4, h, w]
            probs = codec.decode(self.decode_masks(latents, settings.mask_decoder))  # [m or m/E, K_codec, H, W]
            member_probs.append(probs if mode == "palette" else probs[:, 1:])
        members = 1 if combine else ensemble_size
        probs = torch.cat(member_probs)  # items ordered (image, query, member): [B*q*members, K or 1, H, W]
        probs = probs.view(b, q, members, *probs.shape[1:])
        if mode == "palette":
            probs = probs[:, 0]  # [B, members, K, H, W]
        else:
            probs = probs[:, :, :, 0].transpose(1, 2)  # [B, members, q, H, W]
            if mode == "binary":
                probs = torch.cat([1 - probs, probs], dim=2)  # [B, members, 2, H, W]
            elif keep is not None:  # per-class after top-k: scattered back among all Q queries, the others at 0
                index = keep[:, None, :, None, None].expand(-1, members, -1, *probs.shape[-2:])
                probs = probs.new_zeros(b, members, all_ids.shape[1], *probs.shape[-2:]).scatter(2, index, probs)
        if combine:  # latent-space spread [B*q, h, w]: mean over queries, upsampled to pixels
            spread = torch.cat(spreads).view(b, q, *spreads[0].shape[-2:]).mean(dim=1, keepdim=True)  # [B, 1, h, w]
            uncertainty = F.interpolate(spread, size=probs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        else:
            uncertainty = probs.std(dim=1).mean(dim=1) if ensemble_size > 1 else None
        kept = None if keep is None else torch.zeros_like(all_ids, dtype=torch.bool).scatter(1, keep, True)  # [B, Q]
        return probs.mean(dim=1), uncertainty, kept
