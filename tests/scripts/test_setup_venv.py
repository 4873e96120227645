"""scripts/setup-venv.sh: which PyTorch build it chooses, and why (its plan; nothing is downloaded here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "setup-venv.sh"


def fake_program(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def plan(
    tmp_path: Path, *, gpu: bool, system: str = "Linux", python: str = sys.executable
) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake_program(bin_dir, "nvidia-smi", "exit 0" if gpu else "echo 'NVIDIA-SMI has failed' >&2; exit 9")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SETUP_PLAN_ONLY": "1",
        "SETUP_UNAME": system,
        "PYTHON": python,
    }
    return subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "venv")], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.mark.parametrize(
    ("gpu", "system", "build", "because"),
    [
        (True, "Linux", "cuda", "nvidia-smi found an NVIDIA GPU"),
        (False, "Linux", "cpu", "no NVIDIA GPU found, so the small CPU build"),
        (False, "Darwin", "default", "macOS"),
    ],
)
def test_the_torch_build_follows_the_machine(tmp_path, gpu, system, build, because):
    done = plan(tmp_path, gpu=gpu, system=system)
    assert done.returncode == 0, done.stderr
    torch_line = [line for line in done.stdout.splitlines() if line.startswith("torch:")]
    assert torch_line == [f"torch: {build} ({torch_line[0].split('(', 1)[1]}"]
    assert because in torch_line[0]
    assert not (tmp_path / "venv").exists()  # a plan installs nothing


def test_an_old_python_is_refused_before_anything_is_installed(tmp_path):
    old_python = tmp_path / "python3.10"
    fake_program(tmp_path, "python3.10", 'case "$1" in --version) echo "Python 3.10.12";; *) exit 1;; esac')
    done = plan(tmp_path, gpu=False, python=str(old_python))
    assert done.returncode == 1
    assert "Python 3.11 or newer is needed; found: Python 3.10.12" in done.stderr
    assert not (tmp_path / "venv").exists()
