"""Shared listing / pairing / lookup-table helpers of the dataset readers (digseg.data.base)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from digseg.data.base import (
    list_files,
    make_lut,
    pair_files,
    pick_root,
    remap,
    require_dir,
)
from digseg.data.io import load_label
from digseg.errors import DataError


class Reader:  # the attributes the helpers use for their messages
    name = "toy"
    split = "val"
    layout_hint = "expected img/*.png"


DS = Reader()


def touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def test_pick_root_and_require_dir(tmp_path):
    (tmp_path / "Inner").mkdir()
    assert pick_root(tmp_path, "Missing", "Inner") == tmp_path / "Inner"
    assert pick_root(tmp_path, "Missing") == tmp_path
    assert require_dir(DS, tmp_path, "image") == tmp_path
    with pytest.raises(DataError, match=r"toy: label folder for split 'val' not found: .*nope \(expected img"):
        require_dir(DS, tmp_path / "nope", "label")


def test_list_files_sorted_filtered_and_stems(tmp_path):
    img = touch(tmp_path / "img", "b.PNG", "a.jpg", ".hidden.png", "notes.txt", "c_sat.jpg")
    (img / "d.png").mkdir()  # a folder is not a file
    assert list(list_files(DS, img, (".png", ".jpg"))) == ["a", "b", "c_sat"]
    assert list_files(DS, img, ("_sat.jpg",)) == {"c": img / "c_sat.jpg"}  # the matched suffix is stripped
    other = touch(tmp_path / "other", "0.png")
    assert list(list_files(DS, [img, other], (".png",))) == ["b", "0"]  # per folder, in the order given


def test_list_files_errors_name_paths(tmp_path):
    with pytest.raises(DataError, match=r"image folder for split 'val' not found: .*missing"):
        list_files(DS, tmp_path / "missing")
    img = touch(tmp_path / "img", "a.jpg", "a.png")
    with pytest.raises(DataError, match=r"two image files share the stem 'a': .*a\.(jpg|png) and .*a\.(png|jpg)"):
        list_files(DS, img)
    with pytest.raises(DataError, match=r"two image files share the stem 'a'"):
        list_files(DS, [touch(tmp_path / "x", "a.png"), touch(tmp_path / "y", "a.png")])


def test_pair_files_prefers_first_candidate_and_reports_missing(tmp_path):
    img = touch(tmp_path / "img", "a.png", "b.png", "c.png", "d.png")
    touch(tmp_path / "lab", "a_fine.png", "a.png", "b.png")
    images = list_files(DS, img)

    def candidates(stem, image):
        return [tmp_path / "lab" / f"{stem}_fine.png", tmp_path / "lab" / f"{stem}.png"]

    with pytest.raises(DataError, match=r"toy: image .*c\.png has no label \(expected .*c_fine\.png or .*lab/c\.png\)"
                                        r" \(1 more images without labels\)"):
        pair_files(DS, images, candidates)
    del images["c"], images["d"]
    samples = pair_files(DS, images, candidates)
    assert [(s.stem, s.image.name, s.label.name) for s in samples] == [("a", "a.png", "a_fine.png"),
                                                                       ("b", "b.png", "b.png")]
    # a label folder that does not exist: every image lacks its label
    with pytest.raises(DataError, match=r"a\.png has no label \(expected .*nowhere/a\.png\) \(1 more"):
        pair_files(DS, images, lambda stem, _: [tmp_path / "nowhere" / f"{stem}.png"])


def test_pair_files_by_label(tmp_path):
    labels = list_files(DS, touch(tmp_path / "lab", "a.png", "b.png"), (".png",), "label")
    touch(tmp_path / "img", "a.jpg")
    with pytest.raises(DataError, match=r"toy: label .*b\.png has no image \(expected .*img/b\.jpg\)$"):
        pair_files(DS, labels, lambda stem, _: [tmp_path / "img" / f"{stem}.jpg"], by_label=True)
    samples = pair_files(DS, {"a": labels["a"]}, lambda stem, _: [tmp_path / "img" / f"{stem}.jpg"],
                         by_label=True)
    assert samples[0].image == tmp_path / "img" / "a.jpg" and samples[0].label == labels["a"]


def test_make_lut_and_remap(tmp_path):
    lut = make_lut({1: 0, 2: 1, 0: 255}, default=-1)
    assert lut.dtype == np.int64 and lut.shape == (256,) and lut[3] == -1
    raw = np.array([[0, 1, 2]], np.uint8)
    assert remap(DS, raw, lut, tmp_path / "x.png").tolist() == [[255, 0, 1]]
    with pytest.raises(DataError, match=r"label .*x\.png has values \[3, 300\] that are not valid .* of toy"):
        remap(DS, np.array([1, 3, 300], np.uint16), lut, tmp_path / "x.png")
    lenient = remap(DS, np.array([1, 3, 300, 65535], np.uint16), lut, tmp_path / "x.png", strict=False)
    assert lenient.tolist() == [0, 255, 255, 255]
    assert remap(DS, np.array([3, 2], np.uint8), make_lut({2: 7}), tmp_path / "x.png").tolist() == [255, 7]


def test_load_label_first_channel(tmp_path):
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0], rgb[..., 1] = 200, 7
    Image.fromarray(rgb).save(tmp_path / "m.png")
    assert load_label(tmp_path / "m.png", first_channel=True).tolist() == [[200] * 3] * 2
    with pytest.raises(DataError, match=r"gone\.png"):
        load_label(tmp_path / "gone.png", first_channel=True)
