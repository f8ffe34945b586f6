"""Backbone loading, conv_in widening and the text pathway."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel

from digseg.errors import DigsegError
from digseg.models.digseg_model import load_backbone, widen_conv_in
from digseg.models.text import CLIPPromptEncoder, TextPathway, unet_forward_with_text, unet_level_of
from digseg.models.tiny import tiny_unet


def test_widen_conv_in_preserves_pretrained_output():
    unet = tiny_unet(seed=3).eval()
    z = torch.randn(2, 4, 16, 16)
    text = torch.randn(2, 7, 32)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        before = unet(z, t, encoder_hidden_states=text).sample
        old_weight = unet.conv_in.weight.clone()
        widen_conv_in(unet)
        after = unet(torch.cat([z, z], dim=1), t, encoder_hidden_states=text).sample
    assert unet.conv_in.in_channels == 8 and unet.config.in_channels == 8
    torch.testing.assert_close(unet.conv_in.weight[:, :4], old_weight / 2)
    torch.testing.assert_close(unet.conv_in.weight[:, 4:], old_weight / 2)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_diffusers_stable_diffusion_folder_loads_as_backbone(tiny_backbone, tiny_pipe):
    index = json.loads((tiny_backbone / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"  # written by diffusers itself
    backbone = load_backbone(tiny_backbone)
    assert isinstance(backbone.unet, UNet2DConditionModel) and backbone.unet.config.in_channels == 4
    assert isinstance(backbone.vae, AutoencoderKL) and isinstance(backbone.text_encoder, CLIPTextModel)
    assert tiny_pipe.unet.config.in_channels == 8
    assert tiny_pipe.scheduler.config.timestep_spacing == "trailing"
    assert tiny_pipe.scheduler.config.prediction_type == "sample"
    assert not any(p.requires_grad for p in tiny_pipe.vae.parameters())
    assert not any(p.requires_grad for p in tiny_pipe.text_encoder.parameters())


def test_step_zero_reproduces_pretrained_unet(tiny_backbone, tiny_pipe):
    """Identity projections + widened conv_in: DiGSeg at step 0 computes what the pretrained U-Net does."""
    original = load_backbone(tiny_backbone).unet.eval()
    prompts = ["a photo of a circle", "square"]
    raw = tiny_pipe.prompt_encoder.encode(prompts)  # [2, L, D]
    z = torch.randn(2, 4, 16, 16)
    t = torch.tensor([999, 250])
    with torch.no_grad():
        expected = original(z, t, encoder_hidden_states=raw).sample
        levels = tiny_pipe.text_pathway(tiny_pipe.query_states([[p] for p in prompts]))
        got = unet_forward_with_text(tiny_pipe.unet, tiny_pipe.level_context, torch.cat([z, z], 1), t, levels)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_text_pathway_routes_each_level(tiny_pipe):
    """Changing one level's projection changes the output; every cross-attention layer has a level."""
    n = len(tiny_pipe.unet.config.block_out_channels)
    levels = tiny_pipe.text_pathway(tiny_pipe.query_states([["circle"], ["circle"], ["triangle"]]))
    assert len(levels) == n and all(lv.shape == (3, 32, 32) for lv in levels)
    cross = [k for k in tiny_pipe.unet.attn_processors if ".attn2." in k]
    assert {unet_level_of(k, n) for k in cross} == set(range(n))
    z = torch.randn(1, 8, 16, 16)
    with torch.no_grad():
        base = unet_forward_with_text(tiny_pipe.unet, tiny_pipe.level_context, z, 999, [lv[:1] for lv in levels])
        for level in range(n):
            changed = [lv[:1] * (3.0 if i == level else 1.0) for i, lv in enumerate(levels)]
            out = unet_forward_with_text(tiny_pipe.unet, tiny_pipe.level_context, z, 999, changed)
            assert not torch.allclose(out, base), f"level {level} does not reach the U-Net"


def test_text_pathway_other_encoder_width():
    pathway = TextPathway(encoder_dim=16, cross_attention_dim=32, num_levels=3)
    states = torch.randn(2, 5, 16)
    levels = pathway(states)
    assert [lv.shape for lv in levels] == [torch.Size([2, 5, 32])] * 3
    torch.testing.assert_close(levels[0][..., :16], states)  # shared rectangular identity
    assert torch.count_nonzero(levels[2][..., 16:]) == 0


def test_prompt_embeddings_are_cached(tiny_pipe):
    encoder: CLIPPromptEncoder = tiny_pipe.prompt_encoder
    encoder.clear_cache()
    calls = []
    hook = encoder.text_encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        first = encoder.encode(["circle", "square", "circle"])
        second = encoder.encode(["square", "circle"])
    finally:
        hook.remove()
    assert calls == [2]  # two distinct prompts, encoded once in one batch
    torch.testing.assert_close(second[0], first[1])
    with pytest.raises(DigsegError, match="empty prompt"):
        encoder.encode(["  "])


def test_missing_or_incomplete_backbone_folder(tmp_path):
    with pytest.raises(DigsegError, match="model folder not found: .*nope"):
        load_backbone(tmp_path / "nope")
    (tmp_path / "partial" / "unet").mkdir(parents=True)
    with pytest.raises(DigsegError, match="missing vae/, text_encoder/, tokenizer/, scheduler/"):
        load_backbone(tmp_path / "partial")
