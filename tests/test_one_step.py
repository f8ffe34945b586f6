"""The one-step objective: its loss trains, the saved model is deterministic and records its objective,
ensembles are refused, resume is exact, and predict / eval run it unchanged."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from digseg import DiGSegPipeline
from digseg.cli import main
from digseg.data.synthetic import SYNTHETIC_CLASSES, SyntheticScenes, save_scenes_as_folder
from digseg.errors import ConfigError, DigsegError
from digseg.models.mask_decoder import LightMaskDecoder
from digseg.training.batches import EMPTY, PALETTE, LatentBatcher, LatentKey, step_generator
from digseg.training.config import PREDICTION_TYPES
from digseg.training.trainer import one_step_loss
from training_helpers import fresh_pipe, miou_by_hand, train_config, trainer


def _config(tmp_path, **kw):
    base = dict(pretrained="unused", output_dir=str(tmp_path / "run"), max_steps=6, batch_size=4, learning_rate=1e-3,
                lr_warmup_steps=2, checkpoint_every=3, keep_checkpoints=2, log_every=2, seed=0, log_with="none",
                objective="one-step")
    base.update(kw)
    return train_config(**base)


def _fresh(tiny_backbone, light: bool = False):
    pipe = fresh_pipe(tiny_backbone)
    if light:
        torch.manual_seed(0)
        pipe.set_mask_decoder(LightMaskDecoder.for_vae(pipe.vae, block_channels=[16, 16, 16]))
    return pipe


def _batcher(pipe, data, task="both"):
    return LatentBatcher(data, list(SYNTHETIC_CLASSES), pipe.vae, task, "{}", 0.1, cache=False, label_targets=True)


def _loss(pipe, batcher, batch, decoder="vae"):
    with torch.no_grad():
        return one_step_loss(pipe, pipe.unet, pipe.text_pathway, batch, batcher.palette_codec, batcher.binary_codec,
                             decoder).item()


def test_label_targets_follow_the_query():
    data = SyntheticScenes(2, seed=0)
    batcher = LatentBatcher(data, list(SYNTHETIC_CLASSES), None, "both", "{}", 0.1, cache=False, label_targets=True)
    label = torch.tensor([[0, 1, 2], [255, 1, 3]])
    assert batcher.target_labels(label, PALETTE).tolist() == label.tolist()
    assert batcher.target_labels(label, LatentKey.of_class(1)).tolist() == [[0, 1, 0], [255, 1, 0]]
    assert batcher.target_labels(label, EMPTY).tolist() == [[0, 0, 0], [255, 0, 0]]


def test_one_step_batches_carry_labels_not_mask_latents(tiny_pipe):
    data = SyntheticScenes(4, seed=0)
    batch = _batcher(tiny_pipe, data).make_batch([0, 1, 2, 3], [step_generator(0, 0, s) for s in range(4)])
    assert batch.mask_latents is None and batch.targets.shape == (4, 64, 64) and len(batch.palette) == 4
    for j, is_palette in enumerate(batch.palette):
        values = set(batch.targets[j].unique().tolist())
        assert values <= ({0, 1, 2, 3} if is_palette else {0, 1})


def test_loss_of_a_batch_is_the_mean_of_its_halves(tiny_pipe):
    """What DDP computes (the mean of processes' gradients) equals one process's gradient on the whole batch."""
    data = SyntheticScenes(4, seed=3)
    batcher = _batcher(tiny_pipe, data)
    batch = batcher.make_batch([0, 1, 2, 3], [step_generator(0, 0, s) for s in range(4)])
    assert set(batch.palette) == {True, False}  # both kinds of query in the batch
    params = list(tiny_pipe.unet.requires_grad_(True).parameters())

    def grads(part):
        tiny_pipe.unet.zero_grad()
        one_step_loss(tiny_pipe, tiny_pipe.unet, tiny_pipe.text_pathway, part, batcher.palette_codec,
                      batcher.binary_codec, "vae").backward()
        return torch.cat([p.grad.flatten() for p in params if p.grad is not None])

    def half(rows):
        return dataclasses.replace(batch, image_latents=batch.image_latents[rows], keep=batch.keep[rows],
                                   prompts=batch.prompts[rows], targets=batch.targets[rows], palette=batch.palette[rows])

    whole, first, second = grads(batch), grads(half(slice(0, 2))), grads(half(slice(2, 4)))
    assert ((whole - (first + second) / 2).norm() / whole.norm()).item() < 1e-4


def test_ignore_pixels_do_not_reach_the_loss(tiny_pipe):
    data = SyntheticScenes(2, seed=0)
    batcher = _batcher(tiny_pipe, data, task="palette")
    batch = batcher.make_batch([0, 1], step_generator(0, 0))
    before = _loss(tiny_pipe, batcher, batch)
    labels = batch.targets.clone()
    batch.targets[:, :32] = 255  # the top half ignored: the loss is the bottom half's mean
    bottom = _loss(tiny_pipe, batcher, batch)
    batch.targets[:] = labels
    batch.targets[:, 32:] = 255
    top = _loss(tiny_pipe, batcher, batch)
    assert bottom != pytest.approx(top, rel=1e-3)  # the halves differ, so the check below means something
    assert before == pytest.approx((top + bottom) / 2, rel=1e-5)  # equal pixel counts: the whole is their mean
    batch.targets[:] = 255  # nothing labelled: zero, not NaN
    assert _loss(tiny_pipe, batcher, batch) == 0.0


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_predicted_sample_reads_each_prediction_type_as_x0(tiny_backbone, prediction_type):
    pipe = DiGSegPipeline.from_backbone(tiny_backbone, prediction_type=prediction_type)
    g = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 500, 999])
    z_t, target = pipe.noisy_latents_and_target(z0, noise, t)  # the exact prediction of each type
    torch.testing.assert_close(pipe.predicted_sample(target, z_t, t), z0, atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("light", [False, True], ids=["vae", "light"])
def test_few_one_step_steps_lower_the_loss(tiny_backbone, tmp_path, light):
    pipe = _fresh(tiny_backbone, light)
    data = SyntheticScenes(8, seed=0)
    decoder = "light" if light else "vae"
    batcher = _batcher(pipe, data)
    batch = batcher.make_batch(list(range(8)), [step_generator(0, 0, s) for s in range(8)])
    before = _loss(pipe, batcher, batch, decoder)
    config = _config(tmp_path, max_steps=20, batch_size=8, checkpoint_every=100, learning_rate=2e-3)
    trained = trainer(config, pipe, data, show_progress=False).train()
    assert trained.config.objective == "one-step" and trained.config.one_step_decoder == decoder  # auto resolved
    after = _loss(trained, batcher, batch, decoder)
    assert after < 0.7 * before, (before, after)


def test_saved_one_step_model_is_deterministic_and_refuses_ensembles(tiny_backbone, tmp_path):
    config = _config(tmp_path, max_steps=2, checkpoint_every=100)
    trainer(config, _fresh(tiny_backbone), SyntheticScenes(8, seed=0), show_progress=False).train()
    index = json.loads((tmp_path / "run" / "model_index.json").read_text())
    assert index["objective"] == "one-step" and index["one_step_decoder"] == "vae"
    pipe = DiGSegPipeline.from_pretrained(tmp_path / "run")
    pipe.set_progress_bar_config(disable=True)
    image = torch.from_numpy(SyntheticScenes(1, seed=5).scene(0)[0]).permute(2, 0, 1).float() / 255
    first = pipe(image, generator=torch.Generator().manual_seed(0))
    second = pipe(image, generator=torch.Generator().manual_seed(1))  # no noise: the seed does not matter
    assert np.array_equal(first.labels, second.labels) and np.array_equal(first.probabilities, second.probabilities)
    binary = [pipe(image, prompt="circle").probabilities for _ in range(2)]
    assert np.array_equal(*binary)
    with pytest.raises(DigsegError, match="one-step objective"):
        pipe(image, ensemble_size=4, num_inference_steps=2)
    with pytest.raises(DigsegError, match="one-step objective"):
        pipe(image, num_inference_steps=2)


def test_one_step_resume_is_exact(tiny_backbone, tmp_path):
    data = SyntheticScenes(10, size=32, seed=0)  # 32 px: exactness does not depend on the size
    straight = trainer(_config(tmp_path / "a", gradient_accumulation_steps=2, resolution=32), _fresh(tiny_backbone),
                       data, show_progress=False).train()
    resumed_dir = tmp_path / "b" / "run"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "run" / "checkpoints" / "step-00000003", resumed_dir / "checkpoints" / "step-00000003")
    resumed = trainer(_config(tmp_path / "b", gradient_accumulation_steps=2, resolution=32), _fresh(tiny_backbone),
                      data, show_progress=False).train(resume="latest")
    for name, value in straight.unet.state_dict().items():
        torch.testing.assert_close(resumed.unet.state_dict()[name], value, atol=1e-6, rtol=1e-5, msg=name)


def test_light_decoder_is_required_when_asked(tiny_backbone, tmp_path):
    with pytest.raises(ConfigError, match="no light mask decoder"):
        trainer(_config(tmp_path, one_step_decoder="light"), _fresh(tiny_backbone), SyntheticScenes(4, seed=0),
                show_progress=False)
    with pytest.raises(ConfigError, match="objective"):
        _config(tmp_path, objective="two-step")


def test_cli_trains_one_step_then_predict_and_eval_run_it(tiny_backbone, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--pretrained", str(tiny_backbone), "--cfg-options", "model.objective=one-step", "--dataset", "synthetic",
                 "--cfg-options", "data.num_scenes=8", "--crop-size", "32", "--cfg-options", "data.augmentation=false", "--max-steps", "2", "--batch-size", "2",
                 "--output", str(run)]) == 0
    assert json.loads((run / "model_index.json").read_text())["objective"] == "one-step"
    data = save_scenes_as_folder(SyntheticScenes(3, size=32, seed=1), tmp_path / "data")
    assert main(["eval", "--model", str(run), "--dataset", "folder", "--data-root", str(data), "--val-fraction", "1",
                 "--output", str(tmp_path / "eval")]) == 0
    reported = json.loads((tmp_path / "eval" / "metrics.json").read_text())["mIoU"]  # the score of the predictions it wrote
    assert reported == pytest.approx(miou_by_hand(tmp_path / "eval" / "predictions", data / "masks", len(SYNTHETIC_CLASSES)))
    assert main(["eval", "--model", str(run), "--dataset", "folder", "--data-root", str(data), "--val-fraction", "1",
                 "--ensemble-size", "4", "--output", str(tmp_path / "eval4")]) == 2
    assert "one-step objective" in capsys.readouterr().err
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(run), "--image", str(data / "images"), "--prompt", "circle",
                 "--output", str(out)]) == 0
    assert len(list(out.glob("*.png"))) >= 3
