"""The `digseg` command: predict, train and quickstart end to end, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from digseg.cli import main
from digseg.data.synthetic import SYNTHETIC_CLASSES, SyntheticScenes, save_scenes_as_folder
from training_helpers import error_line


@pytest.fixture
def saved_model(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_predict_writes_labels_overlays_and_probabilities(saved_model, image_file, tmp_path, capsys):
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(saved_model), "--image", str(image_file), "--prompt", "circle",
                 "--ensemble-size", "2", "--output", str(out), "--device", "cpu", "--dtype", "bf16"]) == 0
    label = np.asarray(Image.open(out / "photo_label.png"))
    assert label.shape == (48, 64) and set(np.unique(label)) <= {0, 1}
    assert Image.open(out / "photo_label.png").mode == "P"
    for name in ("photo_overlay.png", "photo_prob_circle.png", "photo_uncertainty.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert abs(sum(summary["images"]["photo.png"].values()) - 1.0) < 1e-3
    assert summary["runtime"]["device"] == "cpu" and summary["runtime"]["dtype"] == "bf16"  # where it ran
    assert "cpu (" in (out / "index.html").read_text() and "bf16" in (out / "index.html").read_text()

    out2 = tmp_path / "pred2"
    assert main(["predict", "--model", str(saved_model), "--image", str(image_file.parent), "--classes",
                 "sky, road,car", "--output", str(out2)]) == 0
    assert {p.name for p in out2.glob("photo_prob_*.png")} == {"photo_prob_sky.png", "photo_prob_road.png", "photo_prob_car.png"}
    assert np.asarray(Image.open(out2 / "photo_label.png")).max() <= 2


def test_predict_bad_inputs_give_one_line_errors(saved_model, image_file, tmp_path, capsys):
    # (a file that exists but cannot be read is skipped, not an error: tests/test_predict_run.py)
    assert main(["predict", "--model", str(saved_model), "--image", str(tmp_path / "none.png"), "--prompt", "x", "--output", str(tmp_path / "o")]) == 2
    assert "none.png" in error_line(capsys)
    assert main(["predict", "--model", str(tmp_path / "no-model"), "--image", str(image_file), "--prompt", "x", "--output", str(tmp_path / "o")]) == 2
    assert "no-model" in error_line(capsys)
    assert main(["predict", "--model", str(saved_model), "--image", str(image_file), "--prompt", "", "--output", str(tmp_path / "o")]) == 2
    assert "empty prompt" in error_line(capsys)
    assert main(["predict", "--model", str(saved_model), "--image", str(image_file), "--classes", "a,,b", "--output", str(tmp_path / "o")]) == 2
    assert "empty class name" in error_line(capsys)
    assert main(["predict", "--model", str(saved_model), "--image", str(image_file), "--batch-size", "0", "--output", str(tmp_path / "o")]) == 2
    assert "--batch-size" in error_line(capsys)
    assert main(["predict", "--model", str(saved_model), "--output", str(tmp_path / "o")]) == 2
    assert "--image" in error_line(capsys)
    assert not (tmp_path / "o").exists()  # every error above comes before any work


def test_console_script_prints_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "digseg.cli", "predict", "--model", str(tmp_path / "missing"), "--image", "x.png",
         "--prompt", "cup", "--output", str(tmp_path)], capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "x.png" in result.stderr


def test_train_on_a_folder_dataset_and_resume(tiny_backbone, tmp_path, capsys):
    data = save_scenes_as_folder(SyntheticScenes(6, seed=0), tmp_path / "data")
    run = tmp_path / "run"
    args = ["train", "--pretrained", str(tiny_backbone), "--dataset", "folder", "--data-root", str(data),
            "--output", str(run), "--batch-size", "2", "--crop-size", "64", "--checkpoint-every", "2"]
    assert main(args + ["--max-steps", "2"]) == 0
    assert (run / "model_index.json").is_file() and (run / "checkpoints" / "step-00000002").is_dir()
    # the cosine schedule is built from max_steps: extending the run is refused, or explicitly allowed
    assert main(args + ["--max-steps", "3", "--resume", "latest"]) == 2
    assert "optim.max_steps: 2 -> 3" in capsys.readouterr().err
    assert main(args + ["--max-steps", "3", "--resume", "latest", "--allow-config-change"]) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 3 and [entry["step"] for entry in log].count(1) == 0
    assert log[-2] == {"step": 2, "config_change": {"optim.max_steps": [2, 3]}, "trajectory": "changed"}
    from digseg import DiGSegPipeline

    assert DiGSegPipeline.from_pretrained(run).config.class_names == ["background", "circle", "square", "triangle"]


def test_train_bad_data_is_named(tiny_backbone, tmp_path, capsys):
    data = save_scenes_as_folder(SyntheticScenes(2, seed=0), tmp_path / "data")
    base = ["train", "--pretrained", str(tiny_backbone), "--dataset", "folder", "--data-root", str(data),
            "--output", str(tmp_path / "run"), "--max-steps", "1", "--batch-size", "2"]
    mask = sorted((data / "masks").glob("*.png"))[0]
    Image.fromarray(np.full((10, 12), 1, dtype=np.uint8)).save(mask)
    assert main(base) == 2
    assert mask.name in error_line(capsys)
    Image.fromarray(np.full((64, 64), 9, dtype=np.uint8)).save(mask)  # 9 >= 4 classes
    assert main(base) == 2
    line = error_line(capsys)
    assert mask.name in line and "9" in line
    assert main(["train", "--dataset", "folder", "--data-root", str(data)]) == 2
    assert "--pretrained" in error_line(capsys)
    assert main(["train", "--pretrained", str(tmp_path / "nowhere"), "--max-steps", "1"]) == 2
    assert "nowhere" in error_line(capsys)


def test_quickstart_command_end_to_end(tmp_path, monkeypatch, capsys):
    """`digseg quickstart` on tiny settings: the model folder, overlays and metrics.json of every E-Step setting,
    evaluated on the device and in the dtype asked, and recorded so."""
    import digseg.cli.quickstart

    class Tiny(digseg.cli.quickstart.QuickstartSettings):  # the command's own defaults train for minutes
        def __init__(self, seed: int = 0):
            super().__init__(seed=seed, vae_steps=3, batch_size=4, num_train_scenes=8, num_eval_scenes=3,
                             settings=("1x1", "1x2"), num_overlays=2)

    monkeypatch.setattr(digseg.cli.quickstart, "QuickstartSettings", Tiny)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "false")  # the command sets it for --device cpu; restored after
    assert main(["quickstart", "--output", str(tmp_path / "qs"), "--max-steps", "3", "--device", "cpu",
                 "--dtype", "bf16"]) == 0
    saved = json.loads((tmp_path / "qs" / "metrics.json").read_text())
    assert saved["runtime"]["device"] == "cpu" and saved["runtime"]["dtype"] == "bf16"
    assert saved["binary"].keys() == saved["palette"].keys() == {"1x1", "1x2"}
    assert saved["binary"]["1x1"]["queries"] == 9  # 3 scenes x 3 shape prompts
    assert list(saved["palette"]["1x2"]["per_class"]) == list(SYNTHETIC_CLASSES)  # the palette scores every class
    assert saved["palette"]["1x2"]["images_per_s"] > 0
    assert len(list((tmp_path / "qs" / "overlays").glob("*.png"))) == 4
    assert (tmp_path / "qs" / "model" / "model_index.json").is_file()
    assert "tiny model, synthetic data" in capsys.readouterr().out


def test_every_command_of_the_parser_has_an_implementation():
    import argparse

    from digseg.cli.commands import COMMANDS
    from digseg.cli.parser import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(COMMANDS)
