"""Backbones as users download them, in folders written by diffusers' own save_pretrained (tiny random weights):
SD 1.x, SD 2.x (epsilon and v), SDXL, an fp16-only download and a two-variant folder each train, save, reload
bit-identically and predict; SDXL's step 0 is the pretrained SDXL U-Net; one-step and the light decoder run on SDXL;
layouts digseg cannot use are refused in one line."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from digseg import DiGSegPipeline
from digseg.cli import main
from digseg.data.synthetic import SYNTHETIC_CLASSES, SyntheticScenes, save_scenes_as_folder
from digseg.errors import DigsegError
from digseg.models.backbone_layout import backbone_record, weight_variants
from digseg.models.digseg_model import load_backbone
from digseg.models.text import TextPathway
from digseg.models.tiny import save_tiny_backbone, save_tiny_sdxl_backbone, tiny_vae
from digseg.training.batches import LatentBatcher, step_generator
from digseg.training.mask_decoder import fit_light_mask_decoder
from digseg.training.run import build_run
from digseg.training.trainer import diffusion_loss
from training_helpers import max_weight_diff, miou_by_hand, pipe_weights, train_config

# layout name -> (builder, keyword arguments, the variant a run is asked for)
LAYOUTS = {
    "sd1": (save_tiny_backbone, {"family": "sd1"}, None),
    "sd2-base": (save_tiny_backbone, {"family": "sd2"}, None),
    "sd2-v": (save_tiny_backbone, {"family": "sd2-v"}, None),
    "sdxl": (save_tiny_sdxl_backbone, {}, None),
    "fp16-only": (save_tiny_sdxl_backbone, {"variants": ("fp16",)}, None),  # found without being asked
    "two-variants": (save_tiny_backbone, {"family": "sd2-v", "variants": (None, "fp16")}, "fp16"),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Each layout's folder, written on first use."""
    root = tmp_path_factory.mktemp("layouts")
    built: dict[str, Path] = {}

    def folder(name: str) -> Path:
        if name not in built:
            build, kwargs, _ = LAYOUTS[name]
            built[name] = build(root / name, seed=0, **kwargs)
        return built[name]

    return folder


def _fresh_memory(pipe):
    """The same weights in new buffers, and no cached prompts. With bit-identical weights, a trained pipeline's
    outputs and its reloaded copy's can differ by float rounding (~1e-6): CPU kernels' results depend on the
    alignment of the buffers (the optimizer's, or those loaded from safetensors files)."""
    with torch.no_grad():
        for module in pipe.components.values():
            for param in module.parameters() if isinstance(module, torch.nn.Module) else ():
                param.data = param.data.clone()
    pipe.prompt_encoder.clear_cache()
    return pipe


