"""Training augmentation (digseg.data.augment): alignment, crop rule, padding, sizes, determinism, config."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from digseg.data import augment
from digseg.data.augment import (AUGMENT_PRESETS, CROP_TRIES, IMAGE_PAD_VALUE, NUM_DRAWS, Augmentation,
                                 apply_augmentation, augmentation_for, photometric_distortion, rescale_size)
from digseg.data.registry import dataset_names
from digseg.errors import ConfigError

IGNORE = 255
PALETTE = np.array([[230, 30, 30], [30, 200, 40], [40, 60, 230], [240, 220, 30]], dtype=np.uint8)
ONE_LEVEL = 1.0 / 127.5  # one uint8 step in the [-1, 1] output


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def blocks() -> tuple[Image.Image, np.ndarray]:
    """96x64 image of 16 px blocks whose colour is PALETTE[class]; one block is ignore (painted grey)."""
    yy, xx = np.mgrid[0:64, 0:96]
    label = ((xx // 16) + 2 * (yy // 16)) % 4
    label[16:32, 32:48] = IGNORE
    image = np.where((label == IGNORE)[..., None], np.uint8(128), PALETTE[np.minimum(label, 3)])
    return Image.fromarray(image.astype(np.uint8)), label.astype(np.int64)


def interior(label: np.ndarray, r: int = 2) -> np.ndarray:
    """Pixels whose (2r+1)^2 neighbourhood holds one class, not ignore, at least r from the crop's edges."""
    windows = np.lib.stride_tricks.sliding_window_view(label, (2 * r + 1, 2 * r + 1))  # [h-2r, w-2r, k, k]
    flat = windows.reshape(*windows.shape[:2], -1)
    same = (flat == flat[..., :1]).all(-1) & (flat[..., 0] != IGNORE)
    mask = np.zeros(label.shape, dtype=bool)
    mask[r:-r, r:-r] = same
    return mask


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return ((image.numpy().transpose(1, 2, 0) + 1.0) * 127.5).round().astype(np.int64)  # [h, w, 3]


GEOMETRY = Augmentation(scale=(96, 48), ratio_range=(0.5, 2.0), crop_size=(32, 48), flip_prob=0.5, vflip_prob=0.5,
                        photometric=False)


def test_image_and_label_stay_aligned(blocks):
    image, label = blocks
    flips = set()
    for seed in range(24):
        x, y = apply_augmentation(image, label, GEOMETRY, gen(seed), IGNORE)
        pixels, target = to_uint8(x), y.numpy()
        inside = interior(target)
        assert inside.sum() > 20
        expected = PALETTE[target[inside]]
        assert np.abs(pixels[inside] - expected).max() <= 1, f"seed {seed}: colours do not match the labels"
        flips.add(seed % 2)
    assert flips == {0, 1}


def test_photometric_changes_colours_only(blocks):
    image, label = blocks
    photo = dataclasses.replace(GEOMETRY, photometric=True)
    changed = 0
    for seed in range(12):
        x0, y0 = apply_augmentation(image, label, GEOMETRY, gen(seed), IGNORE)
        x1, y1 = apply_augmentation(image, label, photo, gen(seed), IGNORE)
        assert torch.equal(y0, y1), "photometric distortion moved the geometry"
        changed += not torch.equal(x0, x1)
        assert x1.min() >= -1.0 and x1.max() <= 1.0
        p0, p1 = to_uint8(x0), to_uint8(x1)
        for colour in PALETTE:  # a pointwise colour map: one input colour -> one output colour
            same = (p0 == colour).all(-1)
            if same.any():
                assert (p1[same] == p1[same][0]).all()
    assert changed >= 8


def test_photometric_steps():
    grey = Image.new("RGB", (4, 4), (100, 100, 100))
    off = np.ones(NUM_DRAWS)  # a draw >= 0.5 skips its step
    u = off.copy()
    u[augment._U_BRIGHT], u[augment._U_BRIGHT_DELTA] = 0.0, 1.0  # brightness +32
    assert np.asarray(photometric_distortion(grey, u))[0, 0].tolist() == [132, 132, 132]
    u = off.copy()
    u[augment._U_CONTRAST], u[augment._U_CONTRAST_ALPHA] = 0.0, 0.0  # contrast x0.5
    assert np.asarray(photometric_distortion(grey, u))[0, 0].tolist() == [50, 50, 50]
    u = off.copy()
    u[augment._U_HUE], u[augment._U_HUE_DELTA] = 0.0, 0.999  # hue +18 OpenCV units = +36 degrees
    red = np.asarray(photometric_distortion(Image.new("RGB", (2, 2), (255, 0, 0)), u))[0, 0]
    assert red[0] == 255 and abs(int(red[1]) - 153) <= 6 and red[2] == 0
    assert photometric_distortion(grey, off) is grey


