"""`digseg predict` over folders and glob patterns: per-image files, JSON summaries and the HTML report
(checked as text and in headless Chromium)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from browser import chromium_driver, save_screenshot
from digseg.cli import main
from digseg.data.synthetic import SYNTHETIC_CLASSES
from digseg.pipelines.inputs import display_names, expand_image_inputs, unique_stems
from digseg.cli.report import REPORT_PAGE_SIZE, write_report
from digseg.pipelines.visualize import palette_for

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


# ---------------------------------------------------------------------------------------------- paged report


def _write_fake_pictures(folder: Path) -> None:
    """The few small PNGs every fake entry points to: an RGB picture, a greyscale map and a palette label map."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_image(folder / "picture.png", 24, 32, 0)
    Image.fromarray(np.arange(24 * 32, dtype=np.uint8).reshape(24, 32)).save(folder / "map.png")
    label = Image.fromarray((np.arange(24 * 32).reshape(24, 32) % 3).astype(np.uint8), mode="P")
    label.putpalette([0, 0, 0, 230, 25, 75, 60, 180, 75] + [0] * (256 - 3) * 3)
    label.save(folder / "label.png")


def _fake_entry(i: int, **files) -> dict:
    """A per-image summary as `digseg.cli.predict` writes it, each file one of those `_write_fake_pictures` writes;
    `files` replaces some of them (None: not written)."""
    entry = {
        "name": f"photo-{i:06d}.jpg", "image_size": {"width": 32, "height": 24},
        "classes": [{"id": 0, "name": "background", "fraction": 0.6, "colour": "#000000", "tinted": False},
                    {"id": 1, "name": "cat", "fraction": 0.4, "colour": "#e6194b", "tinted": True}],
        "unlabelled_fraction": 0.0,
        "files": {"input": "picture.png", "overlay": "picture.png", "overlay_legend": "picture.png",
                  "label": "label.png", "summary": "map.png", "uncertainty": "map.png",
                  "probabilities": [{"class": "background", "file": "map.png"}, {"class": "cat", "file": "map.png"}]},
    }
    entry["files"].update(files)
    return entry


def _fake_entries(count: int) -> Iterator[dict]:
    return (_fake_entry(i) for i in range(count))


def _pages(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("index*.html"))


def _assert_files_exist(folder: Path, page: str) -> None:
    from urllib.parse import unquote

    targets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert targets and all((folder / unquote(t)).is_file() for t in targets)


def test_report_pages_hold_at_most_100_panels_and_link_each_other(tmp_path):
    _write_fake_pictures(tmp_path)
    write_report(tmp_path, list(_fake_entries(1500)), {"model": "m"})
    assert len(_pages(tmp_path)) == 15
    index = write_report(tmp_path, _fake_entries(1000), {"model": "m"}, num_entries=1000)  # an iterator
    assert index == tmp_path / "index.html"
    names = ["index.html"] + [f"index-{k}.html" for k in range(2, 11)]
    assert _pages(tmp_path) == sorted(names)  # index-11 ... index-15 of the earlier run are gone
    for k, name in enumerate(names, start=1):
        path = tmp_path / name
        page = path.read_text(encoding="utf-8")
        assert path.stat().st_size < 200_000
        assert page.count('<figure class="entry"') == REPORT_PAGE_SIZE
        first = (k - 1) * REPORT_PAGE_SIZE
        assert f'id="image-{first}"' in page and f'id="image-{first + 99}"' in page
        assert "<h1>digseg predict: 1,000 images</h1>" in page
        assert f"<title>digseg predict: 1,000 images (page {k} of 10)</title>" in page
        assert page.count(f'<span class="page-of">page {k} of 10</span>') == 2  # the navigation above and below
        assert page.count(f'<span class="range">images {first + 1:,}-{first + 100:,} of 1,000</span>') == 2
        assert ('rel="next"' in page) == (k < 10) and ('rel="prev"' in page) == (k > 1)
        _assert_files_exist(tmp_path, page)
    first_page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert re.findall(r'<a href="([^"]+)" class="next" rel="next">', first_page) == ["index-2.html"] * 2
    last_page = (tmp_path / "index-10.html").read_text(encoding="utf-8")
    assert re.findall(r'<a href="([^"]+)" class="previous" rel="prev">', last_page) == ["index-9.html"] * 2
    middle = (tmp_path / "index-5.html").read_text(encoding="utf-8")
    links = re.search(r'<span class="page-links">(.*?)</span> <a href="index-6.html" class="next"', middle).group(1)
    assert re.findall(r'href="index-?(\d*)\.html"', links) == ["", "3", "4", "6", "7", "10"]  # first, neighbours, last
    assert links.count("&hellip;") == 2 and '<span class="current" aria-current="page">5</span>' in links


def test_an_empty_report_is_one_page_and_removes_earlier_pages(tmp_path):
    _write_fake_pictures(tmp_path)
    write_report(tmp_path, _fake_entries(250), num_entries=250)
    assert _pages(tmp_path) == ["index-2.html", "index-3.html", "index.html"]
    write_report(tmp_path, [], skipped=[{"name": "x.png", "reason": "not an image"}])
    assert _pages(tmp_path) == ["index.html"]
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "0 images, 1 skipped" in page and "x.png" in page and '<nav class="pages"' not in page


