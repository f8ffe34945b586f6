"""Tests for digseg.data: image/label IO, synthetic scenes, a folder of pairs read by `FolderPairs`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from digseg.data.domains import FolderPairs
from digseg.data.io import image_to_tensor, load_image, load_label
from digseg.data.synthetic import (
    SYNTHETIC_CLASSES,
    SyntheticScenes,
    make_scene,
    save_scenes_as_folder,
)
from digseg.errors import DataError, DigsegError
from digseg.pipelines.sliding import to_image_list


# ----------------------------------------------------------------------------- synthetic scenes
def test_make_scene_shapes_and_dtypes() -> None:
    image, label = make_scene(np.random.default_rng(0), size=48)
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    assert label.shape == (48, 48) and label.dtype == np.uint8


def test_scene_determinism_and_seed_difference() -> None:
    a, b = SyntheticScenes(10, seed=0), SyntheticScenes(10, seed=0)
    for i in (7, 3, 0):  # access order must not matter
        assert np.array_equal(a.scene(i)[0], b.scene(i)[0])
        assert np.array_equal(a.scene(i)[1], b.scene(i)[1])
    assert torch.equal(a[4]["image"], SyntheticScenes(10, seed=0)[4]["image"])
    other = SyntheticScenes(10, seed=1)
    for i in range(10):
        assert not np.array_equal(a.scene(i)[0], other.scene(i)[0])
    assert not np.array_equal(a.scene(0)[0], a.scene(1)[0])


def test_labels_in_range_and_all_classes_appear() -> None:
    seen: set[int] = set()
    kinds_per_scene = []
    for i in range(50):
        _, label = make_scene(np.random.default_rng([0, i]))
        values = set(np.unique(label).tolist())
        assert values <= set(range(len(SYNTHETIC_CLASSES)))
        assert values - {0}, f"scene {i} has no shape"
        kinds_per_scene.append(len(values - {0}))
        seen |= values
    assert seen == {0, 1, 2, 3}
    assert np.mean([k >= 2 for k in kinds_per_scene]) > 0.5  # usually several kinds per scene


def test_labels_align_with_image_content() -> None:
    # Each shape is one saturated colour plus mild shading/noise, so its pixels are much more uniform
    # than the textured background, and differ from the background's mean colour.
    for i in range(20):
        image, label = make_scene(np.random.default_rng([3, i]))
        img = image.astype(np.float64)
        bg = img[label == 0]
        for k in set(np.unique(label).tolist()) - {0}:
            shape = img[label == k]
            if len(shape) < 30:
                continue
            assert np.linalg.norm(shape.mean(0) - bg.mean(0)) > 30.0
        # Pixels right at a shape boundary change colour: labels sit on the drawn shapes.
        edge = label[:, 1:] != label[:, :-1]
        jump = np.abs(img[:, 1:] - img[:, :-1]).sum(-1)
        assert jump[edge].mean() > 3 * jump[~edge].mean()


def test_make_scene_is_fast() -> None:
    import time

    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(100):
        make_scene(rng)
    assert time.perf_counter() - start < 2.0  # >= 50 scenes/s even on a loaded CI machine


def test_synthetic_dataset_items() -> None:
    ds = SyntheticScenes(5, size=32, seed=2)
    assert len(ds) == 5 and ds.class_names == list(SYNTHETIC_CLASSES) and ds.ignore_index == 255
    item = ds[3]
    assert item["stem"] == "scene_00003"
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["image"].min() >= -1.0 and item["image"].max() <= 1.0
    assert item["label"].shape == (32, 32) and item["label"].dtype == torch.int64
    assert int(item["label"].max()) < len(SYNTHETIC_CLASSES)
    assert torch.equal(ds[-1]["label"], ds[4]["label"])
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(DataError):
        SyntheticScenes(-1)


# ----------------------------------------------------------------------------- image -> tensor
def test_one_image_to_tensor_conversion(tmp_path: Path) -> None:
    """A uint8 image reaches the model as float32 [3, H, W] = value / 127.5 - 1, bit for bit, by every door:
    `image_to_tensor` (synthetic scenes, augmentation), dataset items, and the pipeline's PIL, path and array inputs."""
    array = np.random.default_rng(0).integers(0, 256, (23, 37, 3), dtype=np.uint8)
    array.reshape(-1)[:256] = np.arange(256)  # every value
    expected = torch.from_numpy(array.astype(np.float32) / np.float32(127.5) - np.float32(1.0)).permute(2, 0, 1)
    tensor = image_to_tensor(array)
    assert tensor.dtype == torch.float32 and tensor.is_contiguous() and torch.equal(tensor, expected)
    assert tensor.min() == -1.0 and tensor.max() == 1.0
    image = Image.fromarray(array)
    image.save(tmp_path / "x.png")
    alpha = np.concatenate([array, np.full(array.shape[:2] + (1,), 7, np.uint8)], axis=2)
    for given in (image, image.convert("RGBA"), tmp_path / "x.png", str(tmp_path / "x.png"), array, alpha):
        out = to_image_list(given)[0]
        assert out.dtype == torch.float32 and out.is_contiguous() and torch.equal(out, expected), type(given)
    grey = array[..., 0]
    assert torch.equal(to_image_list(grey)[0], to_image_list(Image.fromarray(grey))[0])
    assert torch.equal(to_image_list(grey)[0][2], expected[0])
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    image.save(tmp_path / "images" / "x.png")
    Image.fromarray(np.zeros((23, 37), np.uint8)).save(tmp_path / "masks" / "x.png")
    (tmp_path / "classes.txt").write_text("background\nthing\n")
    assert torch.equal(FolderPairs(tmp_path, val_fraction=1)[0]["image"], expected)  # SegmentationDataset.__getitem__
    scenes = SyntheticScenes(2, size=16, seed=1)
    assert torch.equal(scenes[1]["image"], image_to_tensor(scenes.scene(1)[0]))