def position_image(width: int, height: int) -> Image.Image:
    """R = x, G = y: the output's top-left pixel tells where the crop was taken."""
    yy, xx = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([xx, yy, np.zeros_like(xx)], -1).astype(np.uint8))


def crop_ok(window: np.ndarray, ratio: float) -> bool:  # mmseg RandomCrop's test, written independently
    values, counts = np.unique(window[window != IGNORE], return_counts=True)
    return len(counts) > 1 and counts.max() / counts.sum() < ratio


def expected_offset(seed: int, label: np.ndarray, crop: tuple[int, int], ratio: float) -> tuple[int, int]:
    u = torch.rand(NUM_DRAWS, generator=gen(seed), dtype=torch.float64).numpy()
    margin_h, margin_w = label.shape[0] - crop[0], label.shape[1] - crop[1]
    tries = CROP_TRIES if ratio < 1.0 else 0  # mmseg checks candidates only when cat_max_ratio < 1
    for k in range(tries + 1):
        top = int(u[augment._U_CROP + 2 * k] * (margin_h + 1))
        left = int(u[augment._U_CROP + 2 * k + 1] * (margin_w + 1))
        if k == tries or crop_ok(label[top:top + crop[0], left:left + crop[1]], ratio):
            return top, left


@pytest.mark.parametrize("kind", ["achievable", "single_class"])
def test_cat_max_ratio_picks_first_good_candidate_or_gives_up(kind):
    label = np.zeros((100, 120), dtype=np.int64)
    if kind == "achievable":
        label[:40, :40] = 1
        label[90:, :] = IGNORE
    aug = Augmentation(scale=None, ratio_range=None, crop_size=(32, 32), flip_prob=0.0, photometric=False)
    image = position_image(120, 100)
    good = {0.75: 0, 1.0: 0}
    for seed in range(30):
        for ratio in good:
            x, y = apply_augmentation(image, label, dataclasses.replace(aug, cat_max_ratio=ratio), gen(seed), IGNORE)
            top, left = to_uint8(x)[0, 0, 1], to_uint8(x)[0, 0, 0]
            assert (top, left) == expected_offset(seed, label, (32, 32), ratio)
            assert torch.equal(y, torch.from_numpy(label[top:top + 32, left:left + 32]))
            good[ratio] += crop_ok(y.numpy(), 0.75)
    if kind == "achievable":
        assert good[0.75] >= 15 and good[0.75] > 2 * good[1.0]
    else:
        assert good[0.75] == good[1.0] == 0


@pytest.mark.parametrize("ratio", [0.8, 1.3])
def test_window_equals_resize_then_crop(ratio):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8))
    label = rng.integers(0, 5, (70, 90))
    aug = Augmentation(scale=(120, 60), ratio_range=(ratio, ratio), crop_size=(32, 48), cat_max_ratio=1.0,
                       flip_prob=0.0, photometric=False)
    new_w, new_h = rescale_size(90, 70, (int(120 * ratio), int(60 * ratio)))
    for seed in range(4):
        x, y = apply_augmentation(image, label, aug, gen(seed), IGNORE)
        top, left = expected_offset(seed, np.zeros((new_h, new_w)), (32, 48), 1.0)
        full = np.asarray(image.resize((new_w, new_h), Image.BILINEAR))[top:top + 32, left:left + 48]
        full_label = np.asarray(Image.fromarray(label.astype(np.int32)).resize((new_w, new_h), Image.NEAREST))
        assert np.abs(to_uint8(x) - full).max() <= 1
        assert np.array_equal(y.numpy(), full_label[top:top + 32, left:left + 48])