def test_skipped_files_are_listed_on_the_first_page_only(tmp_path):
    _write_fake_pictures(tmp_path)
    write_report(tmp_path, _fake_entries(5), skipped=[{"name": "bad.png", "reason": "truncated"}], num_entries=5,
                 page_size=2)
    first, second = ((tmp_path / name).read_text(encoding="utf-8") for name in ("index.html", "index-2.html"))
    assert "5 images, 1 skipped" in first and "5 images, 1 skipped" in second
    assert '<span class="skipped-name">bad.png</span>' in first and "bad.png" not in second
    assert 'listed on <a href="index.html">page 1</a>' in second
    assert "images 5-5 of 5" in (tmp_path / "index-3.html").read_text(encoding="utf-8")


def test_entries_must_number_num_entries(tmp_path):
    _write_fake_pictures(tmp_path)
    with pytest.raises(ValueError, match="fewer"):
        write_report(tmp_path, _fake_entries(3), num_entries=4)
    with pytest.raises(ValueError, match="more"):
        write_report(tmp_path, _fake_entries(5), num_entries=4)


def _partial_entries() -> list[dict]:
    """Entries whose outputs were only partly written: a label map only; input and label map; the input only;
    no probability or uncertainty maps (and no note saying why); nothing at all; then a complete one."""
    no_maps = _fake_entry(3, probabilities=[], uncertainty=None)
    del no_maps["files"]["overlay_legend"], no_maps["files"]["summary"]
    label_only = _fake_entry(0, input=None, overlay=None, overlay_legend=None, summary=None, uncertainty=None)
    del label_only["files"]["probabilities"]
    return [label_only,
            {**_fake_entry(1), "files": {"input": "picture.png", "label": "label.png"}},
            {**_fake_entry(2), "files": {"input": "picture.png"}},
            no_maps,
            {**_fake_entry(4), "files": {}},
            _fake_entry(5)]


def test_entries_with_missing_files_show_what_there_is(tmp_path):
    _write_fake_pictures(tmp_path)
    page = write_report(tmp_path, _partial_entries()).read_text(encoding="utf-8")
    panels = page.split('<figure class="entry"')[1:]
    assert len(panels) == 6
    label_only, input_and_label, input_only, no_maps, nothing, complete = panels
    assert '<img class="plain small" src="label.png" alt="label map for photo-000000.jpg"' in label_only
    assert "compare" not in label_only and "Uncertainty" not in label_only and "probability" not in label_only
    assert '<a href="label.png">label map</a>' in label_only and "overlay with legend" not in label_only
    assert 'class="under" src="picture.png"' in input_and_label and 'class="over" src="label.png"' in input_and_label
    assert '<img class="plain small" src="picture.png" alt="input photo-000002.jpg"' in input_only
    assert 'class="links"' not in input_only
    assert "compare" in no_maps and "Class probability maps" not in no_maps and "Uncertainty" not in no_maps
    assert "no picture was written" in nothing and "<img" not in nothing
    assert complete.count("<img") == 5 and "Uncertainty" in complete
    _assert_files_exist(tmp_path, page)


def _loaded_images(driver) -> list[tuple[str, bool]]:
    """(src, loaded) of every image on the page, once all have finished loading or failing."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return Array.from(document.images).every(i => i.complete)"))
    return driver.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])")


def _panel_ids(driver) -> list[str]:
    return driver.execute_script("return Array.from(document.querySelectorAll('figure.entry')).map(f => f.id)")


def test_paged_report_renders_and_navigates_in_headless_chromium(tmp_path):
    _write_fake_pictures(tmp_path)
    write_report(tmp_path, _fake_entries(1000), num_entries=1000)
    with chromium_driver(tmp_path) as driver:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        driver.get((tmp_path / "index.html").as_uri())
        images = _loaded_images(driver)
        assert len(images) == 100 * 5 and all(ok for _, ok in images), [src for src, ok in images if not ok]
        assert _panel_ids(driver) == [f"image-{i}" for i in range(100)]
        nav = driver.find_element(By.CSS_SELECTOR, "nav.pages")
        assert "page 1 of 10" in nav.text and "images 1-100 of 1,000" in nav.text
        nav.find_element(By.LINK_TEXT, "next →").click()
        WebDriverWait(driver, 30).until(lambda d: d.current_url.endswith("/index-2.html"))
        assert all(ok for _, ok in _loaded_images(driver))
        assert _panel_ids(driver) == [f"image-{i}" for i in range(100, 200)]
        shown = driver.find_elements(By.CSS_SELECTOR, "figure.entry .file-name")
        assert shown[0].text == "photo-000100.jpg" and shown[-1].text == "photo-000199.jpg"
        assert "images 101-200 of 1,000" in driver.find_element(By.CSS_SELECTOR, "nav.pages").text
        save_screenshot(driver, "predict-report-page-2.png", tmp_path, full_page=False)


def test_entries_with_missing_files_render_in_headless_chromium(tmp_path):
    _write_fake_pictures(tmp_path)
    write_report(tmp_path, _partial_entries())
    with chromium_driver(tmp_path) as driver:
        driver.get((tmp_path / "index.html").as_uri())
        images = _loaded_images(driver)
        assert len(images) == 1 + 2 + 1 + 2 + 0 + 5 and all(ok for _, ok in images), images
        figures = driver.find_elements("css selector", "figure.entry")
        label_only = figures[0].find_element("css selector", "img.plain")
        assert label_only.size["width"] > 100  # the label map is shown at the panel's width, not as a thumbnail
        for figure in (figures[1], figures[5]):  # the divider script runs past the panels without one
            driver.execute_script("const r = arguments[0].querySelector('input.split'); r.value = 90;"
                                  "r.dispatchEvent(new Event('input'))", figure)
            assert abs(_right_inset(driver, figure) - 10) < 1e-6
        save_screenshot(driver, "predict-report-missing-files.png", tmp_path)
