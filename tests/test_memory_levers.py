"""Training's memory levers from the command line: every boolean of the config turns either way (--x / --no-x),
the EMA kept off the accelerator (optim.ema_device: cpu; its resume is tested in test_training.py), and the one-GPU
recipe for a user's own data."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from digseg.cli.commands import _train_config, main
from digseg.cli.parser import build_parser
from digseg.data.synthetic import SyntheticScenes, save_scenes_as_folder

REPO = Path(__file__).resolve().parents[1]


def _config(*argv: str):
    return _train_config(build_parser().parse_args(["train", *argv]))


def test_every_boolean_turns_a_config_setting_either_way(tmp_path):
    base = tmp_path / "on.yaml"
    base.write_text("optim: {use_ema: true, gradient_checkpointing: true}\ndata: {cache_latents: true, augmentation: false}\n")
    config = _config("--config", str(base))
    assert config.optim.use_ema and config.optim.gradient_checkpointing and config.data.cache_latents
    off = _config("--config", str(base), "--cfg-options", "optim.use_ema=false", "optim.gradient_checkpointing=false", "data.augmentation=true",
                  "data.cache_latents=false")
    assert not off.optim.use_ema and not off.optim.gradient_checkpointing and not off.data.cache_latents
    assert off.data.augmentation is True  # the dataset's preset again
    assert _config("--cfg-options", "data.augmentation=false").data.augmentation is False
    assert _config("--cfg-options", "optim.use_ema=true", "optim.ema_device=cpu").optim.ema_device == "cpu"
    # a flag left off keeps the file's value
    assert _config("--config", str(base), "--cfg-options", "optim.use_ema=false").optim.gradient_checkpointing


def test_the_one_gpu_recipe_for_own_data_trains_end_to_end(tiny_backbone, tmp_path):
    """configs/own_data_1gpu.yaml as the README runs it, with tiny sizes given on the command line."""
    data = save_scenes_as_folder(SyntheticScenes(8, size=32, seed=3), tmp_path / "my_data")
    out = tmp_path / "run"
    assert main(["train", "--config", str(REPO / "configs" / "own_data_1gpu.yaml"), "--pretrained", str(tiny_backbone),
                 "--data-root", str(data), "--output", str(out), "--crop-size", "32", "--max-steps", "2",
                 "--batch-size", "2", "--cfg-options", "optim.gradient_accumulation_steps=1", "data.num_workers=0"]) == 0
    config = (out / "config.yaml").read_text()
    for setting in ("ema_device: cpu", "gradient_checkpointing: true", "use_ema: true", "dataset: folder"):
        assert setting in config, setting
    assert "unet" in json.loads((out / "model_index.json").read_text())
    assert (out / "checkpoints" / "step-00000002").is_dir()


def _eight_bit_run(tiny_backbone, folder: Path, steps: int, resume: str | None = None):
    from digseg import DiGSegPipeline
    from digseg.data.synthetic import SYNTHETIC_CLASSES
    from training_helpers import train_config, trainer

    config = train_config(pretrained="unused", output_dir=str(folder), max_steps=steps, batch_size=4,
                          learning_rate=1e-3, lr_warmup_steps=0, lr_scheduler="constant", checkpoint_every=3,
                          log_every=1, seed=0, log_with="none", optimizer="adamw8bit", resolution=32)
    pipe = DiGSegPipeline.from_backbone(tiny_backbone, class_names=list(SYNTHETIC_CLASSES))
    return trainer(config, pipe, SyntheticScenes(4, size=32, seed=0), show_progress=False).train(resume=resume)


def test_8bit_adamw_trains_and_resumes_exactly(tiny_backbone, tmp_path, monkeypatch):
    """optim.optimizer adamw8bit (torchao): the loss falls on a few fixed scenes, the quantized moments go into the
    safetensors checkpoint as their inner tensors, and a resumed run ends with the uninterrupted run's weights."""
    import pytest

    pytest.importorskip("torchao.optim", reason='torchao is not installed (pip install -e ".[lowmem]")')
    # torchao compiles its step once per parameter shape: on a CPU with an empty compile cache that is about 90 s of
    # C++ builds and proves nothing about digseg's side, so the same quantized states are updated eagerly here
    monkeypatch.setattr(torch, "compile", lambda function, **options: function)
    full = _eight_bit_run(tiny_backbone, tmp_path / "full", 12)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert sum(losses[-4:]) < 0.8 * sum(losses[:4]), losses
    meta = json.loads((tmp_path / "full" / "checkpoints" / "step-00000012" / "trainer_state.json").read_text())
    assert any(info["class"].endswith("OptimState8bit") for info in meta["optimizer"]["subclasses"].values())

    _eight_bit_run(tiny_backbone, tmp_path / "part", 6)
    resumed = _eight_bit_run(tiny_backbone, tmp_path / "part", 12, resume="latest")
    for (name, a), b in zip(full.unet.state_dict().items(), resumed.unet.state_dict().values()):
        assert torch.equal(a, b), name
