"""An installed MNEME serves its dashboard: the wheel, installed non-editable into a fresh
virtual environment, run from another folder.

The wheel is built from a copy of the sources (a build in the checkout leaves ``build/``
behind, whose stale files would end up in later wheels), with this environment's setuptools
(the ``test`` extra), so no package index is needed. The environment gets the
dependencies from this interpreter's site-packages through a ``.pth`` file instead of
installing torch again; MNEME itself is only in the wheel. ``mneme dashboard RUN`` then
serves a copy of a demo run, and every page is read over HTTP through Streamlit's agent
API (``/_stcore/agent/interact``, switched on for this test only): it runs the page as a
browser session would and returns what it drew.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest
from _serve import stop

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "mneme_core", "mneme_dashboard")
PAGES = sorted(p.stem for p in (ROOT / "mneme_dashboard" / "pages").glob("*.py"))
DEMO_RUN = ROOT / "data" / "demo" / "rmu"
TIMEOUT = 120


def _run(*cmd: str | Path, **kw) -> str:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed (not editable)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, src / name)
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", src, "-w", base / "dist")
    wheel = next((base / "dist").glob("mneme-*.whl"))
    env = base / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", env)
    python = env / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel)
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    # after the install, so pip never saw the editable MNEME of the development environment
    (site / "mneme-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env


def _isolated_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MNEME_RUNS")}
    return env | extra


PROBE = """
import json, sys
import mneme_core, mneme_core.cli, mneme_dashboard
print(json.dumps({"core": mneme_core.__file__, "entry": str(mneme_dashboard.ENTRY),
                  "streamlit_imported": "streamlit" in sys.modules}))
"""


def test_the_wheel_carries_the_dashboard(venv, tmp_path):
    found = json.loads(_run(venv / "bin" / "python", "-c", PROBE, cwd=tmp_path, env=_isolated_env()))
    assert Path(found["core"]).resolve().is_relative_to(venv.resolve())  # the wheel's, not the checkout's
    entry = Path(found["entry"])
    assert entry.resolve().is_relative_to(venv.resolve()) and entry.is_file()
    assert sorted(p.stem for p in (entry.parent / "pages").glob("*.py")) == PAGES
    assert (entry.parent / "_ui.py").is_file() and (entry.parent / ".streamlit" / "config.toml").is_file()
    assert not found["streamlit_imported"]  # the engine and the CLI never import Streamlit
    assert (venv / "bin" / "mneme").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    """One interaction; a page still running after the API's own wait (a cold import of
    torch on a busy machine) is waited for again by its session id, up to TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            answer = json.loads(resp.read())
        if answer.get("error", {}).get("code") != "wait_timed_out" or time.monotonic() > deadline:
            return answer
        body = {"session_id": answer["session_id"]}


def _nodes(node: dict) -> list[dict]:
    return [node] + [n for child in node.get("children", []) for n in _nodes(child)]


@pytest.fixture
def dashboard(venv, tmp_path):
    """`mneme dashboard RUN` started from a folder that is neither the checkout nor the run's."""
    if not (DEMO_RUN / "run.json").is_file():
        pytest.skip(f"no demo run at {DEMO_RUN}")
    run = tmp_path / "runs" / "rmu"
    shutil.copytree(DEMO_RUN, run)  # a copy: pages may write into the run (triage marks)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    port = _free_port()
    log = (tmp_path / "streamlit.log").open("w")
    proc = subprocess.Popen(
        [venv / "bin" / "mneme", "dashboard", run],
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_isolated_env(STREAMLIT_SERVER_PORT=str(port), STREAMLIT_SERVER_ENABLE_AGENT_API="true"),
    )
    url = f"http://localhost:{port}"
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert proc.poll() is None, (tmp_path / "streamlit.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, "the dashboard did not become healthy"
                time.sleep(0.2)  # polling while the server starts
        yield url, run, tmp_path / "streamlit.log"
    finally:
        stop(proc)
        log.close()


def test_mneme_dashboard_from_a_wheel_serves_every_page(dashboard):
    url, run, log = dashboard
    api = f"{url}/_stcore/agent/interact"
    first = _post(api, {"query_params": {"run": [str(run)]}})
    served = {page["url_path"] or "overview" for page in first["pages"]}  # the default page has no path
    assert sorted(served) == PAGES
    for page in first["pages"]:
        snap = _post(api, {"page": page["url_path"], "query_params": {"run": [str(run)]}})
        assert "tree" in snap, (page["url_path"], snap.get("error"))
        nodes = _nodes(snap["tree"])
        errors = [n.get("props", {}) for n in nodes if n.get("type") == "exception"]
        assert not errors, (page["title"], errors)
        titles = [n["props"].get("body") for n in nodes if n.get("type") == "title"]
        assert titles and not {"This run cannot be opened", "No run to show"} & set(titles), (page["title"], titles)
    # the packaged .streamlit/config.toml was read: without it Streamlit announces telemetry
    # and a network address
    text = log.read_text()
    assert "Collecting usage statistics" not in text and "Network URL" not in text, text
