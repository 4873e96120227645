"""The Docker image is reproducible and ships what the tests run: checked without a Docker daemon (there is
none where the tests run), against the lock file the Dockerfile and scripts/setup-venv.sh install with."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def pins() -> dict[str, Version]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pairs = [line.split("==") for line in lines if line and not line.startswith("#")]
    return {canonicalize_name(name): Version(version) for name, version in pairs}


def test_every_pip_install_in_the_image_uses_the_lock_file():
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = [line for line in dockerfile.splitlines() if "pip install" in line]
    assert len(installs) == 2 and all("-c constraints.txt" in line for line in installs)
    assert dockerfile.index("COPY constraints.txt") < dockerfile.index("pip install")
    assert '"torch>=' not in dockerfile  # no unpinned PyTorch


def test_the_lock_pins_every_dependency_within_what_pyproject_allows():
    locked = pins()
    for text in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in constraints.txt: run scripts/lock.sh"
        assert locked[name] in requirement.specifier, (
            f"{name}=={locked[name]} is outside {requirement.specifier}"
        )


def test_the_tests_run_the_versions_the_image_ships():
    """setup-venv installs within the same lock: every package both have is at the image's version here
    (PyTorch as its CPU build of the same release)."""
    locked = pins()
    for text in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        name = canonicalize_name(Requirement(text).name)
        installed = Version(metadata.version(name))
        assert Version(installed.public) == locked[name], f"{name}: tested {installed}, image {locked[name]}"


def test_the_cuda_build_and_the_driver_it_needs_are_stated_where_owners_read():
    header = (ROOT / "constraints.txt").read_text().splitlines()[:3]
    cuda = pins()[canonicalize_name("nvidia-cuda-runtime")]
    assert f"CUDA runtime {cuda}" in header[1] and "driver 580 or newer (CUDA 13.0)" in header[1]
    assert cuda.major == 13
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"driver 580 or newer\*\* \(the image's PyTorch is its CUDA 13\.0 build\)", readme)
    assert "NVIDIA driver (580 or newer)" in (ROOT / "Dockerfile").read_text()


def test_compose_rotates_the_logs():
    bot = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["bot"]
    assert bot["logging"]["driver"] == "json-file"
    assert bot["logging"]["options"] == {"max-size": "10m", "max-file": "5"}