def test_padding_bottom_right():
    image = position_image(30, 20)
    label = np.ones((20, 30), dtype=np.int64)
    aug = Augmentation(scale=None, ratio_range=None, crop_size=(32, 48), flip_prob=0.0, photometric=False)
    x, y = apply_augmentation(image, label, aug, gen(0), ignore_index=65535)
    assert x.shape == (3, 32, 48) and y.shape == (32, 48)
    assert (y[:20, :30] == 1).all() and (y[20:] == 65535).all() and (y[:, 30:] == 65535).all()
    assert (x[:, 20:] == IMAGE_PAD_VALUE).all() and (x[:, :, 30:] == IMAGE_PAD_VALUE).all()
    assert np.array_equal(to_uint8(x)[:20, :30], np.asarray(image))


@pytest.mark.parametrize("size", [(200, 120), (40, 30), (48, 200), (16, 16)])
def test_output_has_the_crop_size(size):
    image = Image.new("RGB", size, (10, 20, 30))
    label = np.zeros(size[::-1], dtype=np.int64)
    aug = Augmentation(scale=(128, 64), crop_size=(32, 64), vflip_prob=0.5)
    for seed in range(6):
        x, y = apply_augmentation(image, label, aug, gen(seed), IGNORE)
        assert x.shape == (3, 32, 64) and x.dtype == torch.float32 and x.is_contiguous()
        assert y.shape == (32, 64) and y.dtype == torch.int64


