"""Class lists: the one background test (`digseg.pipelines.prompts.is_background`) and the one class-file rule
(`digseg.data.io.read_class_list`), checked through every place that relies on them."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from digseg.cli import main
from digseg.data.base import read_class_file
from digseg.data.domains import FolderPairs
from digseg.data.io import read_class_list
from digseg.evaluation.dataset_eval import _query_kwargs
from digseg.errors import DataError
from digseg.evaluation.estep import EStep, evaluate_binary
from digseg.pipelines.prompts import is_background, synonyms
from digseg.training.batches import LatentBatcher
from digseg.pipelines.visualize import tints_class_zero


# ----------------------------------------------------------------------------- background
@pytest.mark.parametrize("name, expected", [
    ("background", True), ("Background", True), ("BACKGROUND", True), ("  background\t", True), (" Background ", True),
    ("backgrounds", False), ("background, void", False), ("back ground", False), ("foreground", False), ("", False),
])
def test_is_background(name, expected):
    assert is_background(name) is expected


class _RecordingPipe:
    """Stands in for a pipeline: records the prompts asked and answers "all background"."""

    def __init__(self, class_names=None, task=None):
        self.config = SimpleNamespace(class_names=class_names, task=task)
        self.prompts: list[str] = []

    def __call__(self, images, prompt=None, **_):
        self.prompts.append(prompt)
        return SimpleNamespace(labels=[np.zeros(img.shape[-2:], np.int64) for img in images])


class _Names:
    def __init__(self, class_names):
        self.class_names = class_names
        self.ignore_index = 255

    def __len__(self):
        return 1

    def __getitem__(self, i):
        return {"image": torch.zeros(3, 4, 4), "label": torch.zeros(4, 4, dtype=torch.int64)}


@pytest.mark.parametrize("first", ["background", " Background ", "BACKGROUND"])
def test_every_consumer_agrees_on_the_background(first):
    names = [first, "cat"]
    # training never queries it on its own
    assert LatentBatcher(None, names, None, "binary", "{}", 0.0, cache=False).queryable == [1]
    # overlays leave it untinted
    assert not tints_class_zero(names)
    # a 2-class dataset starting with it is asked one binary prompt
    assert _query_kwargs(_RecordingPipe(), _Names(names)) == {"prompt": "cat"}
    # binary evaluation skips it
    pipe = _RecordingPipe()
    evaluate_binary(pipe, _Names(names + ["dog"]), EStep(1, 1))
    assert pipe.prompts == ["cat", "dog"]


def test_other_first_classes_are_queried():
    names = ["sky", "cat"]
    assert LatentBatcher(None, names, None, "binary", "{}", 0.0, cache=False).queryable == [0, 1]
    assert tints_class_zero(names)
    assert _query_kwargs(_RecordingPipe(), _Names(names)) == {"classes": names}


@pytest.mark.parametrize("task, expected", [(None, {}), ("palette", {}), ("both", {}), ("binary", "binary")])
def test_a_model_is_asked_as_it_was_trained(task, expected):
    """A model trained on the dataset's own classes is asked in one palette pass, unless it learned binary
    queries only: then one prompt per class (a background-vs-X dataset: one prompt)."""
    for names, binary in ((["background", "road"], {"prompt": "road"}), (["soil", "crop", "weed"], None)):
        binary = binary or {"classes": names}
        assert _query_kwargs(_RecordingPipe(names, task), _Names(names)) == (binary if expected == "binary" else {})


# ----------------------------------------------------------------------------- the class-file rule
def _write(tmp_path: Path, data: str | bytes, name: str = "classes.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def test_one_class_per_line_in_order_stripped(tmp_path):
    names = read_class_list(_write(tmp_path, "background\r\n  cat \n\tdog\t\nbird"))  # CRLF, no final newline
    assert names == ["background", "cat", "dog", "bird"]


def test_blank_lines_are_skipped_and_do_not_take_an_id(tmp_path):
    assert read_class_list(_write(tmp_path, "\nbackground\n\n   \ncat\n\n")) == ["background", "cat"]


def test_comment_lines_are_skipped(tmp_path):
    text = "# my classes\nbackground\n   # indented comment\ncat\nclass #3\n"
    assert read_class_list(_write(tmp_path, text)) == ["background", "cat", "class #3"]  # '#' inside a name stays


def test_a_line_of_synonyms_is_one_class(tmp_path):
    names = read_class_list(_write(tmp_path, "wall, walls\nbuilding,edifice\nsky\n"))
    assert names == ["wall, walls", "building,edifice", "sky"]  # kept as written
    assert [synonyms(n) for n in names] == [["wall", "walls"], ["building", "edifice"], ["sky"]]


def test_utf8_with_or_without_a_byte_order_mark(tmp_path):
    text = "café\nnaïve\n日本\n"
    assert read_class_list(_write(tmp_path, text)) == ["café", "naïve", "日本"]
    assert read_class_list(_write(tmp_path, "\ufeff" + text)) == ["café", "naïve", "日本"]  # BOM dropped
    with pytest.raises(DataError, match="classes.txt"):
        read_class_list(_write(tmp_path, "caf\xe9\n".encode("latin-1")))  # not UTF-8


@pytest.mark.parametrize("text, message", [
    ("cat\ndog\ncat\n", "lists 'cat' twice"),
    ("\n  \n", "lists nothing"),
    ("# only a comment\n", "lists nothing"),
])
def test_bad_class_files_name_the_file(tmp_path, text, message):
    with pytest.raises(DataError, match=message) as info:
        read_class_list(_write(tmp_path, text))
    assert "classes.txt" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(DataError, match="class file not found: .*missing.txt"):
        read_class_list(tmp_path / "missing.txt")


def test_every_reader_follows_the_rule(tmp_path, capsys):
    """A dataset's classes.txt, `digseg predict --classes-file` and the shipped lists all read by the rule."""
    text = "\ufeff# comment\n background\n\nwall, walls\n"
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "masks" / "a.png")
    _write(root, text)
    assert FolderPairs(root, split="train").class_names == ["background", "wall, walls"]
    _write(root, "cat\ncat\n")
    with pytest.raises(DataError, match="twice"):
        FolderPairs(root, split="train")
    # the CLI reads --classes-file before loading any model
    assert main(["predict", "--model", str(tmp_path / "no-model"), "--image", str(tmp_path), "--classes-file",
                 str(root / "classes.txt"), "--output", str(tmp_path / "out")]) == 2
    assert "lists 'cat' twice" in capsys.readouterr().err
    with resources.as_file(resources.files("digseg.data").joinpath("classes", "ade20k_847.txt")) as shipped:
        assert read_class_file("ade20k_847.txt") == read_class_list(shipped)
        assert read_class_file("ade20k_847.txt") == [l.strip() for l in shipped.read_text("utf-8").splitlines()]
