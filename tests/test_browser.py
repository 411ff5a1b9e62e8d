"""Real browser: headless Chromium against `streamlit run app.py` on 127.0.0.1.

Opens the overview, the explorer, a latent page by deep link and the side-effects page
of the session's tiny run, waits for each page's key elements (no fixed sleeps), and
saves screenshots to tests/artifacts/.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest
from _serve import stop

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
selenium = pytest.importorskip("selenium")
if not (CHROMIUM and DRIVER):
    pytest.skip(
        "Debian chromium + chromium-driver are needed (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

TIMEOUT = 90


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited early:\n{proc.stdout.read() if proc.stdout else ''}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)  # polling interval while the server starts, not a wait for the page
    raise TimeoutError("streamlit did not become healthy")


@pytest.fixture(scope="module")
def server(tiny_run):
    port = _free_port()
    env = {**os.environ, "MNEME_RUNS": str(tiny_run)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(ROOT / "app.py"),
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url, tiny_run
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def browser():
    profile = tempfile.mkdtemp(prefix="mneme-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1500,1100",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _open(driver, url: str) -> WebDriverWait:
    driver.get(url)
    wait = WebDriverWait(driver, TIMEOUT)
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "[data-testid='stApp']")))
    return wait


def _settled(driver, wait: WebDriverWait, heading: str) -> None:
    """Wait until the page's title is drawn and the script has finished running."""
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "h1"), heading))
    wait.until(
        lambda d: d.execute_script(
            "return document.querySelector('[data-testid=\"stStatusWidget\"]') === null"
            " || document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.indexOf('Running') < 0"
        )
    )


def _shot(driver, name: str) -> None:
    """Screenshot once Streamlit has replaced its loading skeletons with the real elements."""
    WebDriverWait(driver, TIMEOUT).until(
        lambda d: d.execute_script("return document.querySelectorAll('[data-testid=\"stSkeleton\"]').length === 0")
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script(
        "const m = document.querySelector('[data-testid=\"stMain\"]'); return m ? m.scrollHeight : 1100"
    )
    driver.set_window_size(1500, max(1100, min(int(height) + 120, 5000)))
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    driver.set_window_size(1500, 1100)


def _body(driver) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def test_overview(server, browser):
    url, run = server
    wait = _open(browser, f"{url}/overview?run={quote(str(run))}")
    _settled(browser, wait, "")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "[data-testid='stMetric']")))
    wait.until(lambda d: "Stages" in _body(d) and "Latents" in _body(d) and "Side effects" in _body(d))
    nav = browser.find_elements(By.CSS_SELECTOR, "[data-testid='stSidebarNav'] a")
    assert {"Overview", "Latent explorer", "Side effects", "Triage"} <= {a.text.strip().splitlines()[-1] for a in nav}
    assert "run=" in browser.current_url  # the run stays in the URL, so the link can be shared
    _shot(browser, "overview")


def test_explorer(server, browser):
    url, run = server
    wait = _open(browser, f"{url}/explorer?run={quote(str(run))}")
    _settled(browser, wait, "Latent explorer")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "[data-testid='stDataFrame']")))
    wait.until(lambda d: "Showing" in _body(d))
    # Streamlit draws progressively: wait for each element (a TimeoutException fails the test)
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "input[aria-label='Search descriptions']")))
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "[data-testid='stDownloadButton']")))
    _shot(browser, "explorer")


def test_latent_deep_link(server, browser):
    url, run = server
    from mneme_core import open_run

    latents = open_run(run).latents
    latent = (
        int(latents.loc[latents["attribution"] != "unchanged", "latent"].iloc[0])
        if "attribution" in latents
        else int(latents["latent"].iloc[0])
    )
    wait = _open(browser, f"{url}/latent?run={quote(str(run))}&latent={latent}")
    _settled(browser, wait, f"Latent {latent}")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "[data-testid='stMetric']")))
    wait.until(lambda d: "Latent scaling" in _body(d) and "Where it fires" in _body(d))
    assert f"latent={latent}" in browser.current_url
    _shot(browser, "latent")


def test_side_effects(server, browser):
    url, run = server
    wait = _open(browser, f"{url}/side_effects?run={quote(str(run))}")
    _settled(browser, wait, "Side effects")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "[data-testid='stSlider']")))
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".js-plotly-plot, [data-testid='stPlotlyChart']")))
    wait.until(lambda d: "MNEME accuracy" in _body(d))
    _shot(browser, "side_effects")


def test_a_hostile_description_shows_as_text(server, browser, tmp_path):
    """A description is an LLM's reading of web text: links (bracketed or bare), images,
    e-mail addresses and Streamlit's colour directives in it are drawn as the characters
    they are, with no link, image or colour in the page."""
    import pandas as pd

    from mneme_core.run.store import merge_latent_columns

    url, run = server
    copy = Path(shutil.copytree(run, tmp_path / "hostile"))
    latent = 0
    hostile = (
        "<b>x</b> [link](http://example.com/a) ![img](http://example.com/i.png) https://example.org/b "
        "www.example.net mail@example.com :red[red] :material/home: :smile: :+1: **bold**"
    )
    merge_latent_columns(copy, pd.DataFrame({"latent": [latent], "description": [hostile]}))
    wait = _open(browser, f"{url}/latent?run={quote(str(copy))}&latent={latent}")
    _settled(browser, wait, f"Latent {latent}")
    wait.until(lambda d: "Latent scaling" in _body(d))
    main = browser.find_element(By.CSS_SELECTOR, "[data-testid='stMain']")
    heading = main.find_element(By.CSS_SELECTOR, "h4")
    assert heading.text.replace("\u2060", "") == hostile  # the word joiners that break shortcodes are invisible
    # Streamlit gives every heading an anchor of its own (href "#…"); nothing else may be there
    styled = heading.find_elements(By.CSS_SELECTOR, "a:not([href^='#']), img, b, strong, span[style*='color']")
    assert not styled, [e.get_attribute("outerHTML") for e in styled]
    hrefs = [a.get_attribute("href") or "" for a in main.find_elements(By.CSS_SELECTOR, "a")]
    assert not [h for h in hrefs if "example" in h.split("#")[0]], hrefs
