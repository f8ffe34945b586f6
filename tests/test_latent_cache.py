"""`digseg cache-latents`: latents written once, then training reads them and never runs the VAE."""

from __future__ import annotations

import pytest
import torch

from digseg import DiGSegPipeline
from digseg.cli import main
from digseg.data.synthetic import SYNTHETIC_CLASSES, SyntheticScenes
from digseg.errors import DigsegError
from training_helpers import train_config, trainer
from digseg.training.latent_cache import LatentCache


def _train(backbone, out, **extra):
    pipe = DiGSegPipeline.from_backbone(backbone, class_names=list(SYNTHETIC_CLASSES))
    config = train_config(pretrained=str(backbone), output_dir=str(out), max_steps=4, batch_size=4, learning_rate=1e-3,
                         lr_warmup_steps=1, checkpoint_every=100, seed=0, num_scenes=12, resolution=64,
                         class_names=list(SYNTHETIC_CLASSES), sample_every=0, **extra)  # no sample previews:
    calls = []  # they are inference and would run the VAE
    hook = pipe.vae.encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        trained = trainer(config, pipe, SyntheticScenes(12, seed=0), show_progress=False).train()
    finally:
        hook.remove()
    return trained, len(calls)


def test_cache_latents_then_train_without_the_vae(tiny_backbone, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["cache-latents", "--pretrained", str(tiny_backbone), "--dataset", "synthetic", "--resolution", "64",
                 "--num-scenes", "12", "--cache", str(cache), "--no-augmentation"]) == 0
    assert (cache / "index.json").is_file() and list(cache.glob("shard-*.safetensors"))
    cached, encoder_calls = _train(tiny_backbone, tmp_path / "a", latent_cache=str(cache))
    assert encoder_calls == 0
    plain, plain_calls = _train(tiny_backbone, tmp_path / "b")
    assert plain_calls > 0
    for (name, a), (_, b) in zip(cached.unet.state_dict().items(), plain.unet.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)  # same trajectory, no VAE


def test_cache_is_refused_for_another_vae_or_resolution(tiny_backbone, tmp_path, capsys):
    cache = tmp_path / "cache"
    args = ["cache-latents", "--pretrained", str(tiny_backbone), "--dataset", "synthetic", "--resolution", "64",
            "--num-scenes", "4", "--cache", str(cache)]
    assert main(args) == 2  # augmented samples are never the same twice: nothing to cache
    assert "add --no-augmentation" in capsys.readouterr().err
    assert main(args + ["--no-augmentation"]) == 0
    pipe = DiGSegPipeline.from_backbone(tiny_backbone, class_names=list(SYNTHETIC_CLASSES))
    with pytest.raises(DigsegError, match="resolution 64, training uses 32"):
        LatentCache(cache, list(SYNTHETIC_CLASSES), pipe.vae, 32)
    with torch.no_grad():
        pipe.vae.encoder.conv_in.weight.add_(1.0)
    with pytest.raises(DigsegError, match="another VAE"):
        LatentCache(cache, list(SYNTHETIC_CLASSES), pipe.vae, 64)
    with pytest.raises(DigsegError, match="not a latent cache"):
        LatentCache(tmp_path, list(SYNTHETIC_CLASSES), pipe.vae, 64)
