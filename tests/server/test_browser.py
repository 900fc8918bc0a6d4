"""The web page in real headless Chromium (Debian's package, driven by Playwright): search, open a
result, see similar images, upload an image. Screenshots go to $TEST_ARTIFACTS (default test-artifacts/)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from searchengine.config import Settings
from searchengine.server import ServerConfig, app_for
from tests.support.fakemodel import color_image

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _need_browser():
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("playwright is part of the dev install") if os.environ.get("CI") else pytest.skip("no playwright")
    if CHROMIUM is None:
        message = "the browser test needs Debian's chromium package (.ci/run installs it)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)


@pytest.fixture
def server(pics):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = app_for(Settings.from_env(collection="c"), ServerConfig(port=port), model="fake:colors")
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def test_search_click_similar_and_upload_in_chromium(server, tmp_path):
    _need_browser()
    from playwright.sync_api import expect, sync_playwright

    artifacts = Path(os.environ.get("TEST_ARTIFACTS", "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    query = color_image(tmp_path / "query.png", "yellow", size=(40, 40))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone's width
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server + "/")
        expect(page.locator("#collection")).to_contain_text("8 images")

        page.get_by_label("Search words").fill("something blue")
        page.keyboard.press("Enter")
        first = page.locator("#grid li button").first
        expect(first).to_contain_text("blue.png")
        expect(page.locator("#grid img").first).to_have_attribute("src", re.compile(r"^/api/images/\d+/thumbnail\?size=256$"))
        loaded = page.evaluate("Array.from(document.querySelectorAll('#grid img')).filter(i => i.complete)"
                               ".every(i => i.naturalWidth > 0)")
        assert loaded  # thumbnails really decode
        page.screenshot(path=str(artifacts / "browser-search.png"), full_page=True)

        first.focus()  # keyboard only: Enter opens the result
        page.keyboard.press("Enter")
        dialog = page.locator("#detail")
        expect(dialog).to_be_visible()
        expect(page.locator("#detail-title")).to_have_text("blue.png")
        expect(page.locator("#detail-facts")).to_contain_text("winter")  # its sidecar attribute
        expect(page.locator("#similar li")).to_have_count(7)  # every other image, itself left out
        page.screenshot(path=str(artifacts / "browser-detail.png"), full_page=True)
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()

        page.set_input_files("#file", str(query))
        expect(page.locator("#message")).to_contain_text("results like query.png")
        expect(page.locator("#grid li button").first).to_contain_text("yellow.png")
        page.screenshot(path=str(artifacts / "browser-upload.png"), full_page=True)
        assert not errors, errors
        browser.close()
