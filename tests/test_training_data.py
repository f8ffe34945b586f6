"""The training data stage: augmented samples read in DataLoader workers, bounded latent caches, browse-data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from digseg.cli import main
from digseg.data.synthetic import SYNTHETIC_CLASSES, SyntheticScenes, save_scenes_as_folder
from digseg.errors import DataError
from digseg.training.batches import LatentBatcher, sample_indices, step_generator
from digseg.training.run import build_dataset, build_training_data, training_augmentation
from digseg.training.samples import TrainingSamples
from training_helpers import fresh_pipe, max_weight_diff, pipe_weights, train_config, trainer


def _config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "run"), max_steps=3, batch_size=3, learning_rate=1e-3, lr_warmup_steps=1,
                checkpoint_every=100, log_with="none", seed=3, augmentation=True, num_scenes=10)
    base.update(kw)
    return train_config(**base)


def test_same_weights_with_0_and_2_workers(tiny_backbone, tmp_path):
    runs = {}
    for workers in (0, 2):
        config = _config(tmp_path / str(workers), num_workers=workers)
        runs[workers] = pipe_weights(trainer(config, fresh_pipe(tiny_backbone), SyntheticScenes(10, seed=0),
                                             show_progress=False).train())
    assert max_weight_diff(runs[0], pipe_weights(fresh_pipe(tiny_backbone))) > 1e-4  # it trained
    assert max_weight_diff(runs[0], runs[2]) == 0


def test_augmented_samples_depend_only_on_their_request(tiny_backbone, tmp_path):
    config = _config(tmp_path)
    data = build_training_data(config.data, fresh_pipe(tiny_backbone), SyntheticScenes(10, seed=0), seed=3)
    first = list(data.micro_steps(0, 4, batch_size=3, seed=3))
    again = list(data.micro_steps(2, 4, batch_size=3, seed=3))  # a run resumed at micro-step 2
    split = list(data.micro_steps(0, 4, batch_size=2, num_processes=2, process_index=1, seed=3))  # process 1 of 2
    assert [b.micro_step for b in first] == [0, 1, 2, 3] and first[0].images.shape == (3, 3, 64, 64)
    for a, b in zip(first[2:], again):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    # global batch 4 split over 2 processes: slots 2, 3 are process 1's; one process with batch 3 has slots 0-2
    whole = list(data.micro_steps(0, 4, batch_size=4, seed=3))
    for a, b in zip(whole, split):
        assert b.slots == [2, 3] and torch.equal(a.images[2:], b.images)
    assert not torch.equal(first[0].images[0], first[1].images[0])  # other steps, other crops


def test_non_square_crop_trains_end_to_end(tiny_backbone, tmp_path):
    config = _config(tmp_path, crop_size=[32, 64], max_steps=2)
    tr = trainer(config, fresh_pipe(tiny_backbone), SyntheticScenes(6, seed=0), show_progress=False)
    batch = next(tr.data.micro_steps(0, 1, batch_size=3, seed=3))
    assert batch.images.shape == (3, 3, 32, 64) and batch.labels.shape == (3, 32, 64)
    pipe = tr.train()
    assert all(torch.isfinite(p).all() for p in pipe.unet.parameters())
    assert (tmp_path / "run" / "model_index.json").is_file()


def test_padding_is_ignored_by_the_loss_weights(tiny_pipe):
    """A 32 px scene under a 64 px crop: the padded half is ignore, so its latent cells get weight 0."""
    batcher = LatentBatcher(SyntheticScenes(2, size=32), list(SYNTHETIC_CLASSES), tiny_pipe.vae, "palette", "{}", 0.0,
                            cache=False, fixed_samples=False)
    images = torch.zeros(2, 3, 64, 64)
    labels = torch.full((2, 64, 64), 255, dtype=torch.long)
    labels[:, :32, :32] = 1  # the real pixels; the rest is padding
    batch = batcher.make_batch([0, 1], step_generator(0, 0), type("Read", (), {"images": images, "labels": labels}))
    assert batch.keep.shape == (2, 1, 16, 16)
    assert batch.keep[:, 0, :8, :8].min() == 1 and batch.keep[:, 0, 8:].max() == 0 and batch.keep[:, 0, :, 8:].max() == 0


def test_in_memory_cache_stays_under_its_cap(tiny_pipe):
    data = SyntheticScenes(12, seed=0)
    latent_bytes = 4 * 16 * 16 * 4  # one [4, 16, 16] float32 latent
    batcher = LatentBatcher(data, list(SYNTHETIC_CLASSES), tiny_pipe.vae, "both", "{}", 0.1, cache=True,
                            cache_max_mib=10 * latent_bytes / 2**20)
    for step in range(4):
        batcher.make_batch([3 * step, 3 * step + 1, 3 * step + 2], step_generator(0, step))
    assert 0 < batcher.cache_bytes <= 10 * latent_bytes and len(batcher._latents) <= 10
    unbounded = LatentBatcher(data, list(SYNTHETIC_CLASSES), tiny_pipe.vae, "both", "{}", 0.1, cache=True)
    for step in range(4):
        unbounded.make_batch([3 * step, 3 * step + 1, 3 * step + 2], step_generator(0, step))
    assert len(unbounded._latents) >= 24  # image + query latent of 12 samples


def test_a_bad_file_in_a_worker_is_one_line_naming_it(tiny_backbone, tmp_path):
    root = save_scenes_as_folder(SyntheticScenes(6, size=32, seed=1), tmp_path / "data")
    config = _config(tmp_path, dataset="folder", data_root=str(root), num_workers=2, crop_size=32, max_steps=4)
    run = trainer(config, fresh_pipe(tiny_backbone), build_dataset(config.data, seed=3), show_progress=False)
    (root / "images" / "scene_00003.png").write_bytes(b"not a png")  # gone bad after the data check
    with pytest.raises(DataError) as info:
        run.train()
    message = str(info.value)
    assert "scene_00003.png" in message and "\n" not in message and "Traceback" not in message


def test_browse_data_writes_what_the_trainer_reads(tmp_path, capsys):
    out = tmp_path / "browse"
    assert main(["browse-data", "--dataset", "synthetic", "--cfg-options", "data.num_scenes=8", "--num", "5", "--batch-size", "2",
                 "--crop-size", "48,64", "--seed", "3", "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir())[:3] == ["0000_image.png", "0000_label.png", "0000_overlay.png"]
    assert len(list(out.glob("*_image.png"))) == 5
    config = train_config(dataset="synthetic", num_scenes=8, crop_size=[48, 64], augmentation=True, seed=3,
                          batch_size=2)
    dataset = build_dataset(config.data, seed=3)
    samples = TrainingSamples(dataset, training_augmentation(config.data), 3)
    index = sample_indices(len(dataset), 2, 1, 3)[0]  # sample 2 = micro-step 1, slot 0
    want = samples[(index, 1, 0)]
    image = np.asarray(Image.open(out / "0002_image.png"))
    label = np.asarray(Image.open(out / "0002_label.png"))
    assert image.shape == (48, 64, 3) and label.shape == (48, 64)
    np.testing.assert_array_equal(label, want["label"].numpy())
    assert np.abs(image.astype(int) - ((want["image"].permute(1, 2, 0).numpy() + 1) * 127.5).round()).max() <= 1
    assert main(["browse-data", "--dataset", "synthetic", "--num", "0", "--output", str(out)]) == 2
