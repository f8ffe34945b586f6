"""The light mask decoder: shapes, saving with the pipeline, choosing it at inference, and that it learns."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from digseg import DiGSegPipeline
from digseg.cli import main
from digseg.data.synthetic import SYNTHETIC_CLASSES, SyntheticScenes
from digseg.errors import DigsegError
from digseg.pipelines.masks import MaskCodec
from digseg.models.mask_decoder import LightMaskDecoder, count_flops
from digseg.training.mask_decoder import fit_light_mask_decoder
from training_helpers import miou_by_hand


@pytest.mark.parametrize("factor, widths", [(4, (32, 16, 8)), (8, (32, 16, 8, 8))])
def test_decoder_upsamples_latents_to_images(factor, widths):
    decoder = LightMaskDecoder(latent_channels=4, upsample_factor=factor, block_channels=widths)
    out = decoder(torch.randn(2, 4, 5, 6))
    assert out.shape == (2, 3, 5 * factor, 6 * factor)


def test_decoder_rejects_bad_config():
    with pytest.raises(ValueError, match="power of 2"):
        LightMaskDecoder(upsample_factor=6)
    with pytest.raises(ValueError, match="needs 4 block_channels"):
        LightMaskDecoder(upsample_factor=8, block_channels=(32, 16))


def test_for_vae_matches_the_vae(tiny_pipe):
    decoder = LightMaskDecoder.for_vae(tiny_pipe.vae)
    assert decoder.config.upsample_factor == 4  # the tiny VAE downsamples by 4
    assert list(decoder.config.block_channels) == [128, 64, 32]
    assert decoder.config.latent_channels == tiny_pipe.vae.config.latent_channels


def test_count_flops_of_one_convolution():
    conv = nn.Conv2d(4, 8, 3, padding=1)
    assert count_flops(conv, torch.zeros(1, 4, 10, 10)) == pytest.approx(2 * 8 * 100 * 4 * 9 / 1e9)
    # the default decoder at 512 px is far below SD's VAE decoder (about 2,480 GFLOP)
    assert count_flops(LightMaskDecoder(), torch.zeros(1, 4, 64, 64)) < 25


class _White(nn.Module):
    """A stand-in decoder that paints every pixel white (binary foreground)."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.dtype = torch.float32

    def forward(self, latents):
        b, _, h, w = latents.shape
        return torch.ones(b, 3, h * self.factor, w * self.factor)


def test_mask_decoder_choice_at_inference(tiny_pipe):
    image = torch.rand(3, 64, 64)
    run = lambda **kw: tiny_pipe(image, prompt="circle", generator=torch.Generator().manual_seed(0), **kw)  # noqa: E731
    with pytest.raises(DigsegError, match="no light mask decoder"):
        run(mask_decoder="light")
    with pytest.raises(DigsegError, match="mask_decoder must be one of"):
        run(mask_decoder="tiny")
    by_vae = run().probabilities
    tiny_pipe.mask_decoder = _White(4)  # bypasses register_modules: inference only
    assert (run().labels == 1).all()  # "auto" takes the light decoder when there is one
    assert (run(mask_decoder="light").labels == 1).all()
    assert torch.equal(torch.as_tensor(run(mask_decoder="vae").probabilities), torch.as_tensor(by_vae))


def test_saved_with_the_pipeline(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "plain")
    index = json.loads((tmp_path / "plain" / "model_index.json").read_text())  # custom parts: by defining module
    assert index["mask_decoder"] == [None, None] and index["text_pathway"] == ["digseg.models.text", "TextPathway"]
    assert DiGSegPipeline.from_pretrained(tmp_path / "plain").mask_decoder is None  # a model without one loads
    decoder = LightMaskDecoder.for_vae(tiny_pipe.vae, (16, 8, 8))
    tiny_pipe.set_mask_decoder(decoder)
    tiny_pipe.save_pretrained(tmp_path / "light")
    assert (tmp_path / "light" / "mask_decoder" / "diffusion_pytorch_model.safetensors").is_file()
    index = json.loads((tmp_path / "light" / "model_index.json").read_text())
    assert index["mask_decoder"] == ["digseg.models.mask_decoder", "LightMaskDecoder"]
    loaded = DiGSegPipeline.from_pretrained(tmp_path / "light").mask_decoder
    assert isinstance(loaded, LightMaskDecoder)
    for key, value in decoder.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_fit_learns_to_read_masks_from_vae_latents(tiny_pipe):
    """Trained on the (random) tiny VAE's latents of rendered masks, it reads held-out masks back."""
    train, held_out = SyntheticScenes(48, seed=0), SyntheticScenes(8, seed=1)
    decoder, losses, data = fit_light_mask_decoder(
        tiny_pipe, train, 64, block_channels=(32, 32, 16), steps=150, batch_size=16, learning_rate=3e-3,
        latent_noise=0.0, show_progress=False)
    assert len(data) > 2 * len(train) and not data.skipped  # palette + each present class + empty
    assert sum(losses[-20:]) / 20 < 0.5 * sum(losses[:20]) / 20
    assert tiny_pipe.mask_decoder is decoder
    codec = MaskCodec("palette", len(train.class_names))
    labels = torch.stack([held_out[i]["label"] for i in range(len(held_out))])  # [8, 64, 64]
    with torch.no_grad():
        latents = tiny_pipe.vae.encode(codec.encode(labels)).latent_dist.mean * tiny_pipe.vae.config.scaling_factor
        read = codec.decode(tiny_pipe.decode_masks(latents, "light")).argmax(dim=1)
    accuracy = (read == labels).float().mean().item()
    majority = max((labels == c).float().mean().item() for c in range(codec.num_classes))  # about 0.81
    assert accuracy > majority + 0.03, (accuracy, majority)  # 0.86 here: shapes, not only background
    assert len(torch.unique(read)) >= 3


