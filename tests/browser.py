"""Headless Chromium for tests that look at pages in a real browser (the predict report, the demo).

    from browser import chromium_driver, save_screenshot

    def test_page(tmp_path):
        with chromium_driver(tmp_path) as driver:
            driver.get(page.as_uri())
            ...
            save_screenshot(driver, "my-page.png", tmp_path)

Needs Debian's `chromium` and `chromium-driver` (apt-get install -y chromium chromium-driver) and the
`selenium` package. Without them the test is skipped, or fails when DIGSEG_REQUIRE_BROWSER is set
(to anything but "" or "0"), as CI does, so a missing browser cannot pass silently there.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "test-artifacts"  # gitignored; CI can upload it


def browser_required() -> bool:
    return os.environ.get("DIGSEG_REQUIRE_BROWSER", "") not in ("", "0")


def find_browser() -> tuple[str, str]:
    """(chromium binary, chromedriver binary); skips the test, or fails it under DIGSEG_REQUIRE_BROWSER."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    missing = []
    if not chromium:
        missing.append("chromium (apt-get install -y chromium)")
    if not chromedriver:
        missing.append("chromedriver (apt-get install -y chromium-driver)")
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium package (pip install selenium)")
    if missing:
        reason = "headless browser test needs " + ", ".join(missing)
        if browser_required():
            pytest.fail(f"{reason}; DIGSEG_REQUIRE_BROWSER is set, so this is a failure, not a skip")
        pytest.skip(reason)
    return chromium, chromedriver


@contextlib.contextmanager
def chromium_driver(tmp_path: Path, width: int = 1280, height: int = 1000) -> Iterator:
    """A headless Chromium selenium driver (file:// pages may load local files); quit on exit.

    The browser profile and chromedriver's log go under `tmp_path`.
    """
    chromium, chromedriver = find_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                 "--disable-dev-shm-usage", f"--window-size={width},{height}",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    service = Service(executable_path=chromedriver, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()


def save_screenshot(driver, name: str, tmp_path: Path | None = None, full_page: bool = True) -> Path:
    """Save a PNG of the page as `<tmp_path>/<name>` (when given) and `test-artifacts/<name>`; returns the latter.

    full_page: first grow the window to the page's height (at most 8000 px) so the whole page is captured.
    """
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    name = name if name.endswith(".png") else f"{name}.png"
    if full_page:
        width = driver.get_window_size()["width"]
        height = driver.execute_script("return Math.ceil(document.documentElement.scrollHeight)")
        driver.set_window_size(width, min(max(int(height) + 120, 600), 8000))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target = ARTIFACTS / name
    if tmp_path is not None:
        local = Path(tmp_path) / name
        assert driver.save_screenshot(str(local)), f"screenshot failed: {local}"
        shutil.copyfile(local, target)
    else:
        assert driver.save_screenshot(str(target)), f"screenshot failed: {target}"
    return target
