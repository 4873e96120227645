"""`make run` ends with the bot's own line: make adds nothing when the bot stops on something it explained."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bot.__main__ import EXIT_CONFIG, EXIT_STARTUP

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed here")


def make_run(tmp_path: Path, status: int, line: str) -> subprocess.CompletedProcess[str]:
    """`make run` with a set-up venv whose python prints `line` and exits with `status`."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f"#!/bin/sh\necho '{line}' >&2\nexit {status}\n")
    python.chmod(0o755)
    (venv / ".installed-run").touch()  # newer than what it depends on: make does not set the venv up again
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "run", f"VENV={venv}"],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("status", [EXIT_CONFIG, EXIT_STARTUP])
def test_a_stop_the_bot_explained_ends_with_its_own_line(tmp_path, status):
    result = make_run(tmp_path, status, "Configuration error: NUM_CROPS must be between 1 and 16")
    assert result.stderr.strip().splitlines()[-1] == "Configuration error: NUM_CROPS must be between 1 and 16"
    assert "***" not in result.stderr and "Error" not in result.stderr.replace("Configuration error", "")
    assert result.stdout == ""  # the command line itself is not echoed either


def test_a_crash_still_fails_the_make_run(tmp_path):
    result = make_run(tmp_path, 1, "Traceback (most recent call last):")
    assert result.returncode != 0
    assert "Error 1" in result.stderr  # an unexplained crash keeps make's line and a failing status


def test_a_clean_stop_succeeds_quietly(tmp_path):
    result = make_run(tmp_path, 0, "Stopped.")
    assert result.returncode == 0
    assert result.stderr.strip() == "Stopped."
