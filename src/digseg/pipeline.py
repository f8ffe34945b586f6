"""`DiGSegPipeline`: text-prompted segmentation by few-step latent diffusion.

Three ways to ask (chosen by the arguments of `__call__`):
- `prompt="cup"` (or one prompt per image): binary, foreground/background, K = 2.
- nothing (or `classes` equal to the model's own class list): palette, one pass per image over the closed
  class set the model was trained on, K = len(class_names).
- `classes=[...]` of any other names: one binary query per class, label = per-pixel argmax of the class
  scores (the exact open-vocabulary path).

Per batch of images: each image is encoded once; prompts are encoded once per call (cached); E ensemble
members start from independent noise and are denoised in K DDIM steps with trailing spacing; the members'
latents are combined (element-wise median by default, or mean) and decoded once (the VAE decoder is the
largest cost; a model with a `LightMaskDecoder`, from `digseg train-mask-decoder`, decodes masks with that
instead), then read back to per-class probabilities. The uncertainty map is the members' per-pixel spread: the standard deviation of their latents
(mean over channels, upsampled), or with `decode_members=True` (every member decoded, as Marigold does) the
standard deviation of their probabilities (mean over classes).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from .ensemble import ENSEMBLE_REDUCTIONS, assemble_probabilities, combine_member_latents, latent_spread_map
from .errors import DigsegError
from .image_processing import processed_size, resize_to, to_image_list
from .masks import MaskCodec
from .native_outputs import PROBABILITY_CLASSES_KEPT, native_outputs, resize_probs, stack_outputs
from .prompts import palette_prompt, resolve_queries
from .training.config import MASK_DECODERS, OBJECTIVES
from .sliding import check_test_protocol, combine_views, group_views, make_views, pair, view_noise
from .models.digseg_model import (
    decode_latents,
    encode_latents,
    load_backbone,
    load_clip_text_encoder,
    looks_like_hub_id,
    make_scheduler,
    unet_downsample_factor,
    vae_scale_factor,
    widen_conv_in,
)
from .models.mask_decoder import LightMaskDecoder
from .models.text import CLIPPromptEncoder, TextPathway, install_level_processors, unet_forward_with_text


@functools.lru_cache(maxsize=2)
def _open_clip_encoder(name: str):
    """One frozen open_clip text encoder per name per process (from_backbone and __init__ both ask for it)."""
    from .models.open_clip_text import OpenCLIPPromptEncoder

    return OpenCLIPPromptEncoder.from_pretrained(name)


@dataclass
class DiGSegOutput(BaseOutput):
    """labels [N, H, W] int64; probabilities [N, n, H, W] of the classes probability_class_ids [N, n] (n = K unless
    fewer were asked for); uncertainty [N, H, W]: members' spread (None when E == 1)."""

    labels: np.ndarray | torch.Tensor
    probabilities: np.ndarray | torch.Tensor
    uncertainty: np.ndarray | torch.Tensor | None
    class_names: list[str]
    probability_class_ids: np.ndarray | torch.Tensor | None = None


class DiGSegPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->unet->vae->mask_decoder"
    # text_encoder, tokenizer: None with an open_clip text tower; mask_decoder: None until one is trained
    _optional_components = ["text_encoder", "tokenizer", "mask_decoder"]

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler: DDIMScheduler,
        text_encoder: CLIPTextModel | None,
        tokenizer: CLIPTokenizer | None,
        text_pathway: TextPathway,
        class_names: list[str] | None = None,
        open_clip_text_encoder: str | None = None,
        prompt_template: str = "{}",
        default_denoising_steps: int = 1,
        default_processing_resolution: int = 512,
        mask_decoder: LightMaskDecoder | None = None,
        objective: str = "diffusion",
        one_step_decoder: str | None = None,
    ) -> None:
        """`objective`: how the U-Net was trained: "diffusion" (denoising, any ensemble and step count) or
        "one-step" (one deterministic pass from a zero latent at t = T-1, see `one_step_latents`);
        `one_step_decoder`: the mask decoder a one-step model was trained through ("light" or "vae"), which
        `mask_decoder="auto"` then uses."""
        if objective not in OBJECTIVES:
            raise DigsegError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        super().__init__()
        self.register_modules(
            unet=unet, vae=vae, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer,
            text_pathway=text_pathway, mask_decoder=mask_decoder,
        )
        self.register_to_config(
            open_clip_text_encoder=open_clip_text_encoder,
            prompt_template=prompt_template,
            default_denoising_steps=default_denoising_steps,
            default_processing_resolution=default_processing_resolution,
            objective=objective,
            one_step_decoder=one_step_decoder,
        )
        self.level_context = install_level_processors(unet)
        if open_clip_text_encoder:  # an open_clip text tower (e.g. BiomedCLIP), re-created from its name
            self.prompt_encoder = _open_clip_encoder(open_clip_text_encoder)
        else:
            self.prompt_encoder = CLIPPromptEncoder(text_encoder, tokenizer)
        self.binary_codec = MaskCodec("binary")
        self.set_class_names(class_names)

    # ----------------------------------------------------------------------------------------- building
    @classmethod
    def from_backbone(
        cls,
        pretrained: str | Path,
        class_names: Sequence[str] | None = None,
        prediction_type: str = "sample",
        prompt_template: str = "{}",
        processing_resolution: int | None = None,
        torch_dtype: torch.dtype | None = None,
        text_encoder: str | Path | None = None,
    ) -> "DiGSegPipeline":
        """A fresh (untrained) DiGSeg model from a Stable Diffusion checkpoint: widened U-Net, identity pathway.

        `text_encoder` swaps in another text encoder for the backbone's own: a transformers CLIP text encoder
        folder or hub id (e.g. CLIP ViT-L/14 or ViT-B/16), or "open_clip:<name>" for an open_clip text tower
        ("open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", "open_clip:local-dir:/m").
        Its features reach every U-Net level through the learned per-level projections.
        """
        backbone = load_backbone(pretrained, torch_dtype=torch_dtype)
        open_clip_name = None
        if text_encoder is not None and str(text_encoder).startswith("open_clip:"):
            open_clip_name = str(text_encoder)[len("open_clip:"):]
            backbone.text_encoder = backbone.tokenizer = None  # the pipeline builds the open_clip encoder itself
        elif text_encoder is not None:
            backbone.text_encoder, backbone.tokenizer = load_clip_text_encoder(text_encoder, torch_dtype)
        unet = widen_conv_in(backbone.unet)
        backbone.vae.requires_grad_(False)
        if backbone.text_encoder is not None:
            backbone.text_encoder.requires_grad_(False)
        encoder_dim = backbone.text_encoder.config.hidden_size if open_clip_name is None else None
        if open_clip_name is not None:
            encoder_dim = _open_clip_encoder(open_clip_name).hidden_size
        pathway = TextPathway(
            encoder_dim=encoder_dim,
            cross_attention_dim=unet.config.cross_attention_dim,
            num_levels=len(unet.config.block_out_channels),
        )
        if torch_dtype is not None:
            pathway.to(torch_dtype)
        if processing_resolution is None:
            processing_resolution = unet.config.sample_size * vae_scale_factor(backbone.vae)
        return cls(
            unet=unet, vae=backbone.vae, scheduler=make_scheduler(backbone.scheduler, prediction_type),
            text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer, text_pathway=pathway,
            class_names=list(class_names) if class_names else None, prompt_template=prompt_template,
            default_processing_resolution=processing_resolution, open_clip_text_encoder=open_clip_name,
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "DiGSegPipeline":
        path = Path(str(pretrained_model_name_or_path)).expanduser()
        if path.exists() or not looks_like_hub_id(str(pretrained_model_name_or_path)):
            if not path.is_dir():
                raise DigsegError(f"model folder not found: {path}")
            if not (path / "model_index.json").is_file():
                raise DigsegError(f"{path} is not a DiGSeg model folder: model_index.json is missing")
            pretrained_model_name_or_path = str(path)
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except (OSError, ValueError) as exc:
            raise DigsegError(f"cannot load DiGSeg model {pretrained_model_name_or_path}: {str(exc).splitlines()[0]}") from exc

    def enable_speedups(self, channels_last: bool = True, compile: bool = False, compile_mode: str | None = None) -> "DiGSegPipeline":
        """Channels-last memory format for the U-Net and VAE (faster convolutions on most CPUs and GPUs) and,
        optionally, `torch.compile` of the U-Net, the VAE encoder and decoder, and the light mask decoder if any
        (slow first call; pays off on long runs).
        Outputs are unchanged up to float rounding. Returns self."""
        light = [self.mask_decoder] if self.mask_decoder is not None else []
        if channels_last:
            for module in [self.unet, self.vae] + light:
                module.to(memory_format=torch.channels_last)
        if compile:  # in place (nn.Module.compile): the pipeline keeps its modules, checkpoints keep their keys
            for module in [self.unet, self.vae.encoder, self.vae.decoder] + light:
                module.compile(mode=compile_mode)
        return self

    def set_mask_decoder(self, mask_decoder: LightMaskDecoder | None) -> None:
        """Install (or with None remove) a light mask decoder; `save_pretrained` then writes it to mask_decoder/."""
        if mask_decoder is not None:
            mask_decoder = mask_decoder.to(self.device).eval().requires_grad_(False)
            if mask_decoder.dtype != self.unet.dtype:
                mask_decoder = mask_decoder.to(self.unet.dtype)
        self.register_modules(mask_decoder=mask_decoder)

    def _light_mask_decoder(self, choice: str) -> LightMaskDecoder | None:
        """The light decoder that `choice` ("auto", "light", "vae") selects, or None for the VAE. "auto" is the
        decoder a one-step model was trained through, else the light one when the model has one."""
        if choice not in MASK_DECODERS:
            raise DigsegError(f"mask_decoder must be one of {', '.join(MASK_DECODERS)}, got {choice!r}")
        if choice == "auto" and self.config.objective == "one-step":
            choice = self.config.one_step_decoder or "auto"
        if choice == "light" and self.mask_decoder is None:
            raise DigsegError("this model has no light mask decoder: train one with `digseg train-mask-decoder`, "
                              "or use mask_decoder='vae'")
        return None if choice == "vae" else self.mask_decoder

    def decode_masks(self, latents: torch.Tensor, mask_decoder: str = "auto") -> torch.Tensor:
        """Mask latents [M, C, h, w] -> mask images [M, 3, H, W] (float32), by the light decoder or the VAE.

        mask_decoder: "auto" (the light decoder when the model has one, else the VAE), "light" or "vae".
        """
        light = self._light_mask_decoder(mask_decoder)
        if light is None:
            return decode_latents(self.vae, latents).float()
        return light(latents.to(light.dtype, memory_format=torch.channels_last)).float()

    # ----------------------------------------------------------------------------------------- helpers
    def set_class_names(self, class_names: Sequence[str] | None) -> None:
        """Change the closed class set (palette mode) of this model, e.g. before training on a new dataset."""
        names = list(class_names) if class_names else None
        self.register_to_config(class_names=names)
        self.palette_codec = MaskCodec("palette", len(names)) if names and len(names) >= 2 else None

    @property
    def class_names(self) -> list[str] | None:
        return self.config.class_names

    @property
    def palette_prompt(self) -> str:
        """The text that conditions palette mode: the model's class list."""
        return palette_prompt(self.config.class_names or [])

    @property
    def pad_multiple(self) -> int:
        return vae_scale_factor(self.vae) * unet_downsample_factor(self.unet)

    def format_prompt(self, name: str) -> str:
        if not isinstance(name, str) or not name.strip():
            raise DigsegError(f"empty prompt {name!r}: give a class name or a phrase")
        return self.config.prompt_template.format(name.strip())

    def query_states(self, table: Sequence[Sequence[str]]) -> torch.Tensor:
        """Encoder features of Q queries, each the mean over its prompt variants: [Q, L, D] (before projection).

        The per-level projections are affine, so projecting this mean equals averaging the projected variants;
        projecting late means only the rows a step needs are projected (pooled vectors for ranking, the queried
        classes for denoising), not every prompt of a large vocabulary on every call.
        """
        sizes = [len(variants) for variants in table]
        states = self.prompt_encoder.encode([p for variants in table for p in variants])  # [sum(sizes), L, D]
        states = states.to(self.unet.device, self.text_pathway.dtype)
        if max(sizes) == 1:
            return states
        return torch.stack([chunk.mean(0) for chunk in states.split(sizes)])

    def query_levels(self, table: Sequence[Sequence[str]]) -> list[torch.Tensor]:
        """Projected features of Q queries: num_levels x [Q, L, C]."""
        return self.text_pathway(self.query_states(table))

    # ----------------------------------------------------------------------------------------- training interface
    def prompt_states(self, prompts: Sequence[str]) -> torch.Tensor:
        """Frozen text-encoder features of one prompt per sample (cached by prompt): [B, L, D]."""
        return self.prompt_encoder.encode(list(prompts))

    def unet_prediction(self, unet: torch.nn.Module, model_input: torch.Tensor, timesteps: torch.Tensor,
                        text_levels: list[torch.Tensor]) -> torch.Tensor:
        """[B, 8, h, w] -> [B, 4, h, w] with per-level text (num_levels x [B, L, C]); `unet` may be a wrapped
        (DDP, FSDP, compiled) copy of `self.unet`."""
        return unet_forward_with_text(unet, self.level_context, model_input, timesteps, text_levels)

    def noisy_latents_and_target(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask latents z0 [B, 4, h, w] noised to timesteps t [B], and the regression target of the scheduler's
        prediction type (noise, z0 or v)."""
        z_t = self.scheduler.add_noise(z0, noise, t)
        kind = self.scheduler.config.prediction_type
        target = {"epsilon": noise, "sample": z0}.get(kind)
        return z_t, (self.scheduler.get_velocity(z0, noise, t) if target is None else target)

    def predicted_sample(self, pred: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The U-Net's prediction [B, 4, h, w] at timesteps t [B] (or a scalar) read as the clean latent z0,
        whatever the scheduler's prediction type (x0 itself, noise, or v)."""
        kind = self.scheduler.config.prediction_type
        if kind == "sample":
            return pred
        alpha = self.scheduler.alphas_cumprod.to(z_t.device)[t].view(-1, 1, 1, 1).to(pred.dtype)  # [B or 1, 1, 1, 1]
        if kind == "epsilon":
            return (z_t - (1 - alpha).sqrt() * pred) / alpha.sqrt()
        return alpha.sqrt() * z_t - (1 - alpha).sqrt() * pred  # v-prediction

    def one_step_latents(self, unet: torch.nn.Module, image_latents: torch.Tensor,
                         text_levels: list[torch.Tensor]) -> torch.Tensor:
        """The one-step objective's single deterministic pass: image_latents [B, 4, h, w] and per-level text
        (num_levels x [B, L, C]) -> predicted mask latents z0 [B, 4, h, w].

        The U-Net sees the last timestep T-1 and, in place of noise, zeros (the noise's mean), as E2E-FT and
        Lotus do; the same function serves training (with `unet` the wrapped copy) and inference.
        """
        z_t = torch.zeros_like(image_latents)  # [B, 4, h, w]
        t = torch.full((image_latents.shape[0],), self.scheduler.config.num_train_timesteps - 1,
                       device=image_latents.device, dtype=torch.long)  # [B]
        pred = self.unet_prediction(unet, torch.cat([image_latents, z_t], dim=1), t, text_levels)
        return self.predicted_sample(pred, z_t, t)

    # ----------------------------------------------------------------------------------------- denoising
    def denoise(self, image_latents: torch.Tensor, text: list[torch.Tensor], num_inference_steps: int,
                generator=None, latents: torch.Tensor | None = None) -> torch.Tensor:
        """image_latents [M, 4, h, w], text num_levels x [M, L, C] -> mask latents [M, 4, h, w].

        `latents` is the starting noise (drawn from `generator` when not given). A one-step model ignores it and
        the step count: its one pass is `one_step_latents`.
        """
        if self.config.objective == "one-step":
            return self.one_step_latents(self.unet, image_latents, text)
        if latents is None:
            latents = randn_tensor(image_latents.shape, generator=generator, device=image_latents.device, dtype=image_latents.dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=image_latents.device)
        for t in self.scheduler.timesteps:
            model_input = torch.cat([image_latents, latents], dim=1)  # [M, 8, h, w]
            pred = self.unet_prediction(self.unet, model_input, t, text)
            latents = self.scheduler.step(pred, t, latents).prev_sample
        return latents

    @torch.no_grad()
    def class_relevance(self, image_latents: torch.Tensor, states: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One U-Net pass attending to a "bag" of all Q class vectors -> relevance [B, Q].

        image_latents [B, 4, h, w]; states [Q, L, D] encoder features (each class pooled over its tokens into one
        key, then projected per level); noise [B, 4, h, w]. Relevance of a class = its cross-attention probability, averaged over heads, maxed over
        positions, averaged over cross-attention layers. Used to prune classes before exact queries.
        """
        b = image_latents.shape[0]
        pooled = self.text_pathway(states.mean(dim=1))  # num_levels x [Q, C]
        bag = [level[None].expand(b, -1, -1) for level in pooled]  # num_levels x [B, Q, C]
        self.scheduler.set_timesteps(1, device=image_latents.device)
        t = self.scheduler.timesteps[0]
        self.level_context.record = []
        try:
            self.unet_prediction(self.unet, torch.cat([image_latents, noise], 1), t, bag)
            return torch.stack(self.level_context.record).mean(0)  # [B, Q]
        finally:
            self.level_context.record = None

    def _segment_batch(self, pixels, query_ids, states, mode, ensemble_size, steps, noise, max_batch, top_k,
                       decode_members=False, ensemble_reduction="median", mask_decoder="auto"):
        """pixels [B, 3, H, W]; query_ids: B lists of Q ids into `states` ([U, L, D] encoder features); noise
        [B, E, 4, h, w] starting latents (`sliding.view_noise`).

        -> (probs [B, K, H, W], uncertainty [B, H, W] or None, kept [B, K] bool or None). Each (image, member) draws its noise once and
        shares it across the image's queries, so class scores are comparable and an N-class query equals N
        single-class queries with the same seed. Ensemble members are combined in latent space
        (`combine_member_latents`) and decoded once per query (the VAE decoder is the largest cost); `decode_members=True` decodes every member and averages
        probabilities instead, as Marigold does. With `top_k`, per-class queries first rank all classes by
        `class_relevance` and run only the top k; the others get probability 0.
        """
        device, dtype = self.unet.device, self.unet.dtype
        image_latents = encode_latents(self.vae, pixels.to(device, dtype))  # [B, 4, h, w], once per image
        b = len(query_ids)
        noise = noise.to(device, dtype)
        all_ids = torch.tensor(query_ids, device=device)  # [B, Q]
        if mode == "per_class" and top_k and top_k < all_ids.shape[1]:
            relevance = self.class_relevance(image_latents, states[all_ids[0]], noise[:, 0])  # [B, Q]
            keep = relevance.topk(top_k, dim=1).indices.sort(dim=1).values  # [B, k] positions into the Q classes
            run_ids = torch.gather(all_ids, 1, keep)
        else:
            keep, run_ids = None, all_ids
        q = run_ids.shape[1]
        # items ordered (image, query, member): [B * q * E]
        item_image = torch.arange(b, device=device).repeat_interleave(q * ensemble_size)
        item_member = torch.arange(ensemble_size, device=device).repeat(b * q)
        item_query = run_ids.repeat_interleave(ensemble_size, dim=1).reshape(-1)
        codec = self.palette_codec if mode == "palette" else self.binary_codec
        combine = not decode_members and ensemble_size > 1  # combine members' latents, decode once per query
        chunk = max(ensemble_size, max_batch // ensemble_size * ensemble_size) if combine else max_batch
        member_probs, spreads = [], []
        for start in range(0, item_image.numel(), chunk):
            sl = slice(start, min(start + chunk, item_image.numel()))
            text = self.text_pathway(states[item_query[sl]])  # num_levels x [m, L, C]
            latents = self.denoise(image_latents[item_image[sl]], text, steps, latents=noise[item_image[sl], item_member[sl]])
            if combine:
                latents = latents.view(-1, ensemble_size, *latents.shape[1:])  # [m/E, E, 4, h, w]
                spreads.append(latents.float().std(dim=1).mean(dim=1))  # [m/E, h, w]: members' disagreement
                latents = combine_member_latents(latents, ensemble_reduction)  # [m/E, 4, h, w]
            probs = codec.decode(self.decode_masks(latents, mask_decoder))  # [m or m/E, K_codec, H, W]
            member_probs.append(probs if mode == "palette" else probs[:, 1:])
        members = 1 if combine else ensemble_size
        probs = assemble_probabilities(torch.cat(member_probs), b, q, members, mode, keep, all_ids.shape[1])
        if combine:  # latent-space spread, upsampled to pixels
            uncertainty = latent_spread_map(torch.cat(spreads), b, q, tuple(probs.shape[-2:]))
        else:
            uncertainty = probs.std(dim=1).mean(dim=1) if ensemble_size > 1 else None
        kept = None
        if keep is not None:
            kept = torch.zeros(all_ids.shape, dtype=torch.bool, device=device).scatter(1, keep, True)  # [B, Q]
        return probs.mean(dim=1), uncertainty, kept

    # ----------------------------------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(
        self,
        image: Any,
        prompt: str | Sequence[str] | None = None,
        classes: Sequence[str] | None = None,
        ensemble_size: int = 1,
        num_inference_steps: int | None = None,
        processing_resolution: int | None = None,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "np",
        threshold: float = 0.5,
        no_class_threshold: float | None = None,
        templates: str | Sequence[str] | None = None,
        top_k: int | None = None,
        decode_members: bool = False,
        ensemble_reduction: str = "median",
        mask_decoder: str = "auto",
        mode: str = "whole",
        crop_size: int | tuple[int, int] | None = None,
        stride: int | tuple[int, int] | None = None,
        global_view: bool = False,
        flip: bool = False,
        scale: tuple[int, int] | None = None,
        keep_ratio: bool = True,
        max_probability_classes: int | None = PROBABILITY_CLASSES_KEPT,
        max_unet_batch: int = 64,
        show_progress_bar: bool = True,
        return_dict: bool = True,
    ) -> DiGSegOutput | tuple:
        """Segment `image` (one or a list). Returns labels [N, H, W], probabilities [N, n, H, W] of the classes
        `probability_class_ids` [N, n], uncertainty [N, H, W].

        `generator`: one torch.Generator drawing every image's noise in order, or a list with one per image
        (image i's noise then depends on generator[i] only, so batching images does not change results).
        Binary prompts: a pixel is foreground when its probability exceeds `threshold`. Per-class queries: a
        pixel whose best class score is below `no_class_threshold` (if given) is labelled 255, "no class".
        Ensembles (E > 1) combine the members' final latents by `ensemble_reduction` ("median", element-wise,
        the default; or "mean") and decode once; `decode_members=True` decodes every member and averages the
        probabilities instead (E decodes). `mask_decoder`: "auto" decodes masks with the model's light mask
        decoder when it has one (`digseg train-mask-decoder`), else with the VAE; "vae" or "light" choose.

        Test protocol (docs/eval_protocols.md): the image is resized to `scale` when given (mmseg's test
        resize: with `keep_ratio`, long side <= max(scale) and short side <= min(scale), e.g. (2048, 512);
        without, exactly (width, height)), else its longer side to `processing_resolution`. `mode="whole"` runs
        it at once; `mode="slide"` runs `crop_size` windows every `stride` pixels (mmseg's grid; defaults: the
        processing resolution, 2/3 of it) batched through the U-Net and decoder, combined in probability space
        (`digseg.sliding`), plus the whole image as one more window with `global_view` (CAT-Seg). `flip` also runs
        the mirrored image (same windows, same noise; flipped back and averaged: flip TTA, either mode). Labels are a chunked argmax at the native size;
        probabilities are returned for the `max_probability_classes` classes with most pixels (None: all).
        """
        if ensemble_reduction not in ENSEMBLE_REDUCTIONS:
            raise DigsegError(f"ensemble_reduction must be one of {', '.join(ENSEMBLE_REDUCTIONS)}, got {ensemble_reduction!r}")
        if ensemble_size < 1:
            raise DigsegError(f"ensemble_size must be >= 1, got {ensemble_size}")
        self._light_mask_decoder(mask_decoder)  # a clear error for a bad choice, before any work
        steps = num_inference_steps or self.config.default_denoising_steps
        if steps < 1:
            raise DigsegError(f"num_inference_steps must be >= 1, got {steps}")
        one_step = self.config.objective == "one-step"
        if one_step and (ensemble_size > 1 or steps > 1):
            raise DigsegError(f"this model was trained with the one-step objective: it runs one deterministic pass, "
                              f"so {ensemble_size} ensemble members x {steps} steps would repeat the same result; "
                              "use ensemble_size=1 and num_inference_steps=1 (E-Step 1x1)")
        if scale is not None and processing_resolution is not None:
            raise DigsegError("give either scale or processing_resolution, not both")
        resolution = self.config.default_processing_resolution if processing_resolution is None else processing_resolution
        if output_type not in ("np", "pt"):
            raise DigsegError(f"output_type must be 'np' or 'pt', got {output_type!r}")
        if max_probability_classes is not None and max_probability_classes < 1:
            raise DigsegError(f"max_probability_classes must be >= 1 or None, got {max_probability_classes}")
        window = check_test_protocol(mode, crop_size, stride, global_view, resolution or self.config.default_processing_resolution)
        scale = pair(scale, "scale")

        images = to_image_list(image)
        if isinstance(generator, list) and len(generator) != len(images):
            raise DigsegError(f"got {len(generator)} generators for {len(images)} images")
        mode_q, table, query_ids, names = resolve_queries(len(images), prompt, classes, templates,
                                                          self.config.prompt_template, self.config.class_names)
        if top_k is not None and top_k < 1:
            raise DigsegError(f"top_k must be >= 1, got {top_k}")
        states = self.query_states(table)  # [U, L, D]: every prompt encoded once (cached), projected when used
        latent_channels, latent_scale = self.vae.config.latent_channels, vae_scale_factor(self.vae)
        views = []
        for img in images:  # resized to the test scale, cut into views (one, the whole image, in whole mode)
            resized = resize_to(img, processed_size(*img.shape[-2:], resolution, scale, keep_ratio))
            crop, step = window or (tuple(resized.shape[-2:]),) * 2
            views.append(make_views(resized, crop, step, self.pad_multiple, global_view, flip))
        labels, probabilities, class_ids, uncertainty = [], [], [], []
        groups = group_views(views, max(1, batch_size))  # consecutive images whose views share a shape
        for group in self.progress_bar(groups) if show_progress_bar else groups:
            pixels = torch.cat([views[i].pixels for i in group])  # [V, 3, h, w]
            noise = torch.cat([view_noise(views[i], (ensemble_size, latent_channels, latent_scale), generator, i,
                                          self.unet.device, self.unet.dtype) for i in group])
            if one_step:  # deterministic: the input is zeros (top-k's relevance pass too), no generator draws count
                noise = torch.zeros_like(noise)
            ids = [query_ids[i] for i in group for _ in range(len(views[i].pixels))]
            probs, unc, kept = self._segment_batch(
                pixels, ids, states, mode_q, ensemble_size, steps, noise, max_unet_batch, top_k,
                decode_members, ensemble_reduction, mask_decoder)
            start = 0
            for i in group:
                part = slice(start, start + len(views[i].pixels))
                start = part.stop
                size = tuple(images[i].shape[-2:])
                excluded = None if kept is None else ~kept[part].any(dim=0).cpu()  # pruned in every view
                label, prob, cid = native_outputs(combine_views(views[i], probs[part]).cpu(), size, mode_q, threshold,
                                                  no_class_threshold, excluded, max_probability_classes)
                labels.append(label)
                probabilities.append(prob)
                class_ids.append(cid)
                if unc is not None:
                    uncertainty.append(resize_probs(combine_views(views[i], unc[part, None]).cpu(), size)[0])
        out = stack_outputs(labels, probabilities, uncertainty, class_ids, numpy=output_type == "np")
        if not return_dict:
            return out[0], out[1], out[2], names, out[3]
        return DiGSegOutput(labels=out[0], probabilities=out[1], uncertainty=out[2], class_names=names,
                            probability_class_ids=out[3])

