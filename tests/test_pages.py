"""The pages a browser sees, in a real headless Chromium (Debian's, driven by Playwright) against a real
server: /docs renders the API reference offline, a browser asking for / lands on /status, the status
page shows the models and the last errors, and its try box returns a vector; no console errors."""

from __future__ import annotations

import json
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from .conftest import MINILM

pytestmark = pytest.mark.process
BROWSERS = (
    "chromium",
    "chromium-browser",
    "google-chrome",
    "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    executable = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    if executable is None:
        if sys.platform == "darwin":  # make test installs chromium on Linux only
            pytest.skip("no Chrome here: install Google Chrome to run the page tests")
        raise AssertionError("Chromium is part of the test install: run `make test` (it installs chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


def open_page(browser, url: str):
    """A page and the list its console errors and uncaught exceptions go to."""
    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(url)
    return page, problems


def test_docs_render_every_route_offline(browser, start_server) -> None:
    server = start_server()
    page, problems = open_page(browser, f"{server.url}/docs")
    page.wait_for_selector(".opblock", timeout=20_000)
    shown = page.locator(".opblock-summary-path").all_inner_texts()
    assert "/v1/embeddings" in shown and "/api/embed" in shown and "/embed" in shown
    assert problems == []


def test_a_browser_at_the_root_lands_on_the_status_page_and_can_try_an_embedding(browser, start_server) -> None:
    server = start_server()
    body = json.dumps({"model": MINILM, "input": "x", "dimension": 8}).encode()  # a misspelt field: a 400
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(urllib.request.Request(f"{server.url}/v1/embeddings", data=body), timeout=30)
    page, problems = open_page(browser, server.url)
    assert page.url == f"{server.url}/status"
    page.wait_for_selector(f"#model option[value='{MINILM}']", state="attached", timeout=20_000)
    assert "unknown_field" not in page.locator("#errors").inner_text()  # the message, not the code
    page.wait_for_function("document.getElementById('errors').innerText.includes('dimension')", timeout=10_000)
    page.click("#run")
    page.wait_for_selector("#result[data-dimensions='384']", timeout=30_000)
    assert page.locator("#result").inner_text().startswith("384 dimensions")
    page.wait_for_function("document.getElementById('models').innerText.includes('MB')", timeout=10_000)
    assert problems == []
