"""Splits of the `folder` dataset (digseg.data.splits, FolderPairs): split folders, a flat folder's held-out
fraction by file-name hash, split files, their precedence, the errors, and the flags and config keys that pass them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digseg.cli.commands import _train_config, main
from digseg.cli.parser import build_parser
from digseg.data.domains import FolderPairs
from digseg.data.registry import build_dataset
from digseg.data.splits import DEFAULT_VAL_FRACTION, is_held_out, split_options
from digseg.errors import ConfigError, DataError
from digseg.training.config import TrainConfig
from digseg.training.run import build_dataset as build_training_dataset
from digseg.training.run import validation_split


def write_pairs(root: Path, names, split_folder: str = "") -> Path:
    """Tiny image/mask pairs images/[<split_folder>/]<name>.png and masks/..., and classes.txt, under `root`."""
    for where in ("images", "masks"):
        (root / where / split_folder).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("background\nthing\n")
    for name in names:
        Image.fromarray(np.full((2, 2, 3), 9, np.uint8)).save(root / "images" / split_folder / f"{name}.png")
        Image.fromarray(np.zeros((2, 2), np.uint8)).save(root / "masks" / split_folder / f"{name}.png")
    return root


def stems(dataset: FolderPairs) -> list[str]:
    return [sample.stem for sample in dataset.samples]


def one_line_error(kind, fn, *args, **kwargs) -> str:
    with pytest.raises(kind) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


NAMES = [f"img_{i:04d}" for i in range(200)]


# ---------------------------------------------------------------------------------------------- layouts


def test_split_folders_give_their_images(tmp_path):
    root = write_pairs(tmp_path / "data", ["a", "b"], "train")
    write_pairs(root, ["c"], "val")
    train, val = FolderPairs(root, split="train"), FolderPairs(root, split="val")
    assert stems(train) == ["a", "b"] and stems(val) == ["c"]
    assert val.samples[0].label == root / "masks" / "val" / "c.png"
    assert repr(val) == f"FolderPairs({str(root)!r}, split='val'): 1 image in images/val/"
    message = one_line_error(DataError, FolderPairs, root, split="test")  # no images/test/
    assert "images/test" in message.replace("\\", "/") and "train, val" in message
    write_pairs(root, ["d"], "test")
    assert stems(FolderPairs(root, split="test")) == ["d"]


def test_flat_folder_holds_out_a_fraction_by_file_name_hash(tmp_path):
    root = write_pairs(tmp_path / "data", NAMES[:40])
    train = FolderPairs(root, split="train", val_fraction=0.3)
    val = FolderPairs(root, split="val", val_fraction=0.3)
    assert not set(stems(train)) & set(stems(val)) and sorted(stems(train) + stems(val)) == NAMES[:40]
    assert set(stems(val)) == {s for s in NAMES[:40] if is_held_out(s, 0.3)} and 0 < len(val) < 40
    write_pairs(root, ["a_new_image", "zz_another"])  # adding images moves no existing image
    assert set(stems(val)) <= set(stems(FolderPairs(root, split="val", val_fraction=0.3)))
    assert set(stems(train)) <= set(stems(FolderPairs(root, split="train", val_fraction=0.3)))
    default = FolderPairs(root, split="train")
    assert default.val_fraction == DEFAULT_VAL_FRACTION == 0.1
    assert "by file-name hash, val_fraction 0.1" in repr(default)


def test_the_val_share_is_close_to_the_fraction(tmp_path):
    root = write_pairs(tmp_path / "data", NAMES)
    for fraction in (0.1, 0.25, 0.5):
        share = len(FolderPairs(root, split="val", val_fraction=fraction)) / len(NAMES)
        assert abs(share - fraction) < 0.06, (fraction, share)
    assert len(FolderPairs(root, split="val", val_fraction=1)) == len(FolderPairs(root, split="train", val_fraction=0)) == 200


def test_a_split_file_selects_exactly_its_stems(tmp_path):
    root = write_pairs(tmp_path / "data", NAMES[:10])
    listed = tmp_path / "mine.txt"
    listed.write_text("# held out by hand\nimg_0007\n\n  img_0002  \nimg_0007\n")
    for split in ("val", "train", "test"):  # the file names the images of whichever split is read
        assert stems(FolderPairs(root, split=split, split_file=listed)) == ["img_0007", "img_0002"]
    assert "listed in" in repr(FolderPairs(root, split_file=listed))
    listed.write_text("img_0001\nnot_there\nnor_this\n")
    message = one_line_error(DataError, FolderPairs, root, split_file=listed)
    assert "'not_there'" in message and "1 more" in message
    assert "not found" in one_line_error(DataError, FolderPairs, root, split_file=tmp_path / "missing.txt")


def test_precedence_split_file_then_splits_txt_then_split_folders_then_hash(tmp_path):
    root = write_pairs(tmp_path / "data", ["a", "b"], "train")
    write_pairs(root, ["c", "d"], "val")
    assert stems(FolderPairs(root, split="val")) == ["c", "d"]  # split folders
    (root / "splits").mkdir()
    (root / "splits" / "val.txt").write_text("d\na\n")
    (root / "splits" / "train.txt").write_text("b\n")
    assert stems(FolderPairs(root, split="val")) == ["d", "a"]  # splits/<split>.txt before the folders
    assert stems(FolderPairs(root, split="train")) == ["b"]
    given = tmp_path / "given.txt"
    given.write_text("c\n")
    assert stems(FolderPairs(root, split="val", split_file=given)) == ["c"]  # a given file before all
    message = one_line_error(DataError, FolderPairs, root, split="test")
    assert "test.txt" in message and "train.txt, val.txt" in message
    flat = write_pairs(tmp_path / "flat", NAMES[:40])
    assert stems(FolderPairs(flat, split="val", val_fraction=0.5)) == [s for s in NAMES[:40] if is_held_out(s, 0.5)]


def test_a_training_list_leaves_its_images_out_of_every_other_split(tmp_path):
    flat = write_pairs(tmp_path / "flat", NAMES[:10])
    listed = tmp_path / "train.txt"
    listed.write_text("img_0001\nimg_0004\n")
    assert stems(FolderPairs(flat, split="train", train_split_file=listed)) == ["img_0001", "img_0004"]
    val = FolderPairs(flat, split="val", train_split_file=listed, size=None)
    assert stems(val) == [n for n in NAMES[:10] if n not in ("img_0001", "img_0004")]  # not the hash's share
    assert val.split_by == "split file" and "not listed in the training list" in repr(val)
    assert "train and val only" in one_line_error(DataError, FolderPairs, flat, split="test", train_split_file=listed)
    folders = write_pairs(tmp_path / "folders", ["a", "b"], "train")
    write_pairs(folders, ["c", "d"], "val")
    listed.write_text("a\nd\n")  # lists a val image too: it is left out of val
    val = FolderPairs(folders, split="val", train_split_file=listed)
    assert stems(val) == ["c"] and "less the 1 listed in the training list" in repr(val)
    listed.write_text("\n".join(NAMES[:10]) + "\n")
    message = one_line_error(DataError, FolderPairs, flat, split="val", train_split_file=listed)
    assert "empty" in message and "names all of its 10 images" in message


# ---------------------------------------------------------------------------------------------- errors


def test_an_empty_split_says_how_to_fix_it(tmp_path):
    root = write_pairs(tmp_path / "tiny", ["a", "b", "c"])  # positions 0.53, 0.91, 0.52: none below 0.1
    message = one_line_error(DataError, FolderPairs, root, split="val")
    assert "empty" in message and "a larger --val-fraction" in message and "split file" in message
    assert "a smaller --val-fraction" in one_line_error(DataError, FolderPairs, root, split="train", val_fraction=1)
    assert "train and val only" in one_line_error(DataError, FolderPairs, root, split="test")
    for bad in (1.5, -0.1, "0.2", True):
        assert "0 to 1" in one_line_error(ConfigError, FolderPairs, root, split="train", val_fraction=bad)


def test_split_options_belong_to_the_folder_dataset():
    assert split_options("folder") == {} and split_options("cityscapes") == {}
    assert split_options("folder", 0.2) == {"val_fraction": 0.2}
    assert split_options("folder", split_file="v.txt") == {"split_file": "v.txt"}
    assert split_options("folder", train_split_file="t.txt") == {"train_split_file": "t.txt"}
    assert "not both" in one_line_error(ConfigError, split_options, "folder", 0.2, "v.txt")
    assert "not both" in one_line_error(ConfigError, split_options, "folder", 0.2, train_split_file="t.txt")
    assert "give one" in one_line_error(ConfigError, split_options, "folder", split_file="v.txt", train_split_file="t")
    assert "own splits" in one_line_error(ConfigError, split_options, "cityscapes", 0.2)
    assert "own splits" in one_line_error(ConfigError, build_dataset, "synthetic", split_file="v.txt")
    assert "0 to 1" in one_line_error(ConfigError, split_options, "folder", 2.0)


# ---------------------------------------------------------------------------------------------- commands


def test_cli_eval_scores_only_the_held_out_images(tmp_path, capsys):
    root = write_pairs(tmp_path / "data", NAMES[:60])
    preds = tmp_path / "preds"
    preds.mkdir()
    for mask in (root / "masks").glob("*.png"):  # perfect predictions for every image
        Image.open(mask).save(preds / mask.name)

    def scored(*flags: str) -> int:
        out = tmp_path / "eval"
        assert main(["eval", "--dataset", "folder", "--data-root", str(root), "--split", "val",
                     "--predictions", str(preds), "--output", str(out), *flags]) == 0
        return json.loads((out / "metrics.json").read_text())["num_images"]

    held_out = [s for s in NAMES[:60] if is_held_out(s, DEFAULT_VAL_FRACTION)]
    assert 0 < len(held_out) < 60
    assert scored() == len(held_out)
    assert scored("--val-fraction", "0.5") == sum(is_held_out(s, 0.5) for s in NAMES[:60])
    assert scored("--val-fraction", "1") == 60
    listed = tmp_path / "val.txt"
    listed.write_text("img_0003\nimg_0004\n")
    assert scored("--split-file", str(listed)) == 2
    assert main(["eval", "--dataset", "cityscapes", "--data-root", str(root), "--predictions", str(preds),
                 "--val-fraction", "0.2"]) == 2
    assert "own splits" in capsys.readouterr().err


def test_training_config_takes_the_split_options(tmp_path):
    root = write_pairs(tmp_path / "data", NAMES[:40])
    config = TrainConfig.load(None, {"data": {"dataset": "folder", "data_root": str(root), "val_fraction": 0.3}})
    assert config.data.val_fraction == 0.3 and config.data.split_file is None
    train = build_training_dataset(config.data, seed=0)  # training reads split "train": the images not held out
    assert train.split == "train" and stems(train) == [s for s in NAMES[:40] if not is_held_out(s, 0.3)]
    preview = validation_split(config)  # TensorBoard previews read the held-out images
    assert preview is not None and stems(preview) == [s for s in NAMES[:40] if is_held_out(s, 0.3)]

    listed = tmp_path / "train.txt"
    listed.write_text("img_0001\nimg_0002\n")
    args = build_parser().parse_args(["train", "--dataset", "folder", "--data-root", str(root),
                                      "--split-file", str(listed)])
    config = _train_config(args)
    assert config.data.val_fraction is None and config.data.split_file == str(listed)
    assert stems(build_training_dataset(config.data, seed=0)) == ["img_0001", "img_0002"]
    val = validation_split(config)  # the file names train: val is every other image
    assert stems(val) == [s for s in NAMES[:40] if s not in ("img_0001", "img_0002")]
    assert "not listed in the training list" in repr(val)
    args = build_parser().parse_args(["train", "--dataset", "folder", "--data-root", str(root),
                                      "--val-fraction", "0.3", "--split-file", str(listed)])
    with pytest.raises(ConfigError, match="not both"):  # val would be the unlisted images, not the fraction
        _train_config(args)
    with pytest.raises(ConfigError, match="0 to 1"):
        TrainConfig.load(None, {"data": {"dataset": "folder", "val_fraction": 1.5}})
    with pytest.raises(ConfigError, match="own splits"):
        TrainConfig.load(None, {"data": {"dataset": "synthetic", "val_fraction": 0.2}})
