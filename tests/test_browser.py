"""``ribsr serve`` and ``ribsr compare``'s report in a real browser: headless Chromium (Debian's chromium and
chromium-driver) driven by selenium (the ``browser`` extra). Marked ``browser`` and left out of the default run:

    .venv/bin/pip install -q -e '.[browser]' && .venv/bin/python -m pytest -m browser tests/test_browser.py

The serve test starts ``ribsr serve --port 0``, loads the page, uploads the sample image, waits for the result,
moves the slider, zooms to single pixels and downloads the result, whose size and pixels it checks against the
model's output. With ``RIBSR_SCREENSHOTS=DIR`` the screenshots (``serve.png``, ``serve-zoom.png``,
``compare.png``) are also saved in DIR (docs/images holds the ones the docs show).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO

pytestmark = pytest.mark.browser

SAMPLE = REPO / "src" / "ribsr" / "assets" / "butterfly.png"
WIDTH, HEIGHT = 1280, 1000


def chromium_binary() -> str | None:
    """$CHROMIUM, Debian's real binary behind the /usr/bin/chromium launcher script, or chromium on PATH."""
    for candidate in (os.environ.get("CHROMIUM"), "/usr/lib/chromium/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture
def driver(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install -e '.[browser]'")
    from selenium.webdriver.chrome.service import Service

    binary, chromedriver = chromium_binary(), os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    if not binary or not chromedriver:
        pytest.skip("Chromium and ChromeDriver not installed (apt-get install chromium chromium-driver)")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={WIDTH},{HEIGHT}"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    d = webdriver.Chrome(service=Service(chromedriver), options=options)
    d.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    d.downloads = downloads
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture
def serve(tmp_path):
    """``ribsr serve --port 0`` in a subprocess; yields its address."""
    proc = subprocess.Popen([sys.executable, "-m", "ribsr", "serve", "--port", "0", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert match, f"ribsr serve printed {line!r}"
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait(10)


def wait_for(condition, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"{what} not met after {timeout} s")


def screenshot(driver, name: str, tmp_path: Path) -> None:
    driver.save_screenshot(str(tmp_path / name))
    folder = os.environ.get("RIBSR_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / name, Path(folder) / name)


def test_serve_page_upload_slider_zoom_download(driver, serve, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from ribsr.compare import Side
    from ribsr.imageio import read_image, to_array

    driver.get(serve)
    wait_for(lambda: driver.execute_script("return document.body.dataset.ready"), 20, "page ready")
    assert driver.find_element(By.ID, "model").get_attribute("value") == "default"
    assert driver.find_element(By.ID, "compare").get_attribute("value") == "bicubic"
    driver.find_element(By.ID, "file").send_keys(str(SAMPLE))
    item = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#jobs li"), 10, "a job in the list")[0]
    states = set()

    def done():
        state = item.get_attribute("data-state")
        states.add(state)
        assert state != "error", item.text
        return state == "done"

    wait_for(done, 120, "the job done")
    viewer = driver.find_element(By.ID, "viewer")
    wait_for(lambda: viewer.get_attribute("data-ready") == "1", 20, "the viewer's images loaded")
    assert "butterfly.png" in driver.find_element(By.ID, "result-name").text
    assert "128×128 → 256×256 (x2)" in driver.find_element(By.ID, "result-facts").text
    assert float(viewer.get_attribute("data-split")) == pytest.approx(0.5)
    assert float(item.find_element(By.TAG_NAME, "progress").get_attribute("value")) == 1

    # Drag the divider's handle a quarter of the picture's width to the left.
    width = driver.execute_script("return document.querySelector('#viewer .rc-after img')"
                                  ".getBoundingClientRect().width")  # as drawn, zoomed to fit
    handle = driver.find_element(By.CSS_SELECTOR, "#viewer .rc-handle")
    ActionChains(driver).click_and_hold(handle).move_by_offset(-round(width / 4), 0).release().perform()
    split = float(viewer.get_attribute("data-split"))
    assert split == pytest.approx(0.25, abs=0.02)
    screenshot(driver, "serve.png", tmp_path)

    # Zoom in to single pixels (drawn unsmoothed): eight image pixels per screen pixel and more.
    fit_zoom = float(viewer.get_attribute("data-zoom"))
    for _ in range(4):
        driver.find_element(By.CSS_SELECTOR, "#viewer .rc-in").click()
    zoom = float(viewer.get_attribute("data-zoom"))
    assert zoom == pytest.approx(min(64, fit_zoom * 16), rel=1e-3) and zoom >= 8
    assert "rc-smooth" not in viewer.get_attribute("class")
    rendering = driver.execute_script("return getComputedStyle(document.querySelector('#viewer .rc-after img'))"
                                      ".imageRendering")
    assert rendering == "pixelated"
    screenshot(driver, "serve-zoom.png", tmp_path)
    driver.find_element(By.CSS_SELECTOR, "#viewer .rc-fit").click()
    assert float(viewer.get_attribute("data-zoom")) == pytest.approx(fit_zoom)

    # Download the result and check it is the model's output.
    link = driver.find_element(By.ID, "download")
    assert link.get_attribute("download") == "butterfly_x2.png"
    link.click()
    target = driver.downloads / "butterfly_x2.png"
    wait_for(lambda: target.is_file() and not list(driver.downloads.glob("*.crdownload")), 30, "the download")
    with Image.open(target) as im:
        assert im.size == (256, 256) and im.mode == "RGB"
        got = np.asarray(im)
    img = read_image(SAMPLE)
    expected = to_array(Side.open("default", scale=2, device="cpu").upscale(img), np.uint8, 3)
    assert np.array_equal(got, expected)


def test_serve_page_shows_a_refusal(driver, serve, tmp_path):
    from selenium.webdriver.common.by import By

    driver.get(serve)
    wait_for(lambda: driver.execute_script("return document.body.dataset.ready"), 20, "page ready")
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    driver.find_element(By.ID, "file").send_keys(str(notes))
    message = driver.find_element(By.ID, "message")
    wait_for(lambda: message.is_displayed(), 20, "the error message")
    assert message.text == "notes.png: not a recognised image file"
    item = driver.find_element(By.CSS_SELECTOR, "#jobs li")
    assert item.get_attribute("data-state") == "error"


def test_compare_report(driver, tmp_path, datasets_dir):
    from selenium.webdriver.common.by import By

    report = tmp_path / "report.html"
    hr = datasets_dir / "Set5" / "HR"
    lr = datasets_dir / "Set5" / "LR_bicubic" / "X2"
    inputs = [str(lr / name) for name in ("butterflyx2.png", "birdx2.png")]
    subprocess.run([sys.executable, "-m", "ribsr", "compare", *inputs, "--model", "default", "--hr", str(hr),
                    "-o", str(report)], check=True, cwd=tmp_path, capture_output=True)
    driver.get(report.as_uri())
    viewers = driver.find_elements(By.CSS_SELECTOR, ".viewer")
    assert len(viewers) == 2
    wait_for(lambda: all(v.get_attribute("data-ready") == "1" for v in viewers), 20, "the report's images")
    rows = driver.find_elements(By.CSS_SELECTOR, "table tr")
    assert "dB" in rows[1].text and "mean of 2" in rows[-1].text
    first = viewers[0]
    first.find_element(By.CSS_SELECTOR, ".rc-view").click()
    for _ in range(5):
        first.find_element(By.CSS_SELECTOR, ".rc-view").send_keys("\ue012")  # arrow left: the divider moves
    assert float(first.get_attribute("data-split")) == pytest.approx(0.4, abs=0.01)
    driver.set_window_size(WIDTH, 1100)
    screenshot(driver, "compare.png", tmp_path)
