"""pipeline serve's web page in a real browser: headless Chromium driven by Selenium.

Loads ``/`` from a live uvicorn server on the quick demo's artefacts, types a query with the
keyboard, submits with Enter and checks that result rows with three probability bars and a
"why" line appear, on a phone-sized and a desktop viewport. Screenshots go to the test's
temporary folder, and also to ``$SHOPRANK_SCREENSHOT_DIR`` when set (how
docs/serve-screenshot.png is refreshed).
"""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium "
                              "chromium-driver; .ci/run installs them)"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def live_server(request: pytest.FixtureRequest) -> Iterator[str]:
    """The service on the demo's artefacts, on a free 127.0.0.1 port, until the module ends."""
    uvicorn = pytest.importorskip("uvicorn")
    from pipeline.serve import Artefacts, ServeSettings
    from pipeline.serve.app import create_app

    root, _ = request.getfixturevalue("demo_run")
    port = _free_port()
    app = create_app(ServeSettings(Artefacts(root / "indexes/default", root / "models/reranker",
                                             root / "data/sample/catalog.parquet"), port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the service did not become ready"
        time.sleep(0.2)
    yield base
    server.should_exit = True
    thread.join(15)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _search(driver: Any, base: str, query: str) -> list[Any]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{base}/")
    box = driver.find_element(By.ID, "q")
    assert driver.switch_to.active_element == box  # focused on load: type straight away
    box.send_keys(query, Keys.ENTER)
    WebDriverWait(driver, 30).until(ec.presence_of_all_elements_located((By.CSS_SELECTOR, "#results li.hit")))
    WebDriverWait(driver, 30).until(lambda d: "results for" in d.find_element(By.ID, "status").text)
    return driver.find_elements(By.CSS_SELECTOR, "#results li.hit")


def _save(driver: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 10_000
    if os.environ.get("SHOPRANK_SCREENSHOT_DIR"):
        shutil.copy(path, Path(os.environ["SHOPRANK_SCREENSHOT_DIR"]) / name)
    return path


def test_page_searches_and_shows_three_probability_bars(live_server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.set_window_size(1100, 1000)
    rows = _search(browser, live_server, "comfy couch for the living room")
    assert len(rows) == 10
    for row in rows:
        bars = row.find_elements(By.CSS_SELECTOR, ".bar")
        assert [b.get_attribute("aria-label") for b in bars] == ["p(click)", "p(add to cart)", "p(purchase)"]
        assert all(0.0 <= float(b.get_attribute("aria-valuenow")) <= 1.0 for b in bars)
        assert row.find_element(By.CSS_SELECTOR, ".why").text.startswith("why: ")
        assert row.find_element(By.CSS_SELECTOR, ".title").text
    assert "comfy+couch" in browser.current_url  # the query is in the URL: reload and back work
    _save(browser, tmp_path, "serve-screenshot.png")


def test_page_is_readable_on_a_phone_sized_viewport(live_server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.set_window_size(390, 844)
    rows = _search(browser, live_server, "red running shoes")
    width = browser.execute_script("return document.documentElement.clientWidth")
    assert browser.execute_script("return document.documentElement.scrollWidth") <= width  # no sideways scroll
    assert all(r.rect["width"] <= width for r in rows)
    assert len(rows[0].find_elements(By.CSS_SELECTOR, ".bar")) == 3
    _save(browser, tmp_path, "serve-screenshot-phone.png")
