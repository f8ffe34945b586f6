"""Per-dataset test protocol presets, their command-line overrides, batched `digseg eval`, and `digseg predict`
with large vocabularies (probability maps for the kept classes only)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from digseg.cli.commands import build_parser, main
from digseg.data.registry import dataset_names
from digseg.evaluation.dataset_eval import predict_dataset
from digseg.errors import ConfigError
from digseg.evaluation.protocols import CATSEG, PRESETS, TestProtocol, protocol_for, protocol_from_args, tiling_scale


def test_presets_follow_mmseg_and_catseg():
    assert set(PRESETS) <= set(dataset_names())  # keyed by registry name
    ade = protocol_for("ade20k-150")
    assert (ade.mode, ade.crop_size, ade.stride, ade.scale, ade.keep_ratio) == ("slide", (512, 512), (341, 341), (2048, 512), True)
    city = protocol_for("cityscapes")
    assert (city.crop_size, city.stride, city.scale) == ((1024, 1024), (768, 768), (2048, 1024))
    assert protocol_for("ade20k-150", open_vocab=True) is CATSEG is protocol_for("ade20k-847", open_vocab=True)
    assert (CATSEG.scale, CATSEG.keep_ratio, CATSEG.crop_size, CATSEG.stride, CATSEG.global_view) == (
        (640, 640), False, (384, 384), (256, 256), True)
    assert protocol_for("monuseg") == TestProtocol()  # no field protocol: the model's own setting


def _eval_args(*flags):
    return build_parser().parse_args(["eval", "--dataset", "ade20k-150", "--predictions", "x", *flags])


def test_every_preset_field_can_be_overridden():
    ade = protocol_for("ade20k-150")
    same = protocol_from_args(_eval_args(), ade)
    assert same == ade
    custom = protocol_from_args(_eval_args("--window-size", "256,384", "--stride", "128", "--flip", "--global-view",
                                           "--scale", "1024,256"), ade)
    assert (custom.crop_size, custom.stride, custom.flip, custom.global_view, custom.scale) == (
        (256, 384), (128, 128), True, True, (1024, 256))
    assert "overridden" in custom.source and "crop_size" in custom.source
    whole = protocol_from_args(_eval_args("--mode", "whole"), ade)
    assert (whole.mode, whole.crop_size, whole.stride, whole.scale) == ("whole", None, None, (2048, 512))
    native = protocol_from_args(_eval_args("--processing-resolution", "64"), ade)
    assert native.scale is None and native.mode == "slide"  # --processing-resolution replaces the preset's scale
    stretched = protocol_from_args(_eval_args("--no-keep-ratio", "--scale", "640,480"), TestProtocol())
    assert stretched.keep_ratio is False and stretched.scale == (640, 480)
    with pytest.raises(ConfigError, match="either --scale or --processing-resolution"):
        protocol_from_args(_eval_args("--scale", "64", "--processing-resolution", "64"), ade)
    with pytest.raises(ConfigError, match="need --mode slide"):
        protocol_from_args(_eval_args("--mode", "whole", "--window-size", "64"), ade)
    with pytest.raises(SystemExit):
        _eval_args("--window-size", "0,5")


def _folder(tmp_path, n=5):
    from digseg.data.synthetic import SyntheticScenes, save_scenes_as_folder
    from digseg.data.registry import get_dataset_class

    root = save_scenes_as_folder(SyntheticScenes(n, seed=4), tmp_path / "data")
    return get_dataset_class("folder")(root, split="val", val_fraction=1)  # val: every image


@pytest.mark.parametrize("protocol", [TestProtocol(), TestProtocol("slide", (48, 48), (32, 32), flip=True)])
def test_batched_eval_equals_one_image_per_call(tiny_pipe, tmp_path, protocol):
    dataset = _folder(tmp_path)
    one = predict_dataset(tiny_pipe, dataset, tmp_path / "one", seed=3, protocol=protocol, batch_size=1, show_progress=False)
    many = predict_dataset(tiny_pipe, dataset, tmp_path / "many", seed=3, protocol=protocol, batch_size=3, show_progress=False)
    assert one["written"] == many["written"] == 5
    for png in sorted((tmp_path / "one").glob("*.png")):
        np.testing.assert_array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(tmp_path / "many" / png.name)))


def test_cli_eval_records_the_protocol(tiny_pipe, tmp_path):
    dataset = _folder(tmp_path, n=3)
    tiny_pipe.save_pretrained(tmp_path / "model")
    assert main(["eval", "--dataset", "folder", "--data-root", str(dataset.root), "--model", str(tmp_path / "model"),
                 "--val-fraction", "1", "--mode", "slide", "--window-size", "48", "--stride", "32", "--flip",
                 "--batch-size", "2", "--output", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["protocol"]["mode"] == "slide" and metrics["protocol"]["crop_size"] == [48, 48]
    assert metrics["protocol"]["flip"] is True and metrics["batch_size"] == 2 and metrics["num_images"] == 3


def test_predict_writes_maps_for_the_kept_classes_only(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "model")
    Image.fromarray((np.random.default_rng(0).random((40, 70, 3)) * 255).astype(np.uint8)).save(tmp_path / "p.png")
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"thing {i}" for i in range(40)))
    out = tmp_path / "out"
    assert main(["predict", "--model", str(tmp_path / "model"), "--image", str(tmp_path / "p.png"), "--classes-file",
                 str(names), "--mode", "slide", "--window-size", "32", "--no-progress", "--output", str(out)]) == 0
    maps = sorted(out.glob("p_prob_*.png"))
    record = json.loads((out / "p_summary.json").read_text())
    assert len(maps) == len(record["files"]["probabilities"]) == 16
    pixels = {c["name"]: c["pixels"] for c in record["classes"]}  # the classes found
    mapped = {m["class"] for m in record["files"]["probabilities"]}
    assert min(pixels.get(n, 0) for n in mapped) >= max([0] + [p for n, p in pixels.items() if n not in mapped])
    assert len(pixels) > 16 or set(pixels) <= mapped  # the classes with most pixels get maps
    assert record["settings"]["protocol"]["mode"] == "slide"
    assert np.asarray(Image.open(out / "p_label.png")).shape == (40, 70)


def test_predict_slide_without_a_scale_tiles_a_large_image(tiny_pipe, tmp_path, monkeypatch):
    """`--mode slide --window-size 128` on a 512 x 256 photo: resized keep-ratio to (512, 128) (short side = the
    crop), so 128 windows tile 256 x 128 (three of them), instead of one window covering the image squashed to
    the processing resolution (which would equal whole mode). (2048 x 1024 with 512 windows, at 1/16 the pixels.)"""
    import digseg.pipelines.pipeline

    tiny_pipe.save_pretrained(tmp_path / "model")
    Image.fromarray((np.random.default_rng(1).random((256, 512, 3)) * 255).astype(np.uint8)).save(tmp_path / "wide.png")
    made = []
    real = digseg.pipelines.pipeline.make_views
    monkeypatch.setattr(digseg.pipelines.pipeline, "make_views", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    out = tmp_path / "out"
    assert main(["predict", "--model", str(tmp_path / "model"), "--image", str(tmp_path / "wide.png"), "--mode", "slide",
                 "--window-size", "128", "--outputs", "labels,json", "--no-progress", "--output", str(out)]) == 0
    assert made[0].size == (128, 256) and made[0].boxes == [(0, 128, 0, 128), (0, 128, 85, 213), (0, 128, 128, 256)]
    protocol = json.loads((out / "wide_summary.json").read_text())["settings"]["protocol"]
    assert protocol["scale"] == [512, 128] and "windows tile the image" in protocol["source"]
    assert np.asarray(Image.open(out / "wide_label.png")).shape == (256, 512)


def test_slide_that_cannot_slide_warns(tiny_pipe):
    with pytest.warns(UserWarning, match="one 64x64 window covers the whole 64x48 processed image"):
        tiny_pipe(torch.rand(3, 48, 64), mode="slide", crop_size=64, show_progress_bar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_pipe(torch.rand(3, 48, 64), mode="slide", crop_size=32, show_progress_bar=False)  # windows slide: quiet


def test_tiling_scale_applies_to_slide_without_a_scale_only():
    slide = TestProtocol("slide", crop_size=(512, 1024))
    assert tiling_scale(slide, 512).scale == (4096, 1024)
    assert tiling_scale(TestProtocol("slide"), 384).scale == (1536, 384)  # the window defaults to the resolution
    assert tiling_scale(slide, 512, resolution_given=True) == slide  # --processing-resolution: the user's choice
    ade = protocol_for("ade20k-150")
    assert tiling_scale(ade, 512) == ade and tiling_scale(TestProtocol(), 512) == TestProtocol()
