"""Lint, format and types as tests, so the README's one test command (and .ci/run) runs them.

The versions are pinned in the ``test`` extra: a newer ruff or mypy may find new things, and
that should be a deliberate upgrade, not a red CI on an unrelated change.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> str:
    """The tool beside this interpreter (the venv's), else on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]' installs the pinned version")
    return found


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_ruff_check_passes():
    out = _run(_tool("ruff"), "check", ".", "--output-format", "concise")
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-2000:]


def test_ruff_format_check_passes():
    out = _run(_tool("ruff"), "format", "--check", ".")
    assert out.returncode == 0, "run `ruff format .`:\n" + out.stdout[-5000:] + out.stderr[-2000:]


def test_mypy_passes_on_the_engine_and_the_dashboard():
    out = _run(_tool("mypy"), "--cache-dir", str(ROOT / ".mypy_cache"))
    assert out.returncode == 0, out.stdout[-8000:] + out.stderr[-2000:]
    assert "Success" in out.stdout
