"""Training's memory levers from the command line: every boolean of the config turns either way (--x / --no-x),
the EMA kept off the accelerator (--ema-device cpu; its resume is tested in test_training.py), and the one-GPU
recipe for a user's own data."""

from __future__ import annotations

import json
from pathlib import Path

from digseg.cli import _train_config, main
from digseg.cli_parser import build_parser
from digseg.data.synthetic import SyntheticScenes, save_scenes_as_folder

REPO = Path(__file__).resolve().parents[1]


def _config(*argv: str):
    return _train_config(build_parser().parse_args(["train", *argv]))


def test_every_boolean_turns_a_config_setting_either_way(tmp_path):
    base = tmp_path / "on.yaml"
    base.write_text("optim: {use_ema: true, gradient_checkpointing: true}\ndata: {cache_latents: true, augmentation: false}\n")
    config = _config("--config", str(base))
    assert config.optim.use_ema and config.optim.gradient_checkpointing and config.data.cache_latents
    off = _config("--config", str(base), "--no-use-ema", "--no-gradient-checkpointing", "--no-cache-latents",
                  "--augmentation")
    assert not off.optim.use_ema and not off.optim.gradient_checkpointing and not off.data.cache_latents
    assert off.data.augmentation is True  # the dataset's preset again
    assert _config("--no-augmentation").data.augmentation is False
    assert _config("--use-ema", "--ema-device", "cpu").optim.ema_device == "cpu"
    # a flag left off keeps the file's value
    assert _config("--config", str(base), "--no-use-ema").optim.gradient_checkpointing


def test_the_one_gpu_recipe_for_own_data_trains_end_to_end(tiny_backbone, tmp_path):
    """configs/own_data_1gpu.yaml as the README runs it, with tiny sizes given on the command line."""
    data = save_scenes_as_folder(SyntheticScenes(8, size=32, seed=3), tmp_path / "my_data")
    out = tmp_path / "run"
    assert main(["train", "--config", str(REPO / "configs" / "own_data_1gpu.yaml"), "--pretrained", str(tiny_backbone),
                 "--data-root", str(data), "--output", str(out), "--resolution", "32", "--max-steps", "2",
                 "--batch-size", "2", "--gradient-accumulation-steps", "1", "--num-workers", "0"]) == 0
    config = (out / "config.yaml").read_text()
    for setting in ("ema_device: cpu", "gradient_checkpointing: true", "use_ema: true", "dataset: folder"):
        assert setting in config, setting
    assert "unet" in json.loads((out / "model_index.json").read_text())
    assert (out / "checkpoints" / "step-00000002").is_dir()
