"""`digseg predict` over folders and glob patterns: per-image files, JSON summaries and the HTML report
(checked as text and in headless Chromium)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from browser import chromium_driver, save_screenshot
from digseg.cli import main
from digseg.data.synthetic import SYNTHETIC_CLASSES
from digseg.inputs import display_names, expand_image_inputs, unique_stems
from digseg.report import write_report
from digseg.visualize import palette_for

ODD_NAME = "<b>&.png"  # user-chosen file names end up in HTML


def _write_image(path: Path, height: int, width: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def predicted(tiny_backbone, tmp_path_factory):
    """One `digseg predict` run (the model's own 4 classes, ensemble 2, 1 step) over a folder, a glob, a '**'
    glob and a file already reached through the folder."""
    from digseg import DiGSegPipeline

    root = tmp_path_factory.mktemp("predict")
    DiGSegPipeline.from_backbone(tiny_backbone, class_names=list(SYNTHETIC_CLASSES)).save_pretrained(root / "model")
    _write_image(root / "photos" / "a.png", 48, 64, 0)
    _write_image(root / "photos" / "b.jpg", 32, 32, 1)
    (root / "photos" / "notes.txt").write_text("not an image")
    _write_image(root / "more" / "c.png", 64, 48, 2)
    _write_image(root / "deep" / "x" / "d.png", 32, 64, 3)
    names = ["a.png", "b.jpg", "c.png", "d.png"]
    try:
        _write_image(root / "more" / ODD_NAME, 32, 32, 4)
        names.insert(2, ODD_NAME)  # sorted: '<' before 'c'
    except OSError:  # a file system that refuses such names
        pass
    out = root / "out"
    argv = ["predict", "--model", str(root / "model"), "--output", str(out), "--ensemble-size", "2", "--steps", "1",
            "--no-progress", "--image", str(root / "photos"), str(root / "more" / "*.png"),
            str(root / "deep" / "**" / "*.png"), str(root / "photos" / "a.png")]
    assert main(argv) == 0
    return SimpleNamespace(root=root, out=out, names=names)


def _records(predicted) -> dict[str, dict]:
    summaries = sorted(predicted.out.glob("*_summary.json"))
    records = [json.loads(p.read_text(encoding="utf-8")) for p in summaries]
    return {r["name"]: r for r in records}


def test_every_output_file_exists_with_its_size_and_mode(predicted):
    records = _records(predicted)
    assert sorted(records) == sorted(predicted.names)  # a.png given twice is predicted once; notes.txt skipped
    colours = palette_for(len(SYNTHETIC_CLASSES))
    for name, record in records.items():
        source = Image.open(record["source"])
        size = source.size
        assert record["image_size"] == {"width": size[0], "height": size[1]}
        files = {k: predicted.out / v for k, v in record["files"].items() if isinstance(v, str)}
        assert all(p.is_file() for p in files.values()), files

        label = Image.open(files["label"])
        assert label.mode == "P" and label.size == size
        assert np.asarray(label).max() < len(SYNTHETIC_CLASSES)
        assert label.getpalette()[3:6] == [int(v) for v in colours[1]]  # the class palette is attached

        copy = Image.open(files["input"])
        assert copy.size == size and copy.mode == "RGB"
        if name.endswith(".png"):
            assert np.array_equal(np.asarray(copy), np.asarray(source.convert("RGB")))  # lossless copy
        else:
            assert files["input"].suffix == ".jpg"

        over = Image.open(files["overlay"])
        assert over.mode == "RGB" and over.size == size

        legend = Image.open(files["overlay_legend"])
        assert legend.mode == "RGB" and legend.width > size[0] and legend.height >= size[1]
        panel = np.asarray(legend)[:, size[0]:]
        for c in record["classes"]:
            swatch = np.all(panel == colours[c["id"]], axis=-1).sum()
            if c["tinted"]:
                assert swatch >= 16, f"{name}: no legend swatch for {c['name']}"
            assert c["colour"] == "#{:02x}{:02x}{:02x}".format(*colours[c["id"]])
        assert not any(c["tinted"] for c in record["classes"] if c["id"] == 0)  # "background" stays untinted

        maps = record["files"]["probabilities"]
        assert [m["class"] for m in maps] == list(SYNTHETIC_CLASSES)
        for m in maps:
            grey = Image.open(predicted.out / m["file"])
            assert grey.mode == "L" and grey.size == size
        uncertainty = Image.open(files["uncertainty"])
        assert uncertainty.mode == "L" and uncertainty.size == size
        assert "uncertainty_note" not in record

        settings = record["settings"]
        assert settings["ensemble_size"] == 2 and settings["steps"] == 1 and settings["seed"] == 0
        assert settings["classes"] == list(SYNTHETIC_CLASSES) and settings["prompt"] is None
        assert Path(settings["model"]) == predicted.root / "model"


def test_fractions_cover_the_labelled_pixels(predicted):
    records = _records(predicted)
    run = json.loads((predicted.out / "summary.json").read_text(encoding="utf-8"))
    assert run["skipped"] == []
    summary = run["images"]
    assert list(summary) == predicted.names
    for name, record in records.items():
        w, h = record["image_size"]["width"], record["image_size"]["height"]
        labels = np.asarray(Image.open(predicted.out / record["files"]["label"]))
        assert sum(c["pixels"] for c in record["classes"]) == w * h == labels.size
        for c in record["classes"]:
            assert c["pixels"] == int((labels == c["id"]).sum())
        assert record["unlabelled_fraction"] == 0
        assert abs(sum(c["fraction"] for c in record["classes"]) - 1) < 1e-3
        assert summary[name] == {c["name"]: c["fraction"] for c in record["classes"]}


def test_report_html_is_escaped_self_contained_and_lists_every_input(predicted):
    page = (predicted.out / "index.html").read_text(encoding="utf-8")
    assert page.count('<figure class="entry"') == len(predicted.names)
    for name in predicted.names:
        assert f'<h2 class="file-name">{name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")}</h2>' in page
    if ODD_NAME in predicted.names:
        assert ODD_NAME not in page and "&lt;b&gt;&amp;.png" in page
        assert 'src="%3Cb%3E%26_input.png"' in page  # URL-quoted, so the browser finds the file
    assert not re.search(r"(https?:)?//[a-z]", page.replace("<!DOCTYPE html>", ""))  # no external resources
    srcs = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert srcs and all("/" not in s for s in srcs)  # relative, beside index.html
    from urllib.parse import unquote

    assert all((predicted.out / unquote(s)).is_file() for s in srcs)


def test_per_class_queries_without_ensemble(predicted, tmp_path):
    """--classes with names that need escaping and collide as file names; ensemble 1 -> no uncertainty map."""
    image = _write_image(tmp_path / "one.png", 32, 32, 5)
    out = tmp_path / "out"
    assert main(["predict", "--model", str(predicted.root / "model"), "--image", str(image), "--classes", "a<b,a>b",
                 "--steps", "1", "--no-progress", "--output", str(out)]) == 0
    record = json.loads((out / "one_summary.json").read_text(encoding="utf-8"))
    assert record["files"]["uncertainty"] is None and "ensemble size 1" in record["uncertainty_note"]
    assert not (out / "one_uncertainty.png").exists()
    assert [m["file"] for m in record["files"]["probabilities"]] == ["one_prob_a_b.png", "one_prob_a_b-1.png"]
    assert record["settings"]["classes"] == ["a<b", "a>b"]
    assert all(c["tinted"] for c in record["classes"])  # class 0 is a real class here
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "a<b" not in page and "a&lt;b" in page and "ensemble size 1" in page


def test_inputs_that_match_nothing_are_named(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    for item, expected in [(str(tmp_path / "empty"), "empty"), (str(tmp_path / "nothing*.png"), "nothing*.png")]:
        assert main(["predict", "--model", str(tmp_path / "model"), "--image", item, "--prompt", "x",
                     "--output", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert "Traceback" not in err and len(lines) == 1, err
        assert expected in lines[0] and "no images" in lines[0]


def test_repeated_file_names_get_distinct_stems(tmp_path):
    a = _write_image(tmp_path / "a" / "x.png", 8, 8, 0)
    b = _write_image(tmp_path / "b" / "x.png", 8, 8, 0)
    c = _write_image(tmp_path / "x-2.jpg", 8, 8, 0)
    paths = expand_image_inputs([str(a), str(tmp_path / "*" / "x.png"), str(c)])
    assert paths == [a, b, c]
    assert unique_stems(paths) == ["x", "x-3", "x-2"]
    assert display_names(paths) == [str(a), str(b), "x-2.jpg"]


def test_report_escapes_class_names(tmp_path):
    record = {
        "name": "n.png", "image_size": {"width": 4, "height": 4},
        "classes": [{"id": 0, "name": "<script>alert(1)</script>", "fraction": 1.0, "colour": "red;}", "tinted": True}],
        "unlabelled_fraction": 0.0,
        "files": {"input": "n_input.png", "overlay": "n_overlay.png", "label": "n_label.png",
                  "probabilities": [{"class": "<script>alert(1)</script>", "file": "n_prob__script_.png"}], "uncertainty": None},
    }
    page = write_report(tmp_path, [record], {"classes": ["<script>alert(1)</script>"]}).read_text(encoding="utf-8")
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "red;}" not in page  # a colour that is not #rrggbb is not written into CSS


def _right_inset(driver, figure) -> float:
    clip = driver.execute_script("return arguments[0].querySelector('img.over').style.clipPath", figure)
    match = re.match(r"inset\(0(?:px)? ([\d.]+)%", clip)
    assert match, clip
    return float(match.group(1))


def test_report_renders_in_headless_chromium(predicted, tmp_path):
    with chromium_driver(tmp_path) as driver:  # skips (or fails under DIGSEG_REQUIRE_BROWSER) without a browser
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        driver.get((predicted.out / "index.html").as_uri())
        WebDriverWait(driver, 30).until(
            lambda d: d.execute_script("return Array.from(document.images).every(i => i.complete)"))
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])")
        assert images and all(ok for _, ok in images), [src for src, ok in images if not ok]
        sources = {src for src, _ in images}
        record_files = [r["files"] for r in _records(predicted).values()]
        from urllib.parse import quote

        for files in record_files:  # input, overlay, every map and the uncertainty map of every image are shown
            wanted = [files["input"], files["overlay"], files["uncertainty"]] + [m["file"] for m in files["probabilities"]]
            assert {quote(f) for f in wanted} <= sources

        shown = driver.execute_script(
            "return Array.from(document.querySelectorAll('figure.entry')).map(f => f.querySelector('.file-name').textContent)")
        assert shown == predicted.names
        body = driver.find_element(By.TAG_NAME, "body").text
        assert all(name in body for name in predicted.names)

        figure = driver.find_elements(By.CSS_SELECTOR, "figure.entry")[0]
        box = figure.find_element(By.CSS_SELECTOR, ".compare")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", box)
        assert _right_inset(driver, figure) == 50
        width = box.size["width"]
        # drag from near the left edge to a quarter of the width: the divider ends at ~25 %
        (ActionChains(driver).move_to_element_with_offset(box, -width // 2 + 2, 0).click_and_hold()
         .move_by_offset(width // 4, 0).release().perform())
        after_drag = _right_inset(driver, figure)
        assert 65 < after_drag < 85, after_drag
        divider = driver.execute_script("return arguments[0].querySelector('.divider').style.left", figure)
        assert abs(float(divider.rstrip("%")) - (100 - after_drag)) < 1e-6

        driver.execute_script("const r = arguments[0].querySelector('input.split'); r.value = 90;"
                              "r.dispatchEvent(new Event('input'))", figure)
        assert abs(_right_inset(driver, figure) - 10) < 1e-6
        shot = save_screenshot(driver, "predict-report.png", tmp_path)
    assert (tmp_path / "predict-report.png").is_file() and shot.is_file()
    assert Image.open(shot).width > 0


def test_an_image_is_seeded_by_its_place_not_by_the_other_images(predicted, tmp_path):
    """Image i draws from (seed, i), as `digseg eval` does: b.jpg second after d.png (another size, so another
    amount of noise drawn before it) = b.jpg second after a.png in the full run."""
    alone = tmp_path / "alone"
    assert main(["predict", "--model", str(predicted.root / "model"), "--output", str(alone), "--ensemble-size", "2",
                 "--steps", "1", "--no-progress", "--image", str(predicted.root / "deep" / "x" / "d.png"),
                 str(predicted.root / "photos" / "b.jpg")]) == 0
    for name in ("b_label.png", "b_uncertainty.png"):
        np.testing.assert_array_equal(np.asarray(Image.open(alone / name)), np.asarray(Image.open(predicted.out / name)))
