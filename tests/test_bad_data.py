"""Bad data before and during training: every bad sample listed before step 1 (policy error), or trained without
(policy skip) with exact kill/resume, a file gone bad mid-run, a changed file list on resume, `digseg check-data`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from digseg.cli import main
from digseg.data.check import check_dataset
from digseg.data.domains import FolderPairs
from digseg.data.synthetic import SyntheticScenes, save_scenes_as_folder
from digseg.errors import ConfigError, DataError
from digseg.training.config import TrainConfig
from digseg.training.run import build_run
from training_helpers import assert_same_weights, cli_process, final_weights


def _bad_folder(root: Path) -> tuple[Path, dict[str, str]]:
    """12 synthetic pairs, four of the training split broken four ways -> (root, {file: what is wrong})."""
    save_scenes_as_folder(SyntheticScenes(12, size=32, seed=3), root)
    stems = [s.stem for s in FolderPairs(root, split="train").samples]
    truncated, corrupt, out_of_range, mismatch = stems[:4]
    mask = root / "masks" / f"{truncated}.png"
    mask.write_bytes(mask.read_bytes()[:60])  # a truncated PNG
    image = root / "images" / f"{corrupt}.png"
    image.unlink()
    jpeg = image.with_suffix(".jpg")
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes()[:-40])  # a JPEG cut short
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(root / "masks" / f"{out_of_range}.png")  # 7: no such class
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "masks" / f"{mismatch}.png")  # 16x16 under a 32x32 image
    return root, {f"masks/{truncated}.png": "cannot read label", f"images/{corrupt}.jpg": "cannot read image",
                  f"masks/{out_of_range}.png": "values [7]", f"masks/{mismatch}.png": "16x16"}


def _args(backbone, data, run, *extra) -> list[str]:
    return ["train", "--pretrained", str(backbone), "--dataset", "folder", "--data-root", str(data), "--output",
            str(run), "--crop-size", "32", "--batch-size", "2", "--learning-rate", "1e-3", "--checkpoint-every", "2",
            "--cfg-options", "run.log_with=none", "data.augmentation=false", *extra]


def test_every_bad_sample_is_listed_before_the_model_loads(tmp_path, capsys, caplog):
    data, broken = _bad_folder(tmp_path / "data")
    config = TrainConfig.from_dict({"model": {"pretrained": str(tmp_path / "no-such-backbone")},
                                    "data": {"dataset": "folder", "data_root": str(data)},
                                    "run": {"output_dir": str(tmp_path / "run"), "log_with": "none"}})
    with caplog.at_level(logging.ERROR, logger="digseg.data"):
        with pytest.raises(DataError) as caught:  # the data error, not the missing backbone's: data is read first
            build_run(config, show_progress=False)
    message = str(caught.value)
    assert message.startswith("4 of ") and "--bad-samples skip" in message and "\n" not in message
    listed = [record.getMessage() for record in caplog.records]
    for file, problem in broken.items():  # every one listed, not just the first
        line = next(line for line in listed if file in line)
        assert problem in line, (problem, line)

    assert main(["check-data", "--dataset", "folder", "--data-root", str(data), "--output", str(tmp_path / "c")]) == 1
    out = capsys.readouterr().out
    assert "train: " in out and " 4 bad" in out and all(file in out for file in broken)
    assert json.loads((tmp_path / "c" / "data-check.json").read_text())["bad"][0]["problem"]


def test_skip_trains_without_bad_samples_and_resumes_exactly(tiny_backbone, tmp_path, monkeypatch):
    data, broken = _bad_folder(tmp_path / "data")
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert main(_args(tiny_backbone, data, reference, "--max-steps", "4", "--bad-samples", "skip")) == 0
    checked = json.loads((reference / "data-check.json").read_text())
    assert sorted(Path(b["name"]).stem for b in checked["bad"]) == sorted(Path(file).stem for file in broken)
    note = next(json.loads(line) for line in (reference / "log.jsonl").read_text().splitlines() if "bad_samples" in line)
    assert len(note["bad_samples"]) == 4

    # killed after step 3 (its last checkpoint is step 2), in 2 loader workers, then resumed
    run = cli_process(_args(tiny_backbone, data, killed, "--max-steps", "4", "--bad-samples", "skip", "--cfg-options", "data.num_workers=2"),
                      kill_at="step-3")
    assert run.returncode == -9, run.stderr
    import digseg.data.check as check_module

    def no_scan(*args, **kwargs):
        raise AssertionError("an unchanged dataset was scanned again on resume")

    monkeypatch.setattr(check_module, "scan_dataset", no_scan)
    assert main(_args(tiny_backbone, data, killed, "--max-steps", "4", "--bad-samples", "skip", "--resume",
                      "latest")) == 0
    assert_same_weights(final_weights(reference), final_weights(killed))
    monkeypatch.undo()

    # a pair removed: the resume names it and is refused, unless the change is allowed
    gone = FolderPairs(data, split="train").samples[5]
    gone.image.unlink()
    gone.label.unlink()
    more = _args(tiny_backbone, data, killed, "--max-steps", "6", "--bad-samples", "skip", "--resume", "latest")
    with pytest.raises(ConfigError, match=rf"data.samples: .*removed 1: .*{gone.image.name}"):
        build_run_from_cli(more)
    assert main([*more, "--allow-config-change"]) == 0
    changes = yaml.safe_load((killed / "config.yaml").read_text())["config_changes"]
    assert "data.samples" in changes[-1]["fields"]


def build_run_from_cli(args: list[str]):
    """What `digseg train` does with these flags, raising instead of printing."""
    from digseg.cli.commands import _train_config
    from digseg.cli.parser import build_parser

    parsed = build_parser().parse_args(args)
    return build_run(_train_config(parsed), show_progress=False).train(resume=parsed.resume)


def test_a_file_gone_bad_mid_run_is_skipped_not_fatal(tiny_backbone, tmp_path):
    data = save_scenes_as_folder(SyntheticScenes(6, size=32, seed=4), tmp_path / "data")
    config = TrainConfig.from_dict({
        "model": {"pretrained": str(tiny_backbone)},
        "data": {"dataset": "folder", "data_root": str(data), "crop_size": 32, "augmentation": False,
                 "bad_samples": "skip"},
        "optim": {"max_steps": 3, "batch_size": 2, "learning_rate": 1e-3},
        "run": {"output_dir": str(tmp_path / "run"), "log_with": "none", "checkpoint_every": 10}})
    trainer = build_run(config, show_progress=False)
    victim = trainer.data.samples.dataset.samples[0].image
    victim.write_bytes(b"not an image any more")  # after the check, before the first step reads it
    trainer.train()
    notes = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any(victim.name in note.get("bad_sample", "") for note in notes)


def test_check_is_cached_by_file_facts(tmp_path):
    data = save_scenes_as_folder(SyntheticScenes(4, size=16, seed=1), tmp_path / "data")
    cache = tmp_path / "run" / "data-check.json"
    dataset = FolderPairs(data, split="train", val_fraction=0.0)
    assert check_dataset(dataset, cache, show_progress=False).bad == []
    mask = dataset.samples[0].label
    mask.write_bytes(mask.read_bytes()[:50])  # another size: the cached check is stale
    again = check_dataset(FolderPairs(data, split="train", val_fraction=0.0), cache, show_progress=False)
    assert [b.name for b in again.bad] == [str(dataset.samples[0].image)]
