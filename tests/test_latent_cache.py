"""`digseg cache-latents`: latents written once, then training reads them and never runs the VAE."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from digseg import DiGSegPipeline
from digseg.cli import main
from digseg.data.synthetic import SYNTHETIC_CLASSES, SyntheticScenes
from digseg.errors import DigsegError
from training_helpers import train_config, trainer
from digseg.training.batches import EMPTY, IMAGE, PALETTE, LatentBatcher, LatentKey
from digseg.training.latent_cache import LatentCache, build_latent_cache


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
    assert main(["cache-latents", "--pretrained", str(tiny_backbone), "--dataset", "synthetic", "--crop-size", "64",
                 "--cfg-options", "data.num_scenes=12", "--output", str(cache), "--cfg-options", "data.augmentation=false"]) == 0
    assert (cache / "index.json").is_file() and list(cache.glob("shard-*.safetensors"))
    cached, encoder_calls = _train(tiny_backbone, tmp_path / "a", latent_cache=str(cache))
    assert encoder_calls == 0
    plain, plain_calls = _train(tiny_backbone, tmp_path / "b")
    assert plain_calls > 0
    for (name, a), (_, b) in zip(cached.unet.state_dict().items(), plain.unet.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)  # same trajectory, no VAE


def test_cache_is_refused_for_another_vae_or_resolution(tiny_backbone, tmp_path, capsys):
    cache = tmp_path / "cache"
    args = ["cache-latents", "--pretrained", str(tiny_backbone), "--dataset", "synthetic", "--crop-size", "64",
            "--cfg-options", "data.num_scenes=4", "--output", str(cache)]
    assert main(args) == 2  # augmented samples are never the same twice: nothing to cache
    assert "add --cfg-options data.augmentation=false" in capsys.readouterr().err
    assert main(args + ["--cfg-options", "data.augmentation=false"]) == 0
    pipe = DiGSegPipeline.from_backbone(tiny_backbone, class_names=list(SYNTHETIC_CLASSES))
    with pytest.raises(DigsegError, match="resolution 64, training uses 32"):
        LatentCache(cache, list(SYNTHETIC_CLASSES), pipe.vae, 32)
    with torch.no_grad():
        pipe.vae.encoder.conv_in.weight.add_(1.0)
    with pytest.raises(DigsegError, match="another VAE"):
        LatentCache(cache, list(SYNTHETIC_CLASSES), pipe.vae, 64)
    with pytest.raises(DigsegError, match="not a latent cache"):
        LatentCache(tmp_path, list(SYNTHETIC_CLASSES), pipe.vae, 64)


def test_latent_keys_name_the_shard_tensors_as_before(tiny_pipe, tmp_path):
    """Each LatentKey reads the tensor that `cache-latents` wrote under its name, and caches written before the
    keys were typed ("<i>.image", "<i>.palette", "<i>.class<c>", "<i>.empty", "<i>.keep") still read."""
    data = SyntheticScenes(2, seed=0)
    cache = build_latent_cache(data, list(SYNTHETIC_CLASSES), tiny_pipe.vae, tmp_path / "new", 64, show_progress=False)
    store = LatentCache(cache, list(SYNTHETIC_CLASSES), tiny_pipe.vae, 64)
    batcher = LatentBatcher(data, list(SYNTHETIC_CLASSES), tiny_pipe.vae, "both", "{}", 0.0, cache=False)
    for i in range(2):
        entry = batcher.encode_all(i)
        assert LatentKey.of_class(entry["present"][-1]) in entry["latents"]  # a class latent, not only the fixed ones
        for key, latent in entry["latents"].items():
            torch.testing.assert_close(store.get(i, key), latent, rtol=0, atol=0)
        assert store.info(i)[0] == entry["present"] and torch.equal(store.info(i)[1], entry["keep"])
    assert store.get(0, LatentKey.of_class(99)) is None and store.get(7, PALETTE) is None

    old = tmp_path / "old"  # a cache in the shard format, written by hand
    old.mkdir()
    names = ["0.image", "0.palette", "0.class2", "0.empty"]
    tensors = {name: torch.full((4, 8, 8), float(k)) for k, name in enumerate(names)}
    save_file({**tensors, "0.keep": torch.ones(1, 8, 8)}, str(old / "shard-00000.safetensors"))
    index = json.loads((cache / "index.json").read_text())
    index["samples"] = {"0": {"shard": 0, "present": [0, 2]}}
    (old / "index.json").write_text(json.dumps(index))
    store = LatentCache(old, list(SYNTHETIC_CLASSES), tiny_pipe.vae, 64)
    for k, key in enumerate([IMAGE, PALETTE, LatentKey.of_class(2), EMPTY]):
        assert store.get(0, key).unique().tolist() == [float(k)]
    assert store.info(0)[0] == [0, 2] and store.info(0)[1].shape == (1, 8, 8)


def test_latent_keys_compare_by_value():
    assert LatentKey.of_class(3) == LatentKey("class", 3) != LatentKey.of_class(4)
    assert len({IMAGE, PALETTE, EMPTY, LatentKey("empty")}) == 3  # hashable: dict keys of the latent caches