def _predict(pipe, image, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    return pipe(image, generator=torch.Generator().manual_seed(3), output_type="pt", **kwargs)


def _run_config(tmp_path, pretrained, **kwargs):
    base = dict(pretrained=str(pretrained), output_dir=str(tmp_path / "run"), max_steps=2, batch_size=2,
                learning_rate=1e-3, lr_warmup_steps=0, log_with="none", num_scenes=4, resolution=32, seed=0)
    return train_config(**{**base, **kwargs})


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_trains_saves_reloads_and_predicts(layout, folders, tmp_path, caplog):
    folder = folders(layout)
    variant = LAYOUTS[layout][2]
    with caplog.at_level(logging.WARNING, logger="digseg.models"):
        run = build_run(_run_config(tmp_path, folder, variant=variant), show_progress=False)
    trained = run.train()
    saved = tmp_path / "run"
    expected = "fp16" if layout in ("fp16-only", "two-variants") else None
    record = json.loads((saved / "model_index.json").read_text())["backbone"]
    assert record == {"pretrained": str(folder), "revision": None, "variant": expected}
    assert ("holds only the fp16 variant" in caplog.text) == (layout == "fp16-only")
    with safe_open(saved / "unet" / "diffusion_pytorch_model.safetensors", "pt") as f:  # float32 master weights
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
    reloaded = DiGSegPipeline.from_pretrained(saved)
    assert max_weight_diff(pipe_weights(trained), pipe_weights(reloaded)) == 0
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    a, b = _predict(_fresh_memory(trained), image, prompt="circle"), _predict(_fresh_memory(reloaded), image, prompt="circle")
    assert a.labels.shape == (1, 32, 32) and torch.equal(a.probabilities, b.probabilities)


def test_variant_and_dtype_of_the_loaded_weights(folders):
    two = folders("two-variants")
    assert weight_variants(two / "unet") == {None, "fp16"}
    plain = load_backbone(two).unet
    half = load_backbone(two, variant="fp16").unet
    assert plain.dtype == half.dtype == torch.float32  # loaded in float32 whatever the files' dtype
    w, w16 = plain.conv_in.weight, half.conv_in.weight
    assert torch.equal(w16, w.half().float()) and not torch.equal(w16, w)
    with pytest.raises(DigsegError, match="no 'bf16' variant weights in .*unet .*holds: fp16, plain"):
        load_backbone(two, variant="bf16")


def test_ambiguous_or_pickled_weights_are_named(folders, tmp_path):
    both = save_tiny_backbone(tmp_path / "fp16-bf16", variants=("fp16", "bf16"))
    with pytest.raises(DigsegError, match=r"no plain weights and no single variant .*unet: bf16, fp16.*model.variant"):
        load_backbone(both)
    assert load_backbone(both, variant="bf16").unet.dtype == torch.float32
    pickled = shutil.copytree(folders("sd1"), tmp_path / "pickled")
    for file in (pickled / "vae").glob("*.safetensors"):
        file.rename(file.with_suffix(".bin"))
    with pytest.raises(DigsegError, match="vae holds only pickled .bin weights"):
        load_backbone(pickled)


def test_cli_variant_flags_and_errors(folders, tmp_path, capsys):
    two = folders("two-variants")
    config = tmp_path / "quiet.yaml"
    config.write_text("run: {log_with: none}\n")
    args = ["train", "--config", str(config), "--dataset", "synthetic", "--cfg-options", "data.num_scenes=2", "--crop-size", "32",
            "--max-steps", "1", "--batch-size", "2", "--cfg-options", "data.augmentation=false", "--output", str(tmp_path / "run")]
    assert main(args + ["--pretrained", str(two), "--cfg-options", "model.variant=fp16", "model.revision=main"]) == 0
    record = json.loads((tmp_path / "run" / "model_index.json").read_text())["backbone"]
    assert record == {"pretrained": str(two), "revision": "main", "variant": "fp16"}
    capsys.readouterr()
    assert main(args + ["--pretrained", str(two), "--cfg-options", "model.variant=bf16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no 'bf16' variant weights")
    assert main(args + ["--pretrained", str(folders("sdxl")), "--cfg-options", f"model.text_encoder={two}"]) == 2
    assert "SDXL backbone is conditioned on its own two text encoders" in capsys.readouterr().err


def test_sdxl_step_zero_reproduces_the_pretrained_sdxl_unet(folders):
    """Against diffusers' own SDXL conditioning: encode_prompt's embeddings and pooled embedding, and the size ids
    of _get_add_time_ids, fed to the unmodified U-Net."""
    from diffusers import StableDiffusionXLPipeline

    folder = folders("sdxl")
    reference = StableDiffusionXLPipeline.from_pretrained(folder)
    pipe = DiGSegPipeline.from_backbone(folder)
    prompts = ["a photo of a circle", "square"]
    embeds, _, pooled, _ = reference.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False)
    time_ids = reference._get_add_time_ids((64, 64), (0, 0), (64, 64), embeds.dtype,
                                           text_encoder_projection_dim=reference.text_encoder_2.config.projection_dim)
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))  # a 64 px image's latent (VAE factor 4)
    t = torch.tensor([999, 250])
    with torch.no_grad():
        expected = reference.unet(z, t, encoder_hidden_states=embeds,
                                  added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids.repeat(2, 1)}).sample
        levels = pipe.text_pathway(pipe.query_states([[p] for p in prompts]))
        got = pipe.unet_prediction(pipe.unet, torch.cat([z, z], 1), t, levels)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert pipe.text_pathway.config.levels == [1]  # SDXL's first level has no cross-attention: no projection


def test_sdxl_every_trained_parameter_gets_a_gradient(folders):
    """What DDP needs: no trained parameter (projection of a level without cross-attention) is left out."""
    pipe = DiGSegPipeline.from_backbone(folders("sdxl"), class_names=list(SYNTHETIC_CLASSES))
    batcher = LatentBatcher(SyntheticScenes(2, size=32), list(SYNTHETIC_CLASSES), pipe.vae, "both", "{}", 0.1,
                            cache=False)
    batch = batcher.make_batch([0, 1], step_generator(0, 0))
    pipe.unet.requires_grad_(True)
    pipe.text_pathway.requires_grad_(True)
    diffusion_loss(pipe, pipe.unet, pipe.text_pathway, batch, step_generator(1, 0), 0.5).backward()
    missing = [n for n, p in [*pipe.unet.named_parameters(), *pipe.text_pathway.named_parameters()] if p.grad is None]
    assert missing == []


