"""`digseg demo`: upload checks and the segmentation step without a browser, then the app end to end in
headless Chromium (skipped when Gradio or the browser is missing, unless DIGSEG_REQUIRE_BROWSER=1)."""

from __future__ import annotations

import re
import importlib.util
import struct
import zlib

import numpy as np
import pytest
from browser import browser_required
from PIL import Image

from digseg.cli.demo import INSTALL_HINT
from digseg.cli import main
from digseg.cli.demo import (
    DEFAULT_MAX_PIXELS,
    check_image_file,
    display_factor,
    enlarge,
    import_gradio,
    is_loopback,
    parse_classes,
    segment,
)
from digseg.errors import DataError, DigsegError
from training_helpers import free_port

def _png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header claims width x height but which holds no pixel data (decoding it would fail)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def not_an_image(tmp_path):
    path = tmp_path / "notes.png"  # an image extension, text inside
    path.write_text("these are not the pixels you are looking for\n")
    return path


# ---------------------------------------------------------------------------------------------- checks
def test_check_accepts_a_good_image(image_file):
    image = check_image_file(image_file)
    assert image.mode == "RGB" and image.size == (64, 48)


def test_check_rejects_non_image_bytes_naming_the_file(not_an_image):
    with pytest.raises(DataError, match="notes.png"):
        check_image_file(not_an_image)
    with pytest.raises(DataError, match="upload an image"):
        check_image_file(None)


def test_check_rejects_oversized_images(image_file):
    with pytest.raises(DataError, match=r"too large: 64x48 = 3,072 pixels; the limit is 3,000"):
        check_image_file(image_file, max_pixels=3000)
    assert check_image_file(image_file, max_pixels=64 * 48).size == (64, 48)


def test_check_reads_the_size_before_decoding(tmp_path):
    """Headers claiming huge sizes (no pixel data) are refused for their size, not for failing to decode."""
    big = tmp_path / "big.png"
    _png_header_only(big, 6000, 6000)  # over the demo's limit, under PIL's decompression-bomb guard
    with pytest.raises(DataError, match="big.png is too large: 6000x6000"):
        check_image_file(big)
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 20000, 20000)  # PIL's guard refuses it while reading the header
    with pytest.raises(DataError, match="bomb.png is too large"):
        check_image_file(bomb)
    small = tmp_path / "small.png"
    _png_header_only(small, 40, 30)
    with pytest.raises(DataError, match="small.png"):  # within the limit, so it is decoded: and it is truncated
        check_image_file(small)
    assert 6000 * 6000 > DEFAULT_MAX_PIXELS


def test_parse_classes_and_loopback():
    assert parse_classes(" sky, road ,car") == ["sky", "road", "car"]
    assert parse_classes("  ") is None
    with pytest.raises(DigsegError, match="empty class name"):
        parse_classes("a,,b")
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")


# ---------------------------------------------------------------------------------------------- segment step
def test_segment_builds_overlay_comparison_and_uncertainty(tiny_pipe, image_file):
    out = segment(tiny_pipe, image_file, "prompt", "circle", ensemble_size=2, steps=1, seed=0)
    shown = (256, 192)  # the 64 x 48 input, shown 4x
    assert out.overlay.width > shown[0] and out.overlay.height >= shown[1]  # legend to the right
    before, after = out.comparison
    assert before.size == after.size == shown
    assert np.array_equal(np.asarray(before)[::4, ::4], np.asarray(Image.open(image_file).convert("RGB")))
    assert out.uncertainty is not None and out.uncertainty.size == shown
    assert "circle" in out.summary

    palette = segment(tiny_pipe, image_file, "classes", "", ensemble_size=1, steps=1, seed=0)
    assert palette.uncertainty is None and "own classes" in palette.summary
    per_class = segment(tiny_pipe, image_file, "classes", "sky, road", ensemble_size=1, steps=1, seed=0)
    assert "sky, road" in per_class.summary
    with pytest.raises(DigsegError, match="ensemble size"):
        segment(tiny_pipe, image_file, "prompt", "circle", ensemble_size=0, steps=1, seed=0)


def test_small_images_are_shown_enlarged_without_smoothing():
    assert display_factor(48, 64) == 4 and display_factor(300, 200) == 1
    labels = np.array([[0, 1], [2, 0]])
    assert enlarge(labels, 2).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 0, 0], [2, 2, 0, 0]]
    assert enlarge(np.zeros((3, 5, 3)), 1).shape == (3, 5, 3)


# ---------------------------------------------------------------------------------------------- CLI
def test_demo_without_a_model_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no digseg-quickstart/model here
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "digseg quickstart" in err and "--model" in err
    assert main(["demo", "--max-pixels", "0"]) == 2
    assert "--max-pixels" in capsys.readouterr().err
    if importlib.util.find_spec("gradio") is not None:  # else the error is the install hint
        assert main(["demo", "--model", str(tmp_path / "no-model")]) == 2
        assert "no-model" in capsys.readouterr().err


