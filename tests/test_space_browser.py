"""The Space in a real browser: headless Debian Chromium driven by Python playwright (no `playwright install`).

Needs `apt-get install -y chromium` (the CI script installs it); without it this test FAILS with that instruction,
on purpose, rather than skipping. It uploads a frame and a WAV, clicks, waits for the three heat maps and ρ,
saves a screenshot, then checks that a corrupt image gets a readable message in the page.

Screenshot: written to the test's tmp folder; with XPL_SAVE_SCREENSHOT=1 (or =PATH) also copied to
docs/space_screenshot.png (or PATH). XPL_SCREENSHOT_MODEL=DIR_OR_HUB_ID uses that model instead of the tiny random
one (use a trained model for a screenshot worth committing).
"""

from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from test_space import free_port, load_app  # noqa: E402  (the app loader and port helper of the Space tests)

from xpl_hf import XPLConfig, XPLModel, XPLProcessor  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("XPL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-default-apps", "--disable-extensions"]
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install it with `apt-get install -y chromium` (Debian) or set "
                    "XPL_CHROMIUM to a Chromium binary. This real-browser test does not skip.")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("The Python package `playwright` is missing: `pip install playwright` (no `playwright install` "
                    "needed, the system Chromium is used).")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    app = load_app()
    model = os.environ.get("XPL_SCREENSHOT_MODEL")
    if not model:
        config = XPLConfig(image_size=64, embed_dim=32, vggish_fc_dim=64)
        folder = tmp_path_factory.mktemp("xpl-output")
        XPLModel(config).save_pretrained(folder)
        XPLProcessor.from_config(config).save_pretrained(folder)
        model = str(folder)
    examples = app.make_examples(tmp_path_factory.mktemp("examples"), count=2)
    demo = app.build_demo(model, examples_dir=Path(examples[0][0]).parent)
    assert demo.xpl_ready
    demo.queue().launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                        **app.launch_kwargs(demo))
    yield demo.local_url, examples
    demo.close()


def test_upload_click_and_see_heat_maps(browser, space, tmp_path):
    url, examples = space
    jpg, wav, _ = examples[0]
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.locator("#image-input input[type=file]").set_input_files(jpg)
    page.locator("#audio-input input[type=file]").set_input_files(wav)
    page.locator("#image-input img").first.wait_for(state="visible")  # the upload finished: preview shown
    page.locator("#audio-input audio, #audio-input canvas, #audio-input [data-testid='waveform-x']").first.wait_for(
        state="attached")
    page.locator("#run-pair").click()
    page.get_by_text("Consensus ρ =").wait_for(state="visible")
    for elem in ("#map-a", "#map-b", "#map-fused"):
        image = page.locator(f"{elem} img").first
        image.wait_for(state="visible")
        assert image.evaluate("img => img.complete && img.naturalWidth") == 224
    rho = float(page.locator("#rho input").input_value())
    assert -1.0 <= rho <= 1.0
    assert float(page.locator("#ms input").input_value()) > 0
    screenshot = tmp_path / "space_screenshot.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    target = os.environ.get("XPL_SAVE_SCREENSHOT")
    if target:
        destination = REPO_ROOT / "docs" / "space_screenshot.png" if target == "1" else Path(target)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, destination)

    # A corrupt image gets a readable message in the page, and the page keeps working.
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    page.locator("#image-input button[aria-label='Remove Image']").first.click()
    page.locator("#image-input input[type=file]").set_input_files(str(corrupt))
    page.locator("#run-pair").click()
    page.get_by_text("Could not read the image").first.wait_for(state="visible")
    page.screenshot(path=str(tmp_path / "space_error.png"))
    page.close()
