"""The page of `visionkit serve` in a real headless browser: Debian's chromium driven by Playwright (its Python
package only; the browser is the system's, so nothing is downloaded). For detection, segmentation and instance
segmentation an image is chosen in the page and the drawing and the predictions table appear; for generation
the "sample" button draws a grid of samples and lists them (issue 22)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.deploy.test_serve import det_cache, det_run, val_files  # noqa: F401 - the shared fixtures
from visionkit.deploy.serve import build_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on this machine (make test installs Debian's where apt can)"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless chromium for the module's pages."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in make test's dev dependencies")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@contextlib.contextmanager
def _serving(run: Path, **options: Any) -> Iterator[int]:
    """The app of `run` under uvicorn on a free loopback port, in a thread of this process (no start-up cost)."""
    uvicorn = pytest.importorskip("uvicorn", reason="the serve extra is in make test's dev dependencies")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(run, options=options), host="127.0.0.1", port=port,
                                           log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _image(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "upload.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("task", ["detection", "segmentation", "instance"])
def test_the_page_uploads_an_image_and_shows_the_drawing_and_the_table(
    task: str, browser: Any, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    run = request.getfixturevalue({"detection": "det_run", "segmentation": "seg_run", "instance": "inst_run"}[task])
    upload = val_files()[1] / "000000.png" if task == "detection" else _image(tmp_path, 48)
    with _serving(run, score_threshold=0.0) if task != "segmentation" else _serving(run) as port:  # 2-step runs
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function(f"document.getElementById('info').textContent.includes('task {task}')")
        assert page.is_visible("#drop") and not page.is_visible("#sampler")
        page.set_input_files("#file", str(upload))
        page.wait_for_selector("#table tr", timeout=60_000)
        page.wait_for_function("document.getElementById('drawing').naturalWidth > 0", timeout=60_000)
        rows = page.eval_on_selector_all("#table tr", "rows => rows.map(r => r.innerText)")
        width = page.evaluate("document.getElementById('drawing').naturalWidth")
        error = page.inner_text("#error")
        page.screenshot(path=str(tmp_path / "page.png"))
        page.close()
    assert "class" in rows[0] and "score" in rows[0] and error == ""
    assert len(rows) > 1  # a row per detection, or per class present in the segmentation
    assert width >= 512  # the drawing, scaled for reading
    assert (tmp_path / "page.png").stat().st_size > 5000


def test_the_generation_page_samples_with_its_button(browser: Any, gen_run: Path, tmp_path: Path) -> None:
    with _serving(gen_run) as port:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("document.getElementById('info').textContent.includes('task generation')")
        assert page.is_visible("#sampler")
        page.fill("#count", "6")
        page.click("#sample")
        page.wait_for_function("document.getElementById('drawing').naturalWidth > 0", timeout=60_000)
        rows = page.eval_on_selector_all("#table tr", "rows => rows.map(r => r.innerText)")
        error = page.inner_text("#error")
        page.fill("#count", "0")  # refused by the server, shown in the page
        page.click("#sample")
        page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=60_000)
        refused = page.inner_text("#error")
        page.close()
    assert error == "" and len(rows) == 1 + 6 and "sample" in rows[0]
    assert "num_samples" in refused
