"""TensorBoard logs through accelerate's tracker: loss, learning rate and sample predictions."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from digseg import DiGSegPipeline
from digseg.data.synthetic import SYNTHETIC_CLASSES, SyntheticScenes
from training_helpers import train_config, trainer

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def test_tensorboard_gets_loss_lr_and_sample_predictions(tiny_backbone, tmp_path):
    pipe = DiGSegPipeline.from_backbone(tiny_backbone, class_names=list(SYNTHETIC_CLASSES))
    pipe.set_progress_bar_config(disable=True)
    run = tmp_path / "run"
    config = train_config(pretrained="unused", output_dir=str(run), max_steps=5, batch_size=2, learning_rate=1e-3,
                         lr_warmup_steps=2, checkpoint_every=100, log_every=1, sample_every=2, num_sample_images=3,
                         resolution=32, class_names=list(SYNTHETIC_CLASSES))
    previews = SyntheticScenes(3, size=32, seed=7)  # a "validation" set: not the training scenes
    trainer(config, pipe, SyntheticScenes(6, size=32, seed=1), show_progress=False, val_dataset=previews).train()

    event_files = list((run / "logs").rglob("events.out.tfevents.*"))
    assert event_files, f"no TensorBoard event file under {run / 'logs'}"
    events = event_accumulator.EventAccumulator(str(event_files[0].parent), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    loss = events.Scalars("train/loss")
    lr = events.Scalars("train/lr")
    assert [e.step for e in loss] == [1, 2, 3, 4, 5] and [e.step for e in lr] == [1, 2, 3, 4, 5]
    assert lr[0].value < lr[1].value  # warm-up
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [round(e.value, 5) for e in loss] == [round(entry["loss"], 5) for entry in logged]
    images = events.Images("samples/prediction")
    assert [e.step for e in images] == [2, 4, 5]  # every 2 steps, and the last
    # 3 rows (images) of input | ground truth | prediction, 32 px each; the inputs are the preview images
    assert (images[0].width, images[0].height) == (3 * 32, 3 * 32)
    grid = np.asarray(Image.open(io.BytesIO(images[-1].encoded_image_string)).convert("RGB")).astype(int)
    for row in range(3):
        want = ((previews[row]["image"].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(int)
        assert np.abs(grid[row * 32:(row + 1) * 32, :32] - want).max() <= 1


def test_logs_can_be_switched_off(tiny_backbone, tmp_path):
    pipe = DiGSegPipeline.from_backbone(tiny_backbone, class_names=list(SYNTHETIC_CLASSES))
    run = tmp_path / "run"
    config = train_config(pretrained="unused", output_dir=str(run), max_steps=2, batch_size=2, checkpoint_every=100,
                         log_every=1, log_with="none", resolution=32, class_names=list(SYNTHETIC_CLASSES))
    trainer(config, pipe, SyntheticScenes(4, size=32, seed=1), show_progress=False).train()
    assert not (run / "logs").exists() and len((run / "log.jsonl").read_text().splitlines()) == 2
