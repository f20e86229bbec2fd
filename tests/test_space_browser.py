"""The Space in a real browser: headless Chromium (Debian's package in CI) driven by Python playwright.

The browser is the first of: `$CHROMIUM` (or `$XPL_CHROMIUM`), `chromium` / `chromium-browser` on the PATH,
/usr/bin/chromium, and a Chromium that playwright already has (`playwright install` fetches one; nothing is downloaded
here). Without any, the test SKIPS with the install command (`apt-get install -y chromium`), so the README's test
command passes on a fresh machine; with `XPL_REQUIRE_BROWSER=1` (set by `.ci/run`, which installs Chromium first) it
FAILS instead. It uploads a frame and a WAV, clicks, waits for the three heat maps and ρ, saves a screenshot, then
checks that a corrupt image gets a readable message in the page.

Screenshot: written to the test's tmp folder; with XPL_SAVE_SCREENSHOT=1 (or =PATH) also copied to
docs/space_screenshot.png (or PATH). XPL_SCREENSHOT_MODEL=DIR_OR_HUB_ID uses that model instead of the tiny random
one (use a trained model for a screenshot worth committing).
"""

from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from test_space import free_port, load_app  # noqa: E402  (the app loader and port helper of the Space tests)

from xpl_hf import XPLConfig, XPLModel, XPLProcessor  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
INSTALL_HINT = ("install it with `apt-get install -y chromium` (Debian/Ubuntu) or point $CHROMIUM at a Chromium/Chrome "
                "binary")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-default-apps", "--disable-extensions"]
TIMEOUT_MS = 30_000
SYSTEM_CHROMIUM = "/usr/bin/chromium"


def browser_required() -> bool:
    """`XPL_REQUIRE_BROWSER=1` (CI) turns a missing browser or playwright into a failure instead of a skip."""
    return os.environ.get("XPL_REQUIRE_BROWSER", "").strip().lower() in ("1", "true", "yes", "on")


def _missing(reason: str):
    """Skip (fresh machine) or fail (XPL_REQUIRE_BROWSER=1) with `reason`."""
    if browser_required():
        pytest.fail(f"{reason} (XPL_REQUIRE_BROWSER=1: the real-browser test must run)")
    pytest.skip(reason)


def find_chromium(playwright=None) -> str | None:
    """The Chromium binary to drive, or None: $CHROMIUM / $XPL_CHROMIUM, the PATH, /usr/bin/chromium, playwright's.

    An environment variable that names a missing file is an error (a typo should not turn into a skip).
    """
    for variable in ("CHROMIUM", "XPL_CHROMIUM"):
        value = os.environ.get(variable)
        if value:
            path = shutil.which(value) or (value if Path(value).is_file() else None)
            if path is None:
                pytest.fail(f"${variable}={value!r} is not an executable file; {INSTALL_HINT}.")
            return path
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    if Path(SYSTEM_CHROMIUM).is_file():
        return SYSTEM_CHROMIUM
    if playwright is not None:  # a browser playwright already holds (`playwright install`); never downloaded here
        bundled = playwright.chromium.executable_path
        if bundled and Path(bundled).is_file():
            return bundled
    return None


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("The Python package `playwright` is missing: `pip install playwright` (or `pip install -e .[dev]`); "
                 "no `playwright install` is needed when a system Chromium is used.")
    with sync_playwright() as p:
        chromium = find_chromium(p)
        if chromium is None:
            _missing(f"No Chromium found for the real-browser test of the Space: {INSTALL_HINT}.")
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
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


# --------------------------------------------------------------------- discovery: skip on a fresh machine, fail in CI
@pytest.fixture
def no_browser(monkeypatch, tmp_path):
    """A machine without any Chromium: empty PATH, no $CHROMIUM, no system binary."""
    for variable in ("CHROMIUM", "XPL_CHROMIUM", "XPL_REQUIRE_BROWSER"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys.modules[__name__], "SYSTEM_CHROMIUM", str(tmp_path / "no-chromium"))


def test_missing_browser_skips_with_the_install_command(no_browser):
    assert find_chromium() is None
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y chromium"):
        _missing(f"No Chromium found: {INSTALL_HINT}.")


def test_missing_browser_fails_when_required(no_browser, monkeypatch):
    monkeypatch.setenv("XPL_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="XPL_REQUIRE_BROWSER=1"):
        _missing(f"No Chromium found: {INSTALL_HINT}.")


def test_browser_from_environment(no_browser, monkeypatch, tmp_path):
    fake = tmp_path / "my-chrome"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CHROMIUM", str(fake))
    assert find_chromium() == str(fake)
    monkeypatch.setenv("CHROMIUM", str(tmp_path / "typo"))
    with pytest.raises(pytest.fail.Exception, match="not an executable file"):
        find_chromium()