# ----------------------------------------------------------------------------- folder round trip
@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return save_scenes_as_folder(SyntheticScenes(4, size=32, seed=5), tmp_path / "ds")


def test_folder_round_trip(folder: Path) -> None:
    src = SyntheticScenes(4, size=32, seed=5)
    ds = FolderPairs(folder, val_fraction=1)  # val = every image
    assert ds.class_names == list(SYNTHETIC_CLASSES) and ds.ignore_index == 255 and len(ds) == 4
    for i in range(4):
        a, b = src[i], ds[i]
        assert a["stem"] == b["stem"]
        assert torch.equal(a["label"], b["label"]) and b["label"].dtype == torch.int64
        assert torch.equal(a["image"], b["image"]) and b["image"].dtype == torch.float32  # PNG: lossless


def test_folder_resize_and_ignore(folder: Path) -> None:
    label = np.asarray(Image.open(folder / "masks" / "scene_00000.png")).copy()
    label[:4] = 255  # ignore pixels are allowed
    Image.fromarray(label).save(folder / "masks" / "scene_00000.png")
    Image.fromarray(label).save(folder / "masks" / "orphan.png")  # mask without image: ignored
    ds = FolderPairs(folder, size=20, val_fraction=1)
    assert len(ds) == 4
    item = ds[0]
    assert item["image"].shape == (3, 20, 20) and item["label"].shape == (20, 20)
    assert set(item["label"].unique().tolist()) <= {0, 1, 2, 3, 255}
    assert (item["label"][0] == 255).all()


def _raises_naming(name: str, fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert name in msg and "\n" not in msg, msg
    assert isinstance(info.value, DigsegError)
    return msg


def test_corrupt_image(folder: Path) -> None:
    (folder / "images" / "scene_00001.png").write_bytes(b"\x00garbage" * 20)
    ds = FolderPairs(folder, val_fraction=1)  # construction only checks file presence
    _raises_naming("scene_00001.png", ds.__getitem__, 1)


def test_truncated_image(tmp_path: Path) -> None:
    p = tmp_path / "trunc.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p)
    p.write_bytes(p.read_bytes()[:300])
    _raises_naming("trunc.png", load_image, p)


def test_text_file_named_jpg(folder: Path) -> None:
    (folder / "images" / "notes.jpg").write_text("this is not an image\n")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / "masks" / "notes.png")
    ds = FolderPairs(folder, val_fraction=1)
    idx = [s.stem for s in ds.samples].index("notes")
    _raises_naming("notes.jpg", ds.__getitem__, idx)


def test_missing_files(tmp_path: Path) -> None:
    _raises_naming("nope.png", load_image, tmp_path / "nope.png")
    _raises_naming("nope.png", load_label, tmp_path / "nope.png")
    _raises_naming("missing_root", FolderPairs, tmp_path / "missing_root")


def test_classes_txt_problems(folder: Path) -> None:
    (folder / "classes.txt").write_text("\n  \n")
    _raises_naming("classes.txt", FolderPairs, folder)
    (folder / "classes.txt").unlink()
    _raises_naming("classes.txt", FolderPairs, folder)
    (folder / "classes.txt").write_text("  background \n\ncircle\nsquare\ntriangle\n")
    assert FolderPairs(folder, val_fraction=1).class_names == list(SYNTHETIC_CLASSES)
    (folder / "classes.txt").write_text("".join(f"class {i}\n" for i in range(256)))
    assert "256 classes" in _raises_naming("classes.txt", FolderPairs, folder)  # mask value 255 means ignore


# ----------------------------------------------------------------------------- io details
def test_load_label_palette_gives_indices(tmp_path: Path) -> None:
    idx = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    img = Image.fromarray(idx).convert("P")
    img.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10] + [0] * (256 * 3 - 9))
    img.putdata(idx.ravel().tolist())
    assert img.mode == "P"
    img.save(tmp_path / "p.png")
    out = load_label(tmp_path / "p.png")
    assert out.shape == (2, 3) and np.array_equal(out, idx)


def test_load_label_modes(tmp_path: Path) -> None:
    v16 = np.array([[0, 300], [846, 65535]], np.uint16)
    Image.fromarray(v16).save(tmp_path / "l16.png")
    out = load_label(tmp_path / "l16.png")
    assert np.array_equal(out.astype(np.int64), v16.astype(np.int64))
    grey = np.array([[0, 3], [5, 255]], np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "rgb_grey.png")
    assert np.array_equal(load_label(tmp_path / "rgb_grey.png"), grey)
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    Image.fromarray(colour).save(tmp_path / "rgb.png")
    assert "single-channel" in _raises_naming("rgb.png", load_label, tmp_path / "rgb.png")


def test_load_image_modes(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 5), 77, np.uint8)).save(tmp_path / "g.png")
    Image.fromarray(np.full((4, 5, 4), 200, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((4, 5), 4095, np.uint16)).save(tmp_path / "g16.png")
    for name in ("g.png", "a.png", "g16.png"):
        img = load_image(tmp_path / name)
        assert img.mode == "RGB" and img.size == (5, 4)
    assert np.asarray(load_image(tmp_path / "g.png"))[0, 0].tolist() == [77, 77, 77]


