"""`DiGSegPipeline`: text-prompted segmentation by few-step latent diffusion. Three ways to ask: `prompt` (binary);
nothing, or the model's own `classes` (palette: one pass over the closed class set); `classes=[...]` of other names
(one binary query per class, label = per-pixel argmax). `__call__`: `common.SegmentationCall` (shared with
onnxruntime); latent-space work: `latent_segmentation`."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .adapters import AdapterMixin
from .latent_segmentation import LatentSegmentationMixin
from ..devices import runtime_info
from ..errors import DigsegError, first_line
from ..hub_ids import check_hub_id, hub_id_or_none
from .masks import MaskCodec
from .model_folder import OPTIONAL_COMPONENTS, TRAINED_COMPONENTS, check_finite, check_model_folder, check_model_index
from .model_card import model_facts, write_model_card
from .common import SegmentationCall, uses_light_decoder, view_noise
from .sliding import combine_views, group_views, make_views, native_outputs, resize, to_image_list
from ..models.choices import OBJECTIVES
from ..models.digseg_model import (check_clip_text_encoder, decode_latents, load_backbone, load_clip_text_encoder,
                                   make_scheduler, vae_scale_factor, widen_conv_in)
from ..models.adapters import has_lora
from ..models.mask_decoder import LightMaskDecoder
from ..models.text import (CLIPPromptEncoder, SDXLPromptEncoder, TextPathway, cross_attention_levels,
                           install_level_processors)


@functools.lru_cache(maxsize=2)
def _open_clip_encoder(name: str):
    """One frozen open_clip text encoder per name per process (from_backbone and __init__ both ask for it)."""
    from ..models.open_clip_text import OpenCLIPPromptEncoder

    return OpenCLIPPromptEncoder.from_pretrained(name)


class DiGSegPipeline(SegmentationCall, AdapterMixin, LatentSegmentationMixin, DiffusionPipeline):
    _optional_components = list(OPTIONAL_COMPONENTS)

    def __init__(self, unet: UNet2DConditionModel, vae: AutoencoderKL, scheduler: DDIMScheduler,
                 text_encoder: CLIPTextModel | None, tokenizer: CLIPTokenizer | None, text_pathway: TextPathway,
                 class_names: list[str] | None = None, open_clip_text_encoder: str | None = None,
                 prompt_template: str = "{}", default_denoising_steps: int = 1,
                 default_processing_resolution: int = 512, mask_decoder: LightMaskDecoder | None = None,
                 objective: str = "diffusion", one_step_decoder: str | None = None, task: str | None = None,
                 training_data: dict | None = None, text_encoder_2: CLIPTextModelWithProjection | None = None,
                 tokenizer_2: CLIPTokenizer | None = None, backbone: dict | None = None) -> None:
        """`objective`: "diffusion" or "one-step" (`one_step_latents`); `one_step_decoder`: the decoder a one-step
        model was trained through ("light" or "vae"); `task`: the queries it was trained on ("binary", "palette",
        "both" or None); `training_data`: its data and split rule (`digseg.data.model_data`); `backbone`:
        {"pretrained", "revision", "variant"} it was built from."""
        if objective not in OBJECTIVES:
            raise DigsegError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        super().__init__()
        self.register_modules(unet=unet, vae=vae, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer,
                              text_pathway=text_pathway, mask_decoder=mask_decoder, text_encoder_2=text_encoder_2,
                              tokenizer_2=tokenizer_2)
        self.register_to_config(open_clip_text_encoder=open_clip_text_encoder, prompt_template=prompt_template,
                                default_denoising_steps=default_denoising_steps,
                                default_processing_resolution=default_processing_resolution, objective=objective,
                                one_step_decoder=one_step_decoder, task=task, training_data=training_data,
                                backbone=backbone)
        self.level_context = install_level_processors(unet)
        if open_clip_text_encoder:  # an open_clip text tower (e.g. BiomedCLIP), re-created from its name
            self.prompt_encoder = _open_clip_encoder(open_clip_text_encoder)
        elif text_encoder_2 is not None:  # SDXL: both encoders' tokens, and the second's pooled embedding
            self.prompt_encoder = SDXLPromptEncoder(text_encoder, tokenizer, text_encoder_2, tokenizer_2)
        else:
            self.prompt_encoder = CLIPPromptEncoder(text_encoder, tokenizer)
        self.binary_codec = MaskCodec("binary")
        self.set_class_names(class_names)

    @classmethod
    def from_backbone(cls, pretrained: str | Path, class_names: Sequence[str] | None = None,
                      prediction_type: str = "sample", prompt_template: str = "{}",
                      processing_resolution: int | None = None, torch_dtype: torch.dtype | None = None,
                      text_encoder: str | Path | None = None, variant: str | None = None, revision: str | None = None,
                      text_encoder_variant: str | None = None,
                      text_encoder_revision: str | None = None) -> "DiGSegPipeline":
        """A fresh DiGSeg model from a Stable Diffusion 1.x / 2.x / XL checkpoint (at `variant`, `revision`) in
        `torch_dtype` (None: float32): widened U-Net, identity pathway. `text_encoder` replaces SD 1.x / 2.x's own:
        a transformers CLIP text encoder folder or hub id (at `text_encoder_variant`, `text_encoder_revision`), or
        "open_clip:<name>" ("open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")."""
        open_clip_name = None
        if str(text_encoder).startswith("open_clip:"):
            open_clip_name = str(text_encoder).removeprefix("open_clip:")
        elif text_encoder is not None:
            check_clip_text_encoder(text_encoder, text_encoder_revision)  # before the backbone's weights load
        backbone = load_backbone(pretrained, torch_dtype=torch_dtype, variant=variant, revision=revision)
        record = dict(backbone.record)
        sdxl = backbone.text_encoder_2 is not None
        if text_encoder is not None and sdxl:
            raise DigsegError(f"model.text_encoder {text_encoder}: an SDXL backbone is conditioned on its own two "
                              "text encoders (tokens and pooled embedding); another text encoder replaces SD 1.x / "
                              "2.x's only")
        if open_clip_name is not None:
            backbone.text_encoder = backbone.tokenizer = None  # the pipeline builds the open_clip encoder itself
        elif text_encoder is not None:
            backbone.text_encoder, backbone.tokenizer = load_clip_text_encoder(
                text_encoder, torch_dtype, variant=text_encoder_variant, revision=text_encoder_revision)
            record.update(text_encoder=str(text_encoder), text_encoder_revision=text_encoder_revision,
                          text_encoder_variant=text_encoder_variant)
        unet = widen_conv_in(backbone.unet)
        backbone.vae.requires_grad_(False)  # the text encoders are frozen by their prompt encoder
        encoder_dim = (_open_clip_encoder(open_clip_name).hidden_size if open_clip_name is not None
                       else backbone.text_encoder.config.hidden_size)
        pooled_dim = 0
        if sdxl:
            encoder_dim += backbone.text_encoder_2.config.hidden_size
            pooled_dim = int(backbone.text_encoder_2.config.projection_dim)
        pathway = TextPathway(encoder_dim=encoder_dim, cross_attention_dim=unet.config.cross_attention_dim,
                              num_levels=len(unet.config.block_out_channels), pooled_dim=pooled_dim,
                              levels=cross_attention_levels(unet))
        if torch_dtype is not None:
            pathway.to(torch_dtype)
        if processing_resolution is None:
            processing_resolution = unet.config.sample_size * vae_scale_factor(backbone.vae)
        return cls(
            unet=unet, vae=backbone.vae, scheduler=make_scheduler(backbone.scheduler, prediction_type),
            text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer, text_pathway=pathway,
            class_names=list(class_names) if class_names else None, prompt_template=prompt_template,
            default_processing_resolution=processing_resolution, open_clip_text_encoder=open_clip_name,
            text_encoder_2=backbone.text_encoder_2, tokenizer_2=backbone.tokenizer_2, backbone=record,
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "DiGSegPipeline":
        """diffusers' `from_pretrained` of a folder (or hub snapshot) checked by `digseg.pipelines.model_folder`,
        refused if its trained weights hold a non-finite value; `dtype` and `torch_dtype` both work."""
        dtype, torch_dtype = kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None)  # the latter: deprecated
        kwargs["dtype"] = dtype or torch_dtype
        for refused in ("custom_pipeline", "trust_remote_code"):
            if kwargs.get(refused):
                raise DigsegError(f"{refused}={kwargs[refused]!r}: digseg runs no code from a model folder")
        where = str(pretrained_model_name_or_path)
        path = Path(where).expanduser()
        try:
            if hub_id_or_none(where) is None:  # a local folder
                if not path.is_dir():
                    raise DigsegError(f"model folder not found: {path}")
                if not (path / "model_index.json").is_file():
                    raise DigsegError(f"{path} is not a DiGSeg model folder: model_index.json is missing")
                where = str(path)
                check_model_folder(path, cls, where)
            else:
                path = cls._hub_snapshot(where, kwargs)
                check_model_folder(path, cls, f"{where} (snapshot {path})")
            pipe = super().from_pretrained(str(path), **kwargs)
        except (OSError, ValueError) as exc:
            raise DigsegError(f"cannot load DiGSeg model {where}: {first_line(exc)}") from exc
        check_finite(where, {name: getattr(pipe, name, None) for name in TRAINED_COMPONENTS})
        return pipe

    @classmethod
    def _hub_snapshot(cls, repo_id: str, kwargs: dict) -> Path:
        """The local snapshot of a hub model (diffusers' `download`), once its model_index.json alone is checked."""
        from huggingface_hub import hf_hub_download

        hub = {k: kwargs[k] for k in ("cache_dir", "force_download", "local_files_only", "token", "revision")
               if k in kwargs}
        check_hub_id(repo_id, "DiGSeg model", cls.config_name, "a local DiGSeg model folder",
                     **{k: v for k, v in hub.items() if k != "force_download"})
        index = hf_hub_download(repo_id, cls.config_name, **hub)
        check_model_index(json.loads(Path(index).read_text()), repo_id, cls)
        files = {k: kwargs[k] for k in ("variant", "use_safetensors") if k in kwargs}
        return Path(cls.download(repo_id, **hub, **files))

    def save_pretrained(self, save_directory: str | Path, *args, model_card: dict | None = None, **kwargs) -> None:
        """diffusers' `save_pretrained` plus the model card README.md (this model's facts and `model_card`'s)."""
        if has_lora(self.unet):  # peft's layers would write keys no plain model has
            raise DigsegError(f"save_pretrained({save_directory}): this pipeline has LoRA adapters loaded; "
                              "fuse_adapter(folder) writes a plain model folder of the active one")
        super().save_pretrained(save_directory, *args, **kwargs)
        write_model_card(save_directory, {**(model_card or {}), "model": model_facts(self)})

    def enable_speedups(self, channels_last: bool = True, compile: bool = False,
                        compile_mode: str | None = None) -> "DiGSegPipeline":
        """Channels-last U-Net, VAE and light decoder and, with `compile`, `torch.compile` of them. Returns self."""
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
            mask_decoder = mask_decoder.to(self.device, self.unet.dtype).eval().requires_grad_(False)
        self.register_modules(mask_decoder=mask_decoder)

    def decode_masks(self, latents: torch.Tensor, mask_decoder: str = "auto") -> torch.Tensor:
        """Mask latents [M, C, h, w] -> mask images [M, 3, H, W] (float32), by the decoder `mask_decoder` chooses."""
        light = self.mask_decoder
        if not uses_light_decoder(mask_decoder, self.config, light is not None):
            return decode_latents(self.vae, latents).float()
        return light(latents.to(light.dtype, memory_format=torch.channels_last)).float()

    def set_class_names(self, class_names: Sequence[str] | None) -> None:
        """Change the closed class set (palette mode) of this model, e.g. before training on a new dataset."""
        names = list(class_names) if class_names else None
        self.register_to_config(class_names=names)
        self.palette_codec = MaskCodec("palette", len(names)) if names and len(names) >= 2 else None

    @property
    def has_light_decoder(self) -> bool:
        return self.mask_decoder is not None

    to_images, resize_image = staticmethod(to_image_list), staticmethod(functools.partial(resize, antialias=True))

    @property
    def pad_multiple(self) -> int:
        return vae_scale_factor(self.vae) * vae_scale_factor(self.unet)  # latent size, then U-Net levels

    def runtime_info(self, num_processes: int = 1) -> dict:
        """What an output records about where this pipeline runs (`digseg.devices.runtime_info`)."""
        return runtime_info(self.device, self.dtype, num_processes)

    def query_states(self, table: Sequence[Sequence[str]]) -> torch.Tensor:
        """Encoder features [Q, L, D] of Q queries, each the mean over its prompt variants (projections are affine)."""
        sizes = [len(variants) for variants in table]
        states = self.prompt_encoder.encode([p for variants in table for p in variants])  # [sum(sizes), L, D]
        states = states.to(self.unet.device, self.text_pathway.dtype)
        if max(sizes) == 1:
            return states
        return torch.stack([chunk.mean(0) for chunk in states.split(sizes)])

    @torch.no_grad()
    def _segment_images(self, images, sized, grids, queries, states, settings, generator, noise):
        """`SegmentationCall._segment_images`, by groups of consecutive images whose views share a shape."""
        views = [make_views(resized, boxes, self.pad_multiple, settings.global_view, settings.flip)
                 for resized, boxes in zip(sized, grids)]
        channels, f = self.vae.config.latent_channels, vae_scale_factor(self.vae)
        device, dtype, one_step = self.unet.device, self.unet.dtype, self.config.objective == "one-step"
        results, uncertainty = [], []
        groups = group_views(views, max(1, settings.batch_size))
        for group in self.progress_bar(groups) if settings.show_progress_bar else groups:
            pixels = torch.cat([views[i].pixels for i in group])  # [V, 3, h, w]
            noise_v = torch.cat([torch.as_tensor(view_noise(  # one-step: zeros (top-k's relevance pass too)
                i, views[i].boxes, [s // f for s in views[i].pixels.shape[-2:]], channels, settings, one_step, noise,
                generator, lambda shape, gen: randn_tensor(shape, generator=gen, device=device, dtype=dtype)))
                for i in group])  # [V, E, 4, h/f, w/f]
            ids = [queries.query_ids[i] for i in group for _ in range(len(views[i].pixels))]
            probs, unc, kept = self._segment_batch(pixels, ids, states, noise_v, settings)  # [V, K, h, w], [V, h, w]
            start = 0
            for i in group:
                part = slice(start, start + len(views[i].pixels))
                start = part.stop
                size = tuple(images[i].shape[-2:])
                excluded = None if kept is None else ~kept[part].any(dim=0).cpu()  # pruned in every view
                results.append(native_outputs(combine_views(views[i], probs[part]).cpu(), size, queries.mode,
                                              settings.threshold, settings.no_class_threshold, excluded,
                                              settings.max_probability_classes))
                if unc is not None:
                    uncertainty.append(resize(combine_views(views[i], unc[part, None]).cpu(), size)[0])
        if settings.output_type == "np":
            results = [tuple(t.numpy() for t in result) for result in results]
            return results, [u.numpy() for u in uncertainty], np.stack
        return results, uncertainty, torch.stack