def test_launch_warns_off_loopback_and_sets_the_pil_guard(tiny_pipe, tmp_path, monkeypatch, capsys):
    pytest.importorskip("gradio", reason='gradio is not installed (pip install -e ".[demo]")')
    import digseg.cli.demo

    tiny_pipe.save_pretrained(tmp_path / "model")
    served = {}
    monkeypatch.setattr(digseg.cli.demo, "start_demo", lambda demo, host, port: served.update(host=host, port=port))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    digseg.cli.demo.launch_demo(tmp_path / "model", host="0.0.0.0", port=7999, max_pixels=1000)
    assert served == {"host": "0.0.0.0", "port": 7999} and Image.MAX_IMAGE_PIXELS == 1000
    assert "warning: serving on 0.0.0.0" in capsys.readouterr().out
    digseg.cli.demo.launch_demo(tmp_path / "model", host="127.0.0.1", port=7999, device="cpu", dtype="bf16")
    printed = capsys.readouterr().out
    assert "warning" not in printed and "on cpu (" in printed and "bf16" in printed


def test_missing_gradio_gives_the_install_hint(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_gradio(name, *args, **kwargs):
        if name == "gradio" or name.startswith("gradio."):
            raise ImportError("No module named 'gradio'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gradio)
    with pytest.raises(DigsegError, match=re.escape(INSTALL_HINT)):
        import_gradio()


def test_gradio_without_image_slider_shows_input_and_prediction_as_one_image(tiny_pipe, monkeypatch):
    gr = pytest.importorskip("gradio", reason='gradio is not installed (pip install -e ".[demo]")')
    from digseg.cli.demo import build_demo

    monkeypatch.delattr(gr, "ImageSlider", raising=False)
    app = build_demo(tiny_pipe)
    try:
        compare = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "digseg-compare")
        assert type(compare) is gr.Image
    finally:
        app.close()


# ---------------------------------------------------------------------------------------------- browser
def _need(condition: bool, reason: str) -> None:
    if condition:
        return
    if browser_required():
        pytest.fail(f"{reason}; DIGSEG_REQUIRE_BROWSER is set, so this is a failure, not a skip")
    pytest.skip(reason)


def test_demo_in_headless_chromium(tiny_pipe, image_file, not_an_image, tmp_path):
    _need(importlib.util.find_spec("gradio") is not None, 'gradio is not installed (pip install -e ".[demo]")')
    from browser import chromium_driver, save_screenshot  # skips (or fails) itself without Chromium/selenium

    from digseg.cli.demo import build_demo, start_demo

    demo = build_demo(tiny_pipe)
    port = free_port()
    start_demo(demo, "127.0.0.1", port, block=False)
    try:
        with chromium_driver(tmp_path) as driver:
            from selenium.webdriver.common.by import By
            from selenium.webdriver.common.keys import Keys
            from selenium.webdriver.support.ui import WebDriverWait

            url = f"http://127.0.0.1:{port}/"
            wait = WebDriverWait(driver, 120)
            driver.get(url)
            upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#digseg-upload input[type=file]"))
            upload.send_keys(str(image_file))
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#digseg-preview img"))  # checked, previewed
            box = driver.find_element(By.CSS_SELECTOR, "#digseg-text textarea, #digseg-text input")
            box.clear()
            box.send_keys("circle")
            members = driver.find_element(By.CSS_SELECTOR, "#digseg-ensemble input[type=number]")
            members.clear()
            members.send_keys("2", Keys.TAB)  # ensemble of 2: an uncertainty map
            driver.find_element(By.ID, "digseg-run").click()
            result = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#digseg-overlay img"))
            assert result[0].get_attribute("src")
            wait.until(lambda d: "circle" in d.find_element(By.ID, "digseg-summary").text)
            assert "ensemble 2" in driver.find_element(By.ID, "digseg-summary").text
            footer = driver.find_element(By.ID, "digseg-runtime").text  # where the model runs
            assert "cpu (" in footer and "fp32" in footer and "torch " in footer, footer
            assert driver.find_elements(By.CSS_SELECTOR, "#digseg-compare img")  # the input/prediction slider
            assert driver.find_elements(By.CSS_SELECTOR, "#digseg-uncertainty img")
            save_screenshot(driver, "demo_result", tmp_path)
            fetched = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
            outside = [u for u in fetched if not u.startswith((url, "data:", "blob:"))]
            assert fetched and not outside, outside  # nothing from the internet (fonts included)

            driver.get(url)  # a fresh page: text bytes named .png
            upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#digseg-upload input[type=file]"))
            upload.send_keys(str(not_an_image))
            wait.until(lambda d: "not a recognised image format" in d.find_element(By.TAG_NAME, "body").text)
            body = driver.find_element(By.TAG_NAME, "body").text
            assert "notes.png" in body and "/tmp" not in body  # the file's name, not the server's upload folder
            save_screenshot(driver, "demo_bad_upload", tmp_path)
    finally:
        demo.close()


def test_one_step_model_runs_in_the_demo_with_fixed_ensemble_and_steps(tiny_pipe, image_file):
    tiny_pipe.register_to_config(objective="one-step", one_step_decoder="vae")
    out = segment(tiny_pipe, image_file, "prompt", "circle", ensemble_size=1, steps=1, seed=0)
    assert out.uncertainty is None and "circle" in out.summary
    with pytest.raises(DigsegError, match="one-step objective"):
        segment(tiny_pipe, image_file, "prompt", "circle", ensemble_size=2, steps=1, seed=0)
    _need(importlib.util.find_spec("gradio") is not None, 'gradio is not installed (pip install -e ".[demo]")')
    from digseg.cli.demo import build_demo

    demo = build_demo(tiny_pipe)
    try:
        sliders = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None) in ("digseg-ensemble", "digseg-steps")}
        assert len(sliders) == 2 and all(s.interactive is False for s in sliders.values())
    finally:
        demo.close()
