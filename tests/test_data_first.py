"""Every command checks its data (root, splits, class list) and its other inputs before it loads a model or a
backbone: a bad --data-root, split or class file is named in one line, and the model is never touched."""

from __future__ import annotations

import pytest

from digseg.cli import main
from digseg.data.synthetic import SyntheticScenes, save_scenes_as_folder
from training_helpers import error_line


@pytest.fixture
def no_model_loads(monkeypatch, tmp_path):
    """A model path that does not exist, and model loaders that fail loudly (not a one-line error) if called."""
    from digseg import DiGSegPipeline

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(DiGSegPipeline, "from_pretrained", loaded)
    monkeypatch.setattr(DiGSegPipeline, "from_backbone", loaded)
    return str(tmp_path / "no-model")


@pytest.fixture
def data(tmp_path):
    return save_scenes_as_folder(SyntheticScenes(4, seed=0), tmp_path / "data")


def _names_data_not_model(capsys, data_word: str) -> str:
    line = error_line(capsys)
    assert data_word in line and "no-model" not in line, line
    return line


@pytest.mark.parametrize("command", [
    ["train", "--pretrained", "{model}", "--max-steps", "1"],
    ["cache-latents", "--pretrained", "{model}", "--output", "{tmp}/cache", "--cfg-options", "data.augmentation=false"],
    ["train-mask-decoder", "--model", "{model}"],
    ["eval", "--model", "{model}"],
], ids=lambda c: c[0])
def test_a_wrong_data_root_is_named_before_the_model_loads(command, no_model_loads, tmp_path, capsys):
    argv = [a.format(model=no_model_loads, tmp=tmp_path) for a in command]
    argv += ["--dataset", "folder", "--data-root", str(tmp_path / "no-data"), "--output", str(tmp_path / "out")] \
        if command[0] != "cache-latents" else ["--dataset", "folder", "--data-root", str(tmp_path / "no-data")]
    assert main(argv) == 2
    line = _names_data_not_model(capsys, "no-data")
    assert "data root not found" in line


@pytest.mark.parametrize("command", [
    ["train", "--pretrained", "{model}", "--max-steps", "1", "--output", "{tmp}/run"],
    ["cache-latents", "--pretrained", "{model}", "--output", "{tmp}/cache", "--cfg-options", "data.augmentation=false"],
    ["train-mask-decoder", "--model", "{model}", "--output", "{tmp}/out"],
    ["eval", "--model", "{model}", "--output", "{tmp}/eval", "--val-fraction", "1"],
], ids=lambda c: c[0])
def test_a_missing_class_file_is_named_before_the_model_loads(command, data, no_model_loads, tmp_path, capsys):
    (data / "classes.txt").unlink()
    argv = [a.format(model=no_model_loads, tmp=tmp_path) for a in command] + ["--dataset", "folder", "--data-root", str(data)]
    assert main(argv) == 2
    _names_data_not_model(capsys, "classes.txt")


def test_train_names_a_class_list_of_the_wrong_length_before_the_model_loads(data, no_model_loads, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("data:\n  class_names: [a, b]\n")  # the folder dataset has 4 classes
    assert main(["train", "--config", str(config), "--pretrained", no_model_loads, "--dataset", "folder",
                 "--data-root", str(data), "--output", str(tmp_path / "run"), "--max-steps", "1"]) == 2
    _names_data_not_model(capsys, "data.class_names lists 2 names")


def test_eval_reads_its_threshold_search_split_before_the_model_loads(data, no_model_loads, tmp_path, capsys):
    assert main(["eval", "--model", no_model_loads, "--dataset", "folder", "--data-root", str(data),
                 "--val-fraction", "1", "--threshold-search", "--search-split", "nosuch",
                 "--output", str(tmp_path / "eval")]) == 2
    _names_data_not_model(capsys, "nosuch")


def test_predict_names_its_images_and_class_file_before_the_model_loads(no_model_loads, data, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["predict", "--model", no_model_loads, "--image", str(tmp_path / "none.png"), "--output", out]) == 2
    _names_data_not_model(capsys, "none.png")
    assert main(["predict", "--model", no_model_loads, "--image", str(data / "images"),
                 "--classes-file", str(tmp_path / "none.txt"), "--output", out]) == 2
    _names_data_not_model(capsys, "none.txt")


def test_demo_checks_its_settings_before_the_model_loads(no_model_loads, capsys):
    assert main(["demo", "--model", no_model_loads, "--max-pixels", "0"]) == 2
    _names_data_not_model(capsys, "--max-pixels")


def test_train_mask_decoder_reads_the_resolution_from_the_model_folder(tiny_pipe, tmp_path, monkeypatch):
    """The dataset is built at the model's processing resolution, read from model_index.json before the load."""
    from digseg.data import registry

    tiny_pipe.register_to_config(default_processing_resolution=48)
    tiny_pipe.save_pretrained(tmp_path / "model")
    sizes = []
    build = registry.build_dataset

    def recording(*args, **kwargs):
        sizes.append(kwargs.get("size"))
        return build(*args, **kwargs)

    monkeypatch.setattr(registry, "build_dataset", recording)
    assert main(["train-mask-decoder", "--model", str(tmp_path / "model"), "--output", str(tmp_path / "out"),
                 "--num-scenes", "2", "--max-steps", "1", "--batch-size", "1", "--widths", "16,8,8"]) == 0
    assert sizes == [48]  # once, before the model loaded, at the model's resolution
