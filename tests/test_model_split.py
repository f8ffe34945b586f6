"""A model knows its split: a trained model records the data and split rule it was trained and validated with
(`digseg.data.model_data`), `digseg eval` defaults to its validation split and warns when it scores training
images, a `--split-file` run validates on no training image, the model card's eval command scores the validation
split as written, and `digseg train-mask-decoder` trains on the model's training split by default.

Models: tiny backbone, 16 synthetic scenes saved as a flat folder at 32 px, one or two training steps.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from digseg.cli import main
from digseg.cli.commands import _train_config
from digseg.cli.parser import build_parser
from digseg.data.domains import FolderPairs
from digseg.data.model_data import TrainingDataRecord, model_training_data, record_training_data
from digseg.data.splits import is_held_out
from digseg.data.synthetic import SyntheticScenes, save_scenes_as_folder
from digseg.training.config import DataConfig
from digseg.training.run import build_run

FRACTION = 0.5
STEMS = [f"scene_{i:05d}" for i in range(16)]
HELD_OUT = [s for s in STEMS if is_held_out(s, FRACTION)]  # the val split of the hash-rule model
LISTED = STEMS[:10]  # the training list of the split-file model


def _train_flags(backbone: Path, root: Path, output: Path) -> list[str]:
    return ["train", "--pretrained", str(backbone), "--dataset", "folder", "--data-root", str(root),
            "--crop-size", "32", "--cfg-options", "data.augmentation=false", "--batch-size", "2", "--learning-rate", "1e-3",
            "--cfg-options", "run.log_with=none", "--output", str(output)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = save_scenes_as_folder(SyntheticScenes(16, size=32, seed=5), tmp_path_factory.mktemp("data") / "scenes")
    assert sorted(p.stem for p in (root / "images").iterdir()) == STEMS and 0 < len(HELD_OUT) < 16
    return root


@pytest.fixture(scope="module")
def hash_model(tiny_backbone, data, tmp_path_factory) -> Path:
    """A model trained on the flat folder's images not held out at val_fraction 0.5 (1 step)."""
    out = tmp_path_factory.mktemp("hash") / "model"
    assert main([*_train_flags(tiny_backbone, data, out), "--val-fraction", str(FRACTION), "--max-steps", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def listed_model(tiny_backbone, data, tmp_path_factory) -> dict:
    """A `--split-file` run validated every step (2 steps): its trainer's validation split and the saved model."""
    folder = tmp_path_factory.mktemp("listed")
    listed = folder / "train.txt"
    listed.write_text("".join(f"{stem}\n" for stem in LISTED))
    out = folder / "model"
    args = build_parser().parse_args([*_train_flags(tiny_backbone, data, out), "--split-file", str(listed),
                                      "--max-steps", "2", "--eval-every", "1", "--cfg-options", "run.eval_samples=50"])
    trainer = build_run(_train_config(args), show_progress=False)
    validated = [sample.stem for sample in trainer.val_dataset.samples]
    trainer.train()
    return {"out": out, "listed": listed, "validated": validated}


def _eval(model: Path, data: Path, out: Path, *flags: str) -> int:
    assert main(["eval", "--dataset", "folder", "--data-root", str(data), "--model", str(model),
                 "--output", str(out), *flags]) == 0
    return json.loads((out / "metrics.json").read_text())["num_images"]


def test_a_trained_model_records_its_data_and_split_rule(hash_model, listed_model, data):
    index = json.loads((hash_model / "model_index.json").read_text())
    assert index["training_data"] == {"dataset": "folder", "data_root": str(data.resolve()),
                                      "split_rule": "file-name hash", "val_fraction": FRACTION, "hash": "sha1-52"}
    record = model_training_data(listed_model["out"])
    assert record == TrainingDataRecord("folder", str(data.resolve()), split_rule="split file",
                                        split_file=str(listed_model["listed"].resolve()))
    # the record rebuilds the same splits
    train = FolderPairs(data, split="train", **record.split_options())
    val = FolderPairs(data, split="val", **record.split_options())
    assert [s.stem for s in train.samples] == LISTED and [s.stem for s in val.samples] == STEMS[10:]
    facts = ModelCard.load(hash_model / "README.md").data.to_dict()["digseg"]
    assert facts["model"]["training_data"] == index["training_data"]  # the card's metadata shows it too


def test_synthetic_training_records_its_scenes():
    record = record_training_data(DataConfig(), SyntheticScenes(6, seed=3))
    assert record == {"dataset": "synthetic", "num_scenes": 6, "seed": 3}  # what quickstart's model records
    assert TrainingDataRecord.from_config({"training_data": record}).flag_defaults() == {"dataset": "synthetic",
                                                                                       "num_scenes": 6}
    assert TrainingDataRecord.from_config({"task": "both"}) is None  # a model saved before the record


def test_a_split_file_run_validates_on_no_training_image(listed_model):
    assert listed_model["validated"] == STEMS[10:]  # every image the training list leaves out, and only those
    log = [json.loads(line) for line in (listed_model["out"] / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "val/mIoU" in e] == [1, 2]
    assert (listed_model["out"] / "checkpoints" / "best" / "best.json").is_file()


def test_eval_scores_the_models_validation_split_and_warns_on_training_images(hash_model, listed_model, data,
                                                                              tmp_path, capsys):
    assert _eval(hash_model, data, tmp_path / "default") == len(HELD_OUT)  # not the 0.1 of a bare folder
    assert "warning" not in capsys.readouterr().err
    assert _eval(hash_model, data, tmp_path / "all", "--val-fraction", "1") == 16
    trained = 16 - len(HELD_OUT)
    assert (f"warning: {trained} of the 16 images scored were in the model's training split (folder data at "
            f"{data.resolve()}, by file-name hash, val_fraction 0.5)") in capsys.readouterr().err
    mixed = tmp_path / "mixed.txt"
    first, second = [s for s in STEMS if s not in HELD_OUT][:2]
    mixed.write_text(f"{HELD_OUT[0]}\n{first}\n{second}\n")  # one val image, two training images
    assert _eval(hash_model, data, tmp_path / "mixed", "--split-file", str(mixed)) == 3
    assert "warning: 2 of the 3 images scored" in capsys.readouterr().err

    assert _eval(listed_model["out"], data, tmp_path / "listed") == 6  # the images not in the training list
    assert "warning" not in capsys.readouterr().err
    assert _eval(listed_model["out"], data, tmp_path / "listed-all", "--val-fraction", "1") == 16
    assert "warning: 10 of the 16 images scored" in capsys.readouterr().err
    assert _eval(listed_model["out"], data, tmp_path / "train", "--split", "train") == 10
    assert "warning: 10 of the 10 images scored" in capsys.readouterr().err


def test_other_data_gets_no_default_and_no_warning(hash_model, data, tmp_path, capsys):
    copy = save_scenes_as_folder(SyntheticScenes(16, size=32, seed=5), tmp_path / "copy")  # same names, elsewhere
    assert not any(is_held_out(s, 0.1) for s in STEMS)
    assert _eval(hash_model, copy, tmp_path / "copy-eval", "--val-fraction", "1") == 16
    assert "warning" not in capsys.readouterr().err
    # no split flag: a bare folder's rule (0.1, which holds out none of these 16), not the model's 0.5
    assert main(["eval", "--dataset", "folder", "--data-root", str(copy), "--model", str(hash_model)]) == 2
    assert "val_fraction 0.1 holds out none" in capsys.readouterr().err


def _card_eval_command(model: Path) -> list[str]:
    card = (model / "README.md").read_text()
    (line,) = re.findall(r"^digseg eval .*$", card, flags=re.M)
    return shlex.split(line)


@pytest.mark.parametrize("which", ["hash", "listed"])
def test_the_model_cards_eval_command_scores_the_validation_split(which, hash_model, listed_model, data, tmp_path,
                                                                   monkeypatch, capsys):
    model = hash_model if which == "hash" else listed_model["out"]
    command = _card_eval_command(model)
    assert command[:5] == ["digseg", "eval", "--dataset", "folder", "--data-root"] and command[5] == str(data.resolve())
    if which == "hash":
        assert command[6:8] == ["--val-fraction", "0.5"]
    monkeypatch.chdir(tmp_path)  # as written: eval_val/ in the working folder
    assert main(command[1:]) == 0
    assert "warning" not in capsys.readouterr().err
    scored = json.loads((tmp_path / "eval_val" / "metrics.json").read_text())["num_images"]
    assert scored == (len(HELD_OUT) if which == "hash" else 6)
    assert "validation split the model was validated on" in (model / "README.md").read_text()


def test_train_mask_decoder_trains_on_the_models_training_split(listed_model, data, tmp_path, capsys):
    out = tmp_path / "light"
    assert main(["train-mask-decoder", "--model", str(listed_model["out"]), "--output", str(out), "--max-steps", "2",
                 "--batch-size", "2", "--widths", "8,8,8"]) == 0
    facts = ModelCard.load(out / "README.md").data.to_dict()["digseg"]["mask_decoder_training"]
    assert facts["dataset"] == f"folder ({data.resolve()})" and facts["samples"] == len(LISTED)
    assert "light mask decoder" in capsys.readouterr().out
    assert model_training_data(out) == model_training_data(listed_model["out"])  # the record stays
    # another dataset given: the model's split rule is not applied to it
    other = save_scenes_as_folder(SyntheticScenes(4, size=32, seed=9), tmp_path / "other")
    assert main(["train-mask-decoder", "--model", str(listed_model["out"]), "--output", str(tmp_path / "o"),
                 "--dataset", "folder", "--data-root", str(other), "--val-fraction", "0", "--max-steps", "1",
                 "--batch-size", "2", "--widths", "8,8,8"]) == 0
    assert ModelCard.load(tmp_path / "o" / "README.md").data.to_dict()["digseg"]["mask_decoder_training"][
        "samples"] == 4
