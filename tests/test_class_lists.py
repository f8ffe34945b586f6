"""Class lists: the one background test (`digseg.prompts.is_background`) and the one class-file rule
(`digseg.data.io.read_class_list`), checked through every place that relies on them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from digseg.dataset_eval import _query_kwargs
from digseg.evaluation import EStep, evaluate_binary
from digseg.prompts import is_background
from digseg.training.batches import LatentBatcher
from digseg.visualize import tints_class_zero


# ----------------------------------------------------------------------------- background
@pytest.mark.parametrize("name, expected", [
    ("background", True), ("Background", True), ("BACKGROUND", True), ("  background\t", True), (" Background ", True),
    ("backgrounds", False), ("background, void", False), ("back ground", False), ("foreground", False), ("", False),
])
def test_is_background(name, expected):
    assert is_background(name) is expected


class _RecordingPipe:
    """Stands in for a pipeline: records the prompts asked and answers "all background"."""

    def __init__(self, class_names=None):
        self.config = SimpleNamespace(class_names=class_names)
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
