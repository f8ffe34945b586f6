"""`digseg demo --model BASE --adapter NAME=PATH ...`: the base loaded once with every adapter on it, a chooser on the
page ("base": none), and each run segmenting with the chosen adapter, as `pipe.set_adapter(name); pipe(...)` does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import digseg.cli.demo as demo
from digseg.cli import main
from digseg.data.synthetic import SYNTHETIC_CLASSES
from digseg.errors import DigsegError
from digseg.pipelines.visualize import class_overlay, with_legend
from test_adapters import OTHER_CLASSES, adapters  # noqa: F401 (a module fixture: two trained adapters)

pytest.importorskip("gradio", reason='gradio is not installed (pip install -e ".[demo]")')


ASKED = {"base": "sky, road", "roads": "", "cells": ""}  # the classes each choice is asked for ("": its own)


def _expected_overlay(pipe, path, name):
    """What the demo should show for adapter `name` (None: the base): the pipeline run directly, with its legend."""
    image = demo.check_image_file(path)
    pipe.set_adapter(name)
    result = pipe(image, classes=demo.parse_classes(ASKED[name or "base"]), ensemble_size=1, num_inference_steps=1,
                  generator=torch.Generator().manual_seed(0), show_progress_bar=False)
    zoom = demo.display_factor(image.height, image.width)
    labels = demo.enlarge(np.asarray(result.labels[0]), zoom)  # [H', W']
    plain = class_overlay(demo.enlarge(np.asarray(image), zoom), labels, result.class_names)
    return np.asarray(with_legend(plain, labels, result.class_names))


def test_the_demo_chooses_among_adapters_on_one_backbone(adapters, tiny_backbone, tmp_path, monkeypatch, capsys):
    (roads, _), (cells, _) = adapters
    path = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)).save(path)
    built, build_demo = {}, demo.build_demo
    monkeypatch.setattr(demo, "build_demo", lambda pipe, max_pixels: build_demo(built.setdefault("pipe", pipe),
                                                                                 max_pixels))
    monkeypatch.setattr(demo, "start_demo", lambda app, host, port: built.update(app=app))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # the demo sets PIL's limit: restored after
    assert main(["demo", "--model", str(tiny_backbone), "--adapter", f"roads={roads}", "--adapter", f"cells={cells}",
                 "--device", "cpu"]) == 0
    assert "with adapters roads, cells" in capsys.readouterr().out
    pipe, page = built["pipe"], {b.elem_id: b for b in built["app"].blocks.values() if getattr(b, "elem_id", None)}
    pipe.set_progress_bar_config(disable=True)
    assert [value for _, value in page["digseg-adapter"].choices] == ["base", "roads", "cells"]
    assert page["digseg-adapter"].value == "roads" and "Adapter: roads" in page["digseg-header"].value
    unet = pipe.unet

    expected = {choice: _expected_overlay(pipe, path, None if choice == "base" else choice)
                for choice in ("base", "roads", "cells")}
    assert not np.array_equal(expected["roads"], expected["cells"])
    for choice in ("roads", "base", "cells", "roads"):  # each run switches from another adapter
        out = demo.segment(pipe, path, "classes", ASKED[choice], ensemble_size=1, steps=1, seed=0, adapter=choice)
        assert pipe.active_adapter == (None if choice == "base" else choice) and f"adapter {choice}" in out.summary
        np.testing.assert_array_equal(np.asarray(out.overlay), expected[choice], err_msg=choice)
    assert pipe.unet is unet  # switching did not reload the backbone
    assert f"Model classes: {', '.join(SYNTHETIC_CLASSES)}." in demo.page_header(pipe, 100)  # roads' classes
    demo.segment(pipe, path, "classes", "", ensemble_size=1, steps=1, seed=0, adapter="cells")
    assert f"Adapter: cells (task: both). Model classes: {', '.join(OTHER_CLASSES)}." in demo.page_header(pipe, 100)
    with pytest.raises(DigsegError, match="no adapter named 'roadz'"):
        demo.segment(pipe, path, "classes", "", ensemble_size=1, steps=1, seed=0, adapter="roadz")


def test_the_demo_has_no_chooser_without_adapters_and_refuses_an_adapter_named_base(tiny_pipe, tmp_path, capsys,
                                                                                   monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    app = demo.build_demo(tiny_pipe)
    try:
        assert "digseg-adapter" not in {getattr(b, "elem_id", None) for b in app.blocks.values()}
    finally:
        app.close()
    assert main(["demo", "--model", str(tmp_path), "--adapter", f"base={tmp_path}"]) == 2
    assert "give the adapter another name" in capsys.readouterr().err
