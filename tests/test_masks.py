"""Tests for digseg.pipelines.masks: palette, encode/decode round trips, ignore handling, config."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from digseg.pipelines.masks import MaskCodec, make_palette
from digseg.pipelines.sliding import native_outputs


def _min_pairwise(p: np.ndarray) -> float:
    p = p.astype(np.float64)
    d = np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return float(d.min())


# K -> smallest allowed minimum distance: one grid step of the n x n x n grid (n**3 >= K, n >= 2).
# K=2: black/white -> 255*sqrt(3); K=5: n=2 -> 255; K=171: n=6 -> 51; K=847: n=10 -> 28 (rounded 28.3).
@pytest.mark.parametrize("k,min_dist", [(2, 255 * 3**0.5 - 1e-6), (5, 255.0), (171, 51.0), (847, 28.0)])
def test_palette_distinct_and_separated(k: int, min_dist: float) -> None:
    p = make_palette(k)
    assert p.shape == (k, 3) and p.dtype == np.uint8
    assert len(np.unique(p, axis=0)) == k
    assert p[0].tolist() == [0, 0, 0]
    assert _min_pairwise(p) >= min_dist
    np.testing.assert_array_equal(p, make_palette(k))  # deterministic


def test_palette_k2_black_white() -> None:
    assert make_palette(2).tolist() == [[0, 0, 0], [255, 255, 255]]
    codec = MaskCodec("binary")
    assert codec.palette.tolist() == [[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]


def test_invalid_construction() -> None:
    with pytest.raises(ValueError):
        MaskCodec("binary", num_classes=3)
    with pytest.raises(ValueError):
        MaskCodec("palette", num_classes=1)
    with pytest.raises(ValueError):
        MaskCodec("rgb", num_classes=2)
    with pytest.raises(ValueError, match="ignore_index"):
        MaskCodec("palette", num_classes=847)  # 255 is a class id here; use 65535


def test_large_k_round_trip() -> None:
    codec = MaskCodec("palette", num_classes=847, ignore_index=65535)
    labels = _random_labels(847, shape=(1, 32, 32))
    labels[0, 0, 0] = 65535
    img = codec.encode(labels)
    assert img[0, :, 0, 0].tolist() == [0.0, 0.0, 0.0]
    pred = codec.decode(img.half()).argmax(dim=1)
    assert pred.dtype == torch.int64
    assert torch.equal(pred[0].flatten()[1:], labels[0].flatten()[1:])


def _random_labels(k: int, shape=(2, 16, 24), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, k, shape, generator=g)


@pytest.mark.parametrize("mode,k", [("binary", 2), ("palette", 5), ("palette", 171)])
def test_round_trip_exact(mode: str, k: int) -> None:
    codec = MaskCodec(mode, num_classes=k)
    labels = _random_labels(k)
    img = codec.encode(labels)
    assert img.shape == (2, 3, 16, 24) and img.dtype == torch.float32
    assert img.min() >= -1 and img.max() <= 1
    probs = codec.decode(img)
    assert probs.shape == (2, k, 16, 24)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 16, 24))
    assert torch.equal(probs.argmax(dim=1), labels)


@pytest.mark.parametrize("mode,k", [("binary", 2), ("palette", 5)])
def test_round_trip_under_noise(mode: str, k: int) -> None:
    codec = MaskCodec(mode, num_classes=k)
    labels = _random_labels(k, shape=(4, 32, 32), seed=1)
    g = torch.Generator().manual_seed(2)
    img = codec.encode(labels) + 0.05 * torch.randn(4, 3, 32, 32, generator=g)
    probs = codec.decode(img)
    torch.testing.assert_close(probs.sum(1), torch.ones(4, 32, 32))
    assert torch.equal(probs.argmax(dim=1), labels)


def test_decode_any_range_binary() -> None:
    codec = MaskCodec("binary")
    img = torch.tensor([-3.0, 0.0, 3.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    probs = codec.decode(img)
    assert probs[0, 1, 0].tolist() == [0.0, 0.5, 1.0]
    labels = native_outputs(probs[0], (1, 3), "binary")[0]  # the pipeline's decision: foreground > threshold
    assert labels[0].tolist() == [0, 0, 1]
    assert native_outputs(probs[0], (1, 3), "binary", threshold=0.4)[0][0].tolist() == [0, 1, 1]


def test_encode_2d_and_ignore() -> None:
    codec = MaskCodec("palette", num_classes=5)
    labels = torch.tensor([[0, 1], [255, 4]], dtype=torch.uint8)
    img = codec.encode(labels)
    assert img.shape == (1, 3, 2, 2)
    assert img[0, :, 1, 0].tolist() == [0.0, 0.0, 0.0]  # ignore -> mid grey
    assert img[0, :, 0, 0].tolist() == [-1.0, -1.0, -1.0]  # class 0 -> black
    torch.testing.assert_close(img[0, :, 1, 1], codec.palette[4])
    flipped = np.fliplr(np.array([[0, 1], [255, 4]], dtype=np.uint8))  # numpy: negative strides, read-only
    flipped.flags.writeable = False
    torch.testing.assert_close(codec.encode(flipped), img.flip(-1))
    with pytest.raises(ValueError, match=r"images must be \[B, 3, H, W\], got shape \(1, 2, 8, 6\)"):
        codec.decode(torch.zeros(2, 8, 6))


def test_out_of_range_label_raises_naming_value() -> None:
    codec = MaskCodec("palette", num_classes=5)
    with pytest.raises(ValueError, match="7"):
        codec.encode(torch.tensor([[0, 7], [255, 1]]))
    with pytest.raises(ValueError, match="-1"):
        MaskCodec("binary").encode(torch.tensor([[0, -1]]))


def test_ignore_weights_hand_example() -> None:
    codec = MaskCodec("binary")
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[0, 10, 21] = 255  # falls in latent cell (10 // 8, 21 // 8) = (1, 2)
    w = codec.ignore_weights(labels, (4, 4))
    assert w.shape == (1, 1, 4, 4) and w.dtype == torch.float32
    expected = torch.ones(1, 1, 4, 4)
    expected[0, 0, 1, 2] = 0.0
    assert torch.equal(w, expected)


def test_ignore_weights_non_multiple() -> None:
    codec = MaskCodec("binary")
    labels = torch.ones(2, 30, 30, dtype=torch.long)
    labels[1] = 255
    w = codec.ignore_weights(labels, (4, 4))
    assert w.shape == (2, 1, 4, 4)
    assert torch.equal(w[0], torch.ones(1, 4, 4)) and torch.equal(w[1], torch.zeros(1, 4, 4))
