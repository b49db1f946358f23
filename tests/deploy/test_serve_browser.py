"""The page of `visionkit serve` in a real headless browser: Debian's chromium driven by Playwright (its Python
package only; the browser is the system's, so nothing is downloaded), a file chosen in the page, the drawing
and the predictions table appearing (issue 22)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.deploy.test_serve import ENV, det_cache, det_run, val_files  # noqa: F401 - the shared fixtures

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (make test installs Debian's where apt can)")
def test_the_page_uploads_an_image_and_shows_the_drawing_and_the_table(det_run: Path, tmp_path: Path) -> None:  # noqa: F811
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in make test's dev dependencies")
    spec = importlib.util.spec_from_file_location("serve_load", ROOT / "benchmarks" / "serve_load.py")
    load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load)
    server, port = load.start_server(str(det_run), 8, ENV)
    _, images = val_files()
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.getElementById('info').textContent.includes('task detection')")
            page.set_input_files("#file", str(images / "000000.png"))
            page.wait_for_selector("#table tr", timeout=60_000)
            page.wait_for_function("document.getElementById('drawing').naturalWidth > 0", timeout=60_000)
            header = page.inner_text("#table tr")
            width = page.evaluate("document.getElementById('drawing').naturalWidth")
            error = page.inner_text("#error")
            page.screenshot(path=str(tmp_path / "page.png"))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "class" in header and "score" in header and error == ""
    assert width >= 512  # the drawing, scaled for reading
    assert (tmp_path / "page.png").stat().st_size > 5000