def test_cli_trains_in_place_and_predict_chooses(tiny_pipe, tmp_path, capsys):
    model = tmp_path / "model"
    tiny_pipe.save_pretrained(model)
    unet = (model / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert main(["train-mask-decoder", "--model", str(model), "--output", str(model), "--max-steps", "3",
                 "--batch-size", "4", "--num-scenes", "6", "--device", "cpu", "--dtype", "bf16"]) == 0
    assert "light mask decoder" in capsys.readouterr().out
    loaded = DiGSegPipeline.from_pretrained(model)
    assert isinstance(loaded.mask_decoder, LightMaskDecoder)
    # run in bf16, the model's own files stay as they were and the decoder is saved as trained, in fp32
    assert (model / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == unet
    assert loaded.mask_decoder.dtype == torch.float32 and loaded.unet.dtype == torch.float32
    image = tmp_path / "in.png"
    from PIL import Image

    Image.fromarray((torch.rand(64, 64, 3) * 255).byte().numpy()).save(image)
    for choice in ("vae", "light"):
        assert main(["predict", "--model", str(model), "--image", str(image), "--output", str(tmp_path / choice),
                     "--no-progress", "--mask-decoder", choice]) == 0
        settings = json.loads((tmp_path / choice / "in_summary.json").read_text())
        assert settings["settings"]["mask_decoder"] == choice


def test_target_vae_imitates_the_vae_decoder(tiny_pipe):
    """--target vae: after training, the light decoder's output is closer to the VAE decoder's than at the start."""
    scenes = SyntheticScenes(8, seed=0)
    codec = MaskCodec("palette", len(scenes.class_names))
    labels = torch.stack([scenes[i]["label"] for i in range(len(scenes))])  # [8, 64, 64]
    vae = tiny_pipe.vae
    with torch.no_grad():
        z = vae.encode(codec.encode(labels)).latent_dist.mean * vae.config.scaling_factor  # [8, 4, 16, 16]
        goal = vae.decode(z / vae.config.scaling_factor).sample  # [8, 3, 64, 64]
        torch.manual_seed(0)  # fit_light_mask_decoder initialises with its seed (0): the same start
        before = (LightMaskDecoder.for_vae(vae, (16, 16, 8))(z) - goal).pow(2).mean().item()
    distance = {}
    for target in ("mask", "vae"):
        fit_light_mask_decoder(tiny_pipe, scenes, 64, block_channels=(16, 16, 8), steps=60, batch_size=8,
                               learning_rate=3e-3, latent_noise=0.0, target=target, show_progress=False)
        with torch.no_grad():
            distance[target] = (tiny_pipe.decode_masks(z, "light") - goal).pow(2).mean().item()
    assert distance["vae"] < 0.8 * before, (distance, before)  # 0.08 vs 0.12 here
    assert distance["vae"] < 0.3 * distance["mask"], distance  # the mask target learns the render instead: 0.61


def test_cli_rejects_bad_widths(tiny_pipe, tmp_path, capsys):
    model = tmp_path / "model"
    tiny_pipe.save_pretrained(model)
    base = ["train-mask-decoder", "--model", str(model), "--output", str(model), "--max-steps", "1", "--num-scenes", "2"]
    assert main(base + ["--widths", "a,b"]) == 2
    assert "--widths must be comma-separated integers" in capsys.readouterr().err
    assert main(base + ["--widths", "16,8"]) == 2  # the tiny VAE downsamples by 4: three widths
    assert "needs 3 block_channels" in capsys.readouterr().err
    assert not (model / "mask_decoder").exists()


def test_cli_eval_chooses_the_decoder(tiny_pipe, tmp_path, capsys):
    from digseg.data.synthetic import save_scenes_as_folder

    data = save_scenes_as_folder(SyntheticScenes(3, size=64, seed=3), tmp_path / "data")
    plain, light = tmp_path / "plain", tmp_path / "light"
    tiny_pipe.save_pretrained(plain)
    run = lambda model, choice: main(["eval", "--dataset", "folder", "--data-root", str(data), "--model", str(model),  # noqa: E731
                                      "--val-fraction", "1", "--mask-decoder", choice,
                                      "--output", str(tmp_path / f"{model.name}-{choice}")])
    assert run(plain, "light") == 2
    assert "no light mask decoder" in capsys.readouterr().err
    assert main(["train-mask-decoder", "--model", str(plain), "--output", str(light), "--max-steps", "2",
                 "--batch-size", "2", "--num-scenes", "4", "--widths", "16,8,8"]) == 0
    assert run(plain, "auto") == run(light, "vae") == run(light, "light") == 0
    metrics = {name: json.loads((tmp_path / name / "metrics.json").read_text())
               for name in ("plain-auto", "light-vae", "light-light")}
    assert metrics["light-vae"]["mIoU"] == metrics["plain-auto"]["mIoU"]  # --mask-decoder vae: the VAE path
    for name in metrics:  # each the score of the predictions it wrote
        by_hand = miou_by_hand(tmp_path / name / "predictions", data / "masks", len(SYNTHETIC_CLASSES))
        assert metrics[name]["mIoU"] == pytest.approx(by_hand), name
    pngs = lambda name: [p.read_bytes() for p in sorted((tmp_path / name / "predictions").glob("*.png"))]  # noqa: E731
    assert pngs("light-vae") == pngs("plain-auto") and pngs("light-light") != pngs("light-vae")