def test_sdxl_one_step_light_decoder_predict_and_eval(folders, tmp_path):
    pipe = DiGSegPipeline.from_backbone(folders("sdxl"), class_names=list(SYNTHETIC_CLASSES))
    pipe.set_progress_bar_config(disable=True)
    data = SyntheticScenes(4, size=32, seed=0)
    fit_light_mask_decoder(pipe, data, 32, block_channels=[16, 16, 16], steps=3, batch_size=4, show_progress=False)
    config = _run_config(tmp_path, "unused", objective="one-step", one_step_decoder="light", batch_size=4)
    trained = build_run(config, pipe=pipe, dataset=data, show_progress=False).train()
    run = tmp_path / "run"
    index = json.loads((run / "model_index.json").read_text())
    assert index["objective"] == "one-step" and index["one_step_decoder"] == "light"
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    reloaded = DiGSegPipeline.from_pretrained(run)
    with pytest.raises(DigsegError, match="is a DiGSeg model, not a Stable Diffusion backbone"):
        DiGSegPipeline.from_backbone(run)
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    a, b = _predict(_fresh_memory(trained), image), _predict(_fresh_memory(reloaded), image)  # palette: the model's classes
    assert torch.equal(a.probabilities, b.probabilities) and a.probabilities.shape[1] == len(SYNTHETIC_CLASSES)
    folder = save_scenes_as_folder(SyntheticScenes(2, size=32, seed=1), tmp_path / "data")
    assert main(["eval", "--model", str(run), "--dataset", "folder", "--data-root", str(folder), "--val-fraction",
                 "1", "--output", str(tmp_path / "eval")]) == 0
    reported = json.loads((tmp_path / "eval" / "metrics.json").read_text())["mIoU"]  # the score of the predictions it wrote
    assert reported == pytest.approx(miou_by_hand(tmp_path / "eval" / "predictions", folder / "masks", len(SYNTHETIC_CLASSES)))
    assert main(["predict", "--model", str(run), "--image", str(folder / "images"), "--classes", "circle,square",
                 "--top-k", "1", "--outputs", "labels", "--output", str(tmp_path / "pred")]) == 0
    assert len(list((tmp_path / "pred").glob("*.png"))) == 2


def _sd3_like_folder(path: Path) -> Path:
    """A DiT / MMDiT layout: a transformer/ (SD3Transformer2DModel, written by diffusers) instead of unet/."""
    from diffusers import SD3Transformer2DModel

    SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                          num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                          pooled_projection_dim=16, out_channels=4).save_pretrained(path / "transformer")
    tiny_vae().save_pretrained(path / "vae")
    (path / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "SD3Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}))
    return path


def _edited_unet(folders, tmp_path, **changes) -> Path:
    folder = shutil.copytree(folders("sd1"), tmp_path / "edited")
    config = folder / "unet" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **changes}))
    return folder


@pytest.mark.parametrize("make, message", [
    (lambda folders, tmp: _sd3_like_folder(tmp / "sd3"),
     r"transformer-based \(DiT / MMDiT\) .*StableDiffusion3Pipeline: SD3Transformer2DModel.* unet/ is missing"),
    (lambda folders, tmp: _edited_unet(folders, tmp, addition_embed_type="image"),
     r"added condition addition_embed_type='image' is not supported"),
    (lambda folders, tmp: _edited_unet(folders, tmp, in_channels=9), r"takes 9 input channels .*inpainting"),
    (lambda folders, tmp: _edited_unet(folders, tmp, class_embed_type="projection"), r"class_embed_type='projection'"),
], ids=["sd3-transformer", "image-added-condition", "inpainting", "class-labels"])
def test_unsupported_layouts_are_refused_in_one_line(make, message, folders, tmp_path, capsys):
    folder = make(folders, tmp_path)
    with pytest.raises(DigsegError, match=message):
        DiGSegPipeline.from_backbone(folder)
    assert main(["train", "--pretrained", str(folder), "--output", str(tmp_path / "run"), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]


def test_sdxl_folder_without_its_second_encoder_is_named(folders, tmp_path):
    folder = shutil.copytree(folders("sdxl"), tmp_path / "xl")
    shutil.rmtree(folder / "text_encoder_2")
    with pytest.raises(DigsegError, match="not a Stable Diffusion XL folder: missing text_encoder_2/"):
        load_backbone(folder)


def test_backbone_record_of_a_hub_cache_folder():
    sha = "1e128c8891e52218b74cde8f26dbfc701cb99d79"
    cached = f"/home/u/.cache/huggingface/hub/models--stabilityai--stable-diffusion-2-base/snapshots/{sha}"
    assert backbone_record(cached, None, "fp16") == {
        "pretrained": "stabilityai/stable-diffusion-2-base", "revision": sha, "variant": "fp16"}
    assert backbone_record("stabilityai/stable-diffusion-xl-base-1.0", "v1", None)["revision"] == "v1"


def test_text_pathway_keeps_the_saved_layout_of_earlier_models():
    """Models saved before `levels` / `pooled_dim` existed: same state-dict names, all levels projected."""
    pathway = TextPathway(encoder_dim=8, cross_attention_dim=8, num_levels=3)
    assert sorted(pathway.state_dict()) == [f"projections.{i}.{p}" for i in range(3) for p in ("bias", "weight")]
    states = torch.randn(2, 5, 8)
    assert all(torch.equal(level, states) for level in pathway(states))
