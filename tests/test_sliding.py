"""Test protocols: mmseg's window grid, probability-space combination, slide / flip / global view in the
pipeline, keep-ratio test scales, the chunked argmax and top-n probabilities at native size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from digseg.errors import DigsegError
from digseg.pipelines.common import processed_size, window_grid
from digseg.pipelines.sliding import best_classes, chunked_argmax, combine_windows, count_map, native_outputs
from training_helpers import generator


def _mmseg_boxes(h, w, crop, stride):
    """mmseg's slide_inference loop, written out independently: grid count, then clamp to the border."""
    boxes = []
    rows = max(h - crop[0] + stride[0] - 1, 0) // stride[0] + 1
    cols = max(w - crop[1] + stride[1] - 1, 0) // stride[1] + 1
    for r in range(rows):
        for c in range(cols):
            y1, x1 = r * stride[0], c * stride[1]
            y2, x2 = min(y1 + crop[0], h), min(x1 + crop[1], w)
            boxes.append((max(y2 - crop[0], 0), y2, max(x2 - crop[1], 0), x2))
    return boxes


@pytest.mark.parametrize("h, w, crop, stride", [
    (512, 683, (512, 512), (341, 341)), (1024, 2048, (1024, 1024), (768, 768)), (640, 640, (384, 384), (256, 256)),
    (100, 37, (64, 64), (40, 40)), (64, 64, (64, 64), (64, 64)), (65, 129, (64, 32), (1, 31)), (7, 300, (16, 64), (16, 64)),
])
def test_window_grid_is_mmsegs_and_covers_every_pixel(h, w, crop, stride):
    boxes = window_grid(h, w, crop, stride)
    assert boxes == _mmseg_boxes(h, w, crop, stride)
    assert len(set(boxes)) == len(boxes)  # the shifted last window is never a duplicate
    count = count_map(boxes, (h, w))
    assert count.min() >= 1  # every pixel is in some window
    assert {(y2 - y1, x2 - x1) for y1, y2, x1, x2 in boxes} == {(min(crop[0], h), min(crop[1], w))}
    assert max(b[1] for b in boxes) == h and max(b[3] for b in boxes) == w
    # count normalisation is exact: windows cut from one map combine back to that map, bit for bit
    truth = torch.rand(3, h, w)
    windows = torch.stack([truth[:, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])
    combined = combine_windows(windows, boxes, (h, w))
    torch.testing.assert_close(combined, truth, rtol=0, atol=1e-6)
    constant = combine_windows(torch.full_like(windows, 0.25), boxes, (h, w))
    assert torch.equal(constant, torch.full_like(truth, 0.25))


def test_window_grid_counts_by_hand():
    # 683 wide, crop 512, stride 341: starts 0, then min(341, 171) = 171 -> two windows; 512 high: one row
    assert window_grid(512, 683, (512, 512), (341, 341)) == [(0, 512, 0, 512), (0, 512, 171, 683)]
    count = count_map(window_grid(512, 683, (512, 512), (341, 341)), (512, 683))
    assert count[0, :171].eq(1).all() and count[0, 171:512].eq(2).all() and count[0, 512:].eq(1).all()


def test_keep_ratio_test_scale():
    assert processed_size(512, 683, 0, (2048, 512)) == (512, 683)  # short side 512 already
    assert processed_size(256, 341, 0, (2048, 512)) == (512, 682)  # scaled up: short side 512
    assert processed_size(300, 4000, 0, (2048, 512)) == (154, 2048)  # long side capped at 2048
    assert processed_size(1024, 2048, 0, (2048, 1024)) == (1024, 2048)
    assert processed_size(375, 500, 0, (640, 640), keep_ratio=False) == (640, 640)  # CAT-Seg: exactly 640 x 640
    assert processed_size(50, 100, 64) == (32, 64)  # processing_resolution keeps its meaning


@pytest.mark.parametrize("k, chunk", [(3, 32), (70, 32), (70, 8), (847, 32), (459, 16)])
def test_chunked_argmax_equals_full_argmax(k, chunk):
    gen = torch.Generator().manual_seed(k)
    probs = (torch.rand(k, 9, 13, generator=gen) * 4).round() / 4  # coarse values: many ties
    excluded = torch.rand(k, generator=gen) < 0.3
    for size in [(9, 13), (20, 31)]:
        full = torch.nn.functional.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
        labels, best = chunked_argmax(probs, size, chunk=chunk)
        assert torch.equal(labels, full.argmax(0)) and torch.equal(best, full.amax(0))
        masked, _ = chunked_argmax(probs, size, excluded, chunk=chunk)
        assert torch.equal(masked, full.masked_fill(excluded[:, None, None], -1).argmax(0))


def test_native_outputs_keep_the_best_classes():
    probs = torch.zeros(40, 4, 4)
    probs[5, :2] = 0.9  # class 5 wins 8 pixels, class 30 wins 6, class 12 wins 2
    probs[30, 2:, :3] = 0.8
    probs[12, 2:, 3] = 0.7
    probs[7, 0, 0] = 0.5  # a high peak that wins no pixel: ranked after the winners, before the rest
    labels, kept, ids = native_outputs(probs, (8, 8), "per_class", keep=4)
    assert ids.tolist() == [5, 7, 12, 30] and kept.shape == (4, 8, 8)
    assert set(labels.unique().tolist()) == {5, 12, 30}
    torch.testing.assert_close(kept, torch.nn.functional.interpolate(probs[None, ids], size=(8, 8), mode="bilinear")[0])
    assert best_classes(labels, probs, 2).tolist() == [5, 30]
    _, everything, all_ids = native_outputs(probs, (8, 8), "per_class", keep=None)
    assert everything.shape == (40, 8, 8) and all_ids.tolist() == list(range(40))


def test_slide_on_one_window_equals_whole(tiny_pipe):
    image = torch.rand(3, 64, 64)
    for kwargs in [dict(prompt="circle", ensemble_size=2), dict(), dict(classes=["cat", "road"])]:
        whole = tiny_pipe(image, generator=generator(3), **kwargs)
        slide = tiny_pipe(image, generator=generator(3), mode="slide", crop_size=64, stride=48, **kwargs)
        np.testing.assert_array_equal(slide.probabilities, whole.probabilities)
        np.testing.assert_array_equal(slide.labels, whole.labels)
        if whole.uncertainty is not None:
            np.testing.assert_array_equal(slide.uncertainty, whole.uncertainty)


def test_per_class_slide_is_the_argmax_of_single_class_slides(tiny_pipe):
    image = torch.rand(3, 64, 112, generator=generator(9))  # windows 64 x 48 every 32 px: 4 windows, overlapping
    names = ["cat", "road", "sky"]
    kwargs = dict(mode="slide", crop_size=(64, 48), stride=32, processing_resolution=0, ensemble_size=2)
    joint = tiny_pipe(image, classes=names, generator=generator(5), **kwargs)
    single = np.stack([tiny_pipe(image, classes=[n], generator=generator(5), **kwargs).probabilities[0, 0]
                       for n in names])
    np.testing.assert_allclose(joint.probabilities[0], single, atol=1e-5)  # U-Net batch rounding
    top2 = np.sort(single, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-4  # pixels whose two best classes are not tied within that rounding
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(joint.labels[0][clear], single.argmax(0)[clear])


def test_flip_tta_of_a_flip_symmetric_input(tiny_pipe):
    half = torch.rand(3, 64, 32, generator=generator(0))  # fixed: the tolerance below is for this image
    image = torch.cat([half, half.flip(-1)], dim=-1)  # [3, 64, 64], mirror-symmetric
    for kwargs in [dict(prompt="square"), dict(mode="slide", crop_size=(64, 40), stride=24),
                   dict(mode="slide", crop_size=(48, 40), stride=(16, 20), global_view=True, classes=["a", "b", "c"])]:
        plain = tiny_pipe(image, generator=generator(2), output_type="pt", **kwargs).probabilities[0]
        flipped = tiny_pipe(image, generator=generator(2), output_type="pt", flip=True, **kwargs).probabilities[0]
        torch.testing.assert_close(flipped, flipped.flip(-1), rtol=0, atol=1e-6)  # the output is symmetric too
        torch.testing.assert_close(flipped, (plain + plain.flip(-1)) / 2, rtol=0, atol=1e-5)  # same noise per grid position (batch rounding)
        assert not torch.allclose(plain, plain.flip(-1), atol=1e-3)  # without TTA the model is not symmetric


@pytest.mark.parametrize("kwargs", [
    dict(prompt="circle"), dict(), dict(classes=["cat", "road", "sky", "tree"], top_k=2),
    dict(classes=["cat", "road"]), dict(prompt="circle", ensemble_size=3, decode_members=True),
])
def test_slide_with_global_view_and_flip_in_every_query_mode(tiny_pipe, kwargs):
    image = torch.rand(3, 48, 100)
    out = tiny_pipe(image, generator=generator(), mode="slide", crop_size=40, stride=30, global_view=True, flip=True,
                    output_type="pt", processing_resolution=0, **kwargs)
    k = len(out.class_names)
    assert out.labels.shape == (1, 48, 100) and out.probabilities.shape == (1, k, 48, 100)
    assert out.probabilities.min() >= 0 and out.probabilities.max() <= 1
    if k > 2:
        assert torch.equal(out.labels, out.probabilities.argmax(1))
    again = tiny_pipe(image, generator=generator(), mode="slide", crop_size=40, stride=30, global_view=True, flip=True,
                      output_type="pt", processing_resolution=0, **kwargs)
    assert torch.equal(out.probabilities, again.probabilities)  # windows' noise is fixed by the generator


def test_test_scale_and_batched_generators(tiny_pipe):
    images = [torch.rand(3, 40, 60, generator=generator(11)), torch.rand(3, 40, 60, generator=generator(12)),
              torch.rand(3, 30, 30, generator=generator(13))]
    out = tiny_pipe(images, prompt="circle", scale=(96, 32), generator=[generator(1), generator(2), generator(3)],
                    batch_size=3, output_type="pt")
    for image, seed, label, probs in zip(images, (1, 2, 3), out.labels, out.probabilities):
        alone = tiny_pipe(image, prompt="circle", scale=(96, 32), generator=generator(seed), output_type="pt")
        # batching images does not change any image's result (up to U-Net batch rounding at the threshold)
        torch.testing.assert_close(alone.probabilities[0], probs, rtol=0, atol=1e-5)
        clear = (probs[1] - 0.5).abs() > 1e-4
        assert torch.equal(alone.labels[0][clear], label[clear])
    assert [tuple(x.shape) for x in out.labels] == [(40, 60), (40, 60), (30, 30)]


def test_probabilities_for_the_best_classes_only(tiny_pipe):
    names = [f"class {i}" for i in range(20)]
    out = tiny_pipe(torch.rand(3, 64, 64, generator=generator(4)), classes=names, generator=generator(),
                    max_probability_classes=4)
    assert out.probabilities.shape == (1, 4, 64, 64) and out.probability_class_ids.shape == (1, 4)
    pixels = np.bincount(out.labels[0].ravel(), minlength=len(names))  # [20]
    kept = out.probability_class_ids[0].tolist()
    assert min(pixels[kept]) >= max(np.delete(pixels, kept))  # the kept classes are those with most pixels
    full = tiny_pipe(torch.rand(3, 64, 64), classes=names[:3], generator=generator())
    assert full.probability_class_ids.tolist() == [[0, 1, 2]]


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="tiles"), "mode must be one of"),
    (dict(crop_size=32), "mode='slide' only"),
    (dict(mode="slide", crop_size=32, stride=40), "larger than crop_size"),
    (dict(mode="slide", crop_size=(32, 0)), "crop_size must be"),
    (dict(scale=(64, 32), processing_resolution=64), "either scale or processing_resolution"),
    (dict(generator=[torch.Generator(), torch.Generator()]), "2 generators for 1 images"),
])
def test_bad_protocol_arguments(tiny_pipe, kwargs, message):
    with pytest.raises(DigsegError, match=message.replace("(", "\\(").replace(")", "\\)")):
        tiny_pipe(torch.rand(3, 64, 64), prompt="a", **kwargs)
