"""Trainer: loss goes down, resume continues the same run, checkpoints are atomic, bad values are caught."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from digseg.data.synthetic import SYNTHETIC_CLASSES, SyntheticScenes
from digseg.errors import ConfigError, DigsegError
from digseg.training.batches import Batch, LatentBatcher, sample_indices, step_generator
from digseg.training.checkpoint import list_checkpoints, optimizer_from_flat, optimizer_to_flat, resolve_resume
from digseg.training.config import TrainConfig
from training_helpers import fresh_pipe, pipe_weights, train_config, trainer
from digseg.training.run import training_augmentation
from digseg.training.trainer import diffusion_loss


def trained_crop(config):
    return training_augmentation(config.data).crop_size


def _config(tmp_path, **kw):
    base = dict(pretrained="unused", output_dir=str(tmp_path / "run"), max_steps=6, batch_size=4, learning_rate=1e-3,
                lr_warmup_steps=2, checkpoint_every=3, keep_checkpoints=2, log_every=2, seed=0, log_with="none",
                class_names=list(SYNTHETIC_CLASSES))
    base.update(kw)
    return train_config(**base)


def _fixed_loss(pipe, batch):
    with torch.no_grad():
        return diffusion_loss(pipe, pipe.unet, pipe.text_pathway, batch, step_generator(123, 0), 0.5).item()


def test_few_training_steps_lower_the_loss(tiny_backbone, tmp_path):
    pipe = fresh_pipe(tiny_backbone)
    data = SyntheticScenes(8, seed=0)
    batcher = LatentBatcher(data, list(SYNTHETIC_CLASSES), pipe.vae, "both", "{}", 0.1, cache=True)
    batch = batcher.make_batch(list(range(8)), step_generator(0, 0))
    before = _fixed_loss(pipe, batch)
    config = _config(tmp_path, max_steps=25, batch_size=8, checkpoint_every=100, learning_rate=2e-3)
    trained = trainer(config, pipe, data, show_progress=False).train()
    after = _fixed_loss(trained, batch)
    assert after < 0.7 * before, (before, after)
    assert (tmp_path / "run" / "model_index.json").is_file()  # the run folder is a pipeline folder
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["optim"]["max_steps"] == 25 and saved["data"]["class_names"] == list(SYNTHETIC_CLASSES)
    # the model says what it was trained on: eval asks it that way, and it sees images at the training crop's size
    index = json.loads((tmp_path / "run" / "model_index.json").read_text())
    assert index["task"] == config.data.task == "both"
    assert index["default_processing_resolution"] == max(trained_crop(config)) != 512


@pytest.mark.parametrize("use_ema, ema_device", [(False, "accelerator"), (True, "accelerator"), (True, "cpu")])
def test_resume_continues_the_same_run(tiny_backbone, tmp_path, use_ema, ema_device):
    data = SyntheticScenes(10, size=32, seed=0)  # 32 px: exactness does not depend on the size
    config = _config(tmp_path / "a", use_ema=use_ema, gradient_accumulation_steps=2, ema_device=ema_device,
                     resolution=32)
    straight = pipe_weights(trainer(config, fresh_pipe(tiny_backbone), data, show_progress=False).train())
    steps = [int(p.name.split("-")[1]) for p in list_checkpoints(tmp_path / "a" / "run" / "checkpoints")]
    assert steps == [3, 6]

    # a second run folder holding only the step-3 checkpoint, as if the first run had died after it
    resumed_dir = tmp_path / "b" / "run"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "run" / "checkpoints" / "step-00000003", resumed_dir / "checkpoints" / "step-00000003")
    (resumed_dir / "checkpoints" / ".tmp-step-00000004-999").mkdir()  # an interrupted write: never read
    tr = trainer(_config(tmp_path / "b", use_ema=use_ema, gradient_accumulation_steps=2, ema_device=ema_device,
                         resolution=32), fresh_pipe(tiny_backbone), data, show_progress=False)
    if use_ema:  # the EMA copy lives where asked (on a GPU machine, "cpu" keeps it off the GPU between updates)
        assert {p.device.type for p in tr.ema.shadow_params} == {"cpu"}
    resumed = pipe_weights(tr.train(resume="latest"))
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, atol=1e-6, rtol=1e-5, msg=name)


def test_resume_latest_with_nothing_starts_fresh_and_bad_path_fails(tiny_backbone, tmp_path):
    assert resolve_resume("latest", tmp_path) is None
    incomplete = tmp_path / "checkpoints" / "step-00000005"
    incomplete.mkdir(parents=True)  # no trainer_state.json: incomplete, ignored
    assert resolve_resume("latest", tmp_path) is None
    with pytest.raises(DigsegError, match="not a complete checkpoint"):
        resolve_resume(str(incomplete), tmp_path)


def test_ignore_pixels_do_not_reach_the_loss(tiny_pipe):
    g = torch.Generator().manual_seed(0)
    z_img, z_mask = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 4, 16, 16, generator=g)
    keep = torch.ones(2, 1, 16, 16)
    keep[:, :, :8] = 0
    batch = Batch(z_img, z_mask, keep, ["circle", "square"])
    changed = z_mask.clone()
    changed[:, :, :8] += 5.0  # only where ignored
    with torch.no_grad():
        a = diffusion_loss(tiny_pipe, tiny_pipe.unet, tiny_pipe.text_pathway, batch, step_generator(1, 1), 1.0)
        batch.mask_latents = changed
        b = diffusion_loss(tiny_pipe, tiny_pipe.unet, tiny_pipe.text_pathway, batch, step_generator(1, 1), 1.0)
    torch.testing.assert_close(a, b)


def test_ignore_labels_give_zero_weight_cells(tiny_pipe):
    data = SyntheticScenes(2, seed=0)

    class WithIgnore(torch.utils.data.Dataset):
        class_names = data.class_names
        ignore_index = 255

        def __len__(self):
            return 2

        def __getitem__(self, i):
            sample = dict(data[i])
            sample["label"] = sample["label"].clone()
            sample["label"][:4, :4] = 255  # one 4x4 pixel block = one latent cell
            return sample

    batcher = LatentBatcher(WithIgnore(), list(SYNTHETIC_CLASSES), tiny_pipe.vae, "palette", "{}", 0.0, cache=True)
    batch = batcher.make_batch([0, 1], step_generator(0, 0))
    assert batch.keep.shape == (2, 1, 16, 16)
    assert batch.keep[:, 0, 0, 0].tolist() == [0.0, 0.0] and batch.keep.sum() == 2 * 255


def test_nan_loss_stops_with_a_clear_error(tiny_backbone, tmp_path):
    pipe = fresh_pipe(tiny_backbone)
    with torch.no_grad():
        pipe.unet.conv_out.bias.fill_(float("nan"))
    with pytest.raises(DigsegError, match="loss became nan at step 0"):
        trainer(_config(tmp_path), pipe, SyntheticScenes(4), show_progress=False).train()


def test_label_outside_class_range_is_named(tiny_pipe):
    data = SyntheticScenes(1)

    class Bad(torch.utils.data.Dataset):
        class_names = ["background", "circle"]

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return data[i]

    batcher = LatentBatcher(Bad(), ["background", "circle"], tiny_pipe.vae, "palette", "{}", 0.0, cache=False)
    with pytest.raises(DigsegError, match="scene_00000: label value [23] is outside the 2 classes"):
        batcher.make_batch([0], step_generator(0, 0))


def test_sample_indices_cover_epochs_deterministically():
    first = sample_indices(10, 4, 0, seed=0) + sample_indices(10, 4, 1, seed=0) + sample_indices(10, 4, 2, seed=0)[:2]
    assert sorted(first) == list(range(10))  # one epoch, each sample once
    assert sample_indices(10, 4, 7, seed=3) == sample_indices(10, 4, 7, seed=3)


def test_optimizer_state_round_trips_through_safetensors_layout():
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.sum().backward()
    opt.step()
    tensors, meta = optimizer_to_flat(opt.state_dict())
    restored = optimizer_from_flat(tensors, meta)
    fresh = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone())], lr=0.5)
    fresh.load_state_dict(restored)
    for key in ("exp_avg", "exp_avg_sq", "step"):
        torch.testing.assert_close(fresh.state_dict()["state"][0][key], opt.state_dict()["state"][0][key])
    assert fresh.param_groups[0]["lr"] == 0.1


def test_config_yaml_base_and_errors(tmp_path):
    (tmp_path / "base.yaml").write_text("optim: {max_steps: 100, batch_size: 2, lr_warmup_steps: 7}\ndata: {task: palette}\n")
    (tmp_path / "exp.yaml").write_text("base: base.yaml\noptim: {batch_size: 8}\n")
    config = TrainConfig.load(tmp_path / "exp.yaml", {"optim": {"max_steps": 5}, "run": {"seed": None}})
    assert (config.optim.max_steps, config.optim.batch_size, config.data.task, config.run.seed) == (5, 8, "palette", 0)
    assert config.optim.lr_warmup_steps == 7  # a section is merged key by key: the base's other keys stay
    config.save(tmp_path / "saved.yaml")
    assert TrainConfig.load(tmp_path / "saved.yaml") == config
    for written, meant in (("no", "no"), ("null", ""), ("bf16", "bf16")):  # YAML reads an unquoted no as false
        (tmp_path / "precision.yaml").write_text(f"optim: {{mixed_precision: {written}}}\n")
        assert TrainConfig.load(tmp_path / "precision.yaml").optim.mixed_precision == meant
    (tmp_path / "typo.yaml").write_text("optim: {max_stpes: 3}\n")
    with pytest.raises(ConfigError, match="unknown key.*in section optim: max_stpes"):
        TrainConfig.load(tmp_path / "typo.yaml")
    (tmp_path / "flat.yaml").write_text("max_steps: 3\n")
    with pytest.raises(ConfigError, match="unknown config section.*max_steps"):
        TrainConfig.load(tmp_path / "flat.yaml")
    with pytest.raises(ConfigError, match="task must be"):
        train_config(task="depth")
    with pytest.raises(ConfigError, match="need fixed samples"):
        train_config(augmentation=True, cache_latents=True)
    with pytest.raises(ConfigError, match="config file not found"):
        TrainConfig.load(tmp_path / "missing.yaml")


def test_bf16_mixed_precision_trains(tiny_backbone, tmp_path):
    pipe = trainer(_config(tmp_path, max_steps=2, mixed_precision="bf16"), fresh_pipe(tiny_backbone),
                   SyntheticScenes(4), show_progress=False).train()
    assert all(torch.isfinite(p).all() for p in pipe.unet.parameters())
    assert (tmp_path / "run" / "checkpoints" / "step-00000002").is_dir()


def test_example_config_is_valid():
    from pathlib import Path

    for path in sorted((Path(__file__).parent.parent / "configs").glob("*.yaml")):
        TrainConfig.load(path)