def test_same_generator_state_same_output(blocks):
    image, label = blocks
    aug = dataclasses.replace(GEOMETRY, photometric=True)
    a, b, c = (apply_augmentation(image, label, aug, gen(s), IGNORE) for s in (7, 7, 8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_draws_a_fixed_count(blocks):
    image, label = blocks
    for aug in (GEOMETRY, dataclasses.replace(GEOMETRY, photometric=True, cat_max_ratio=0.1)):
        g, reference = gen(3), gen(3)
        apply_augmentation(image, label, aug, g, IGNORE)
        torch.rand(NUM_DRAWS, generator=reference, dtype=torch.float64)
        assert torch.equal(g.get_state(), reference.get_state())


def test_disabled_resizes_without_draws(blocks):
    image, label = blocks
    g = gen(5)
    state = g.get_state()
    x, y = apply_augmentation(image, label, dataclasses.replace(GEOMETRY, enabled=False), g, IGNORE)
    assert torch.equal(g.get_state(), state)
    assert np.array_equal(to_uint8(x), np.asarray(image.resize((48, 32), Image.BILINEAR)))
    nearest = Image.fromarray(label.astype(np.int32)).resize((48, 32), Image.NEAREST)
    assert np.array_equal(y.numpy(), np.asarray(nearest))


@pytest.mark.parametrize("size, scale, expected", [
    ((683, 512), (2048, 512), (683, 512)),
    ((683, 512), (1024, 256), (342, 256)),
    ((512, 683), (2048, 512), (512, 683)),
    ((1280, 720), (2048, 1024), (1820, 1024)),
    ((100, 50), (2048, 512), (1024, 512)),
])
def test_rescale_size(size, scale, expected):
    assert rescale_size(*size, scale) == expected


@pytest.mark.parametrize("scale, ratio, expected_hw", [
    ((64, 32), 1.0, (32, 43)),  # f = min(64/40, 32/30) = 1.067 -> 43x32
    ((64, 32), 0.5, (16, 21)),  # scale (32, 16): f = 0.533 -> 21x16
    (None, 0.5, (15, 20)),  # native 40x30 times 0.5
])
def test_keep_ratio_rescale_end_to_end(scale, ratio, expected_hw):
    image, label = Image.new("RGB", (40, 30)), np.ones((30, 40), dtype=np.int64)
    aug = Augmentation(scale=scale, ratio_range=(ratio, ratio), crop_size=(48, 64), cat_max_ratio=1.0)
    _, y = apply_augmentation(image, label, aug, gen(0), IGNORE)
    rows, cols = np.nonzero(y.numpy() != IGNORE)
    assert (rows.max() + 1, cols.max() + 1) == expected_hw


@pytest.mark.parametrize("field, flip", [("flip_prob", np.fliplr), ("vflip_prob", np.flipud)])
def test_flip_flips_image_and_label(blocks, field, flip):
    image, label = blocks
    aug = Augmentation(scale=None, ratio_range=None, crop_size=(64, 96), flip_prob=0.0, photometric=False)
    x, y = apply_augmentation(image, label, dataclasses.replace(aug, **{field: 1.0}), gen(0), IGNORE)
    assert np.array_equal(to_uint8(x), flip(np.asarray(image)))
    assert np.array_equal(y.numpy(), flip(label))
    x, y = apply_augmentation(image, label, aug, gen(0), IGNORE)
    assert np.array_equal(y.numpy(), label)


# ---- configuration


def test_config_round_trip():
    aug = Augmentation(scale=None, ratio_range=(0.75, 1.25), crop_size=(32, 64), cat_max_ratio=1.0,
                       flip_prob=0.25, vflip_prob=0.5, photometric=False)
    values = yaml.safe_load(yaml.safe_dump(aug.to_dict()))
    assert values["crop_size"] == [32, 64]
    assert Augmentation.from_dict(values) == aug
    assert Augmentation.from_dict({"crop_size": [16, 8], "scale": [100, 50]}).crop_size == (16, 8)
    assert Augmentation(scale=[100, 50]).scale == (100, 50)


@pytest.mark.parametrize("values", [False, {"enabled": False}])
def test_config_turns_off(values):
    base = Augmentation(crop_size=(32, 64))
    assert Augmentation.from_dict(values, base=base) == dataclasses.replace(base, enabled=False)
    assert Augmentation.from_dict(None, base=base) == base == Augmentation.from_dict(True, base=base)


def test_config_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown augmentation key\(s\): flip.*valid: scale, ratio_range, crop_size"):
        Augmentation.from_dict({"flip": 0.5})


@pytest.mark.parametrize("field, value", [
    ("crop_size", [0, 5]), ("crop_size", [512]), ("crop_size", [512.0, 512]), ("scale", "big"),
    ("ratio_range", [2.0, 1.0]), ("ratio_range", [0.0, 1.0]), ("cat_max_ratio", 0), ("cat_max_ratio", 1.5),
    ("flip_prob", -0.1), ("vflip_prob", True), ("photometric", "yes"), ("enabled", 1),
])
def test_config_bad_values(field, value):
    with pytest.raises(ConfigError) as info:
        Augmentation.from_dict({field: value})
    message = str(info.value)
    assert field in message and repr(value) in message and "\n" not in message


def test_config_not_a_mapping():
    with pytest.raises(ConfigError, match="mapping"):
        Augmentation.from_dict([1, 2])


# ---- presets


def test_every_dataset_has_a_preset():
    assert sorted(AUGMENT_PRESETS) == sorted(dataset_names())
    assert AUGMENT_PRESETS["ade20k-150"].scale == (2048, 512) and AUGMENT_PRESETS["ade20k-150"].crop_size == (512, 512)
    assert AUGMENT_PRESETS["cityscapes"].scale == (2048, 1024)
    assert AUGMENT_PRESETS["cityscapes"].crop_size == (512, 1024)


def test_augmentation_for_crop_and_overrides():
    assert augmentation_for("cityscapes") == AUGMENT_PRESETS["cityscapes"]
    half = augmentation_for("cityscapes", crop_size=(256, 512))
    assert half.crop_size == (256, 512) and half.scale == (1024, 512)
    small = augmentation_for("ade20k-150", crop_size=64)
    assert small.crop_size == (64, 64) and small.scale == (256, 64)
    assert augmentation_for("monuseg", crop_size=128).scale is None
    custom = augmentation_for("ade20k-150", crop_size=64, overrides={"scale": [500, 100], "flip_prob": 0})
    assert custom.scale == (500, 100) and custom.flip_prob == 0.0 and custom.crop_size == (64, 64)
    assert not augmentation_for("synthetic", overrides=False).enabled
    with pytest.raises(ConfigError, match="no augmentation preset for dataset 'nope'"):
        augmentation_for("nope")


@pytest.mark.parametrize("name", sorted(AUGMENT_PRESETS))
def test_presets_run(name, blocks):
    image, label = blocks
    x, y = apply_augmentation(image, label, augmentation_for(name, crop_size=(24, 40)), gen(0), IGNORE)
    assert x.shape == (3, 24, 40) and y.shape == (24, 40)
