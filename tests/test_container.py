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


def compose_services() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]


def test_compose_has_a_gpu_and_a_cpu_profile_that_differ_only_in_the_gpu():
    services = compose_services()
    gpu, cpu = services["bot"], services["bot-cpu"]
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert "deploy" not in cpu  # a host without a GPU can start it
    assert cpu["build"]["args"]["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    shared = ("env_file", "environment", "volumes", "ports", "logging", "restart", "stop_grace_period")
    assert all(gpu[key] == cpu[key] for key in shared)
    assert gpu["image"] != cpu["image"]


def test_the_image_takes_pytorch_from_the_index_the_profile_names():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG TORCH_INDEX_URL=" in dockerfile
    [torch_install] = [line for line in dockerfile.splitlines() if "pip install" in line and "torch" in line]
    assert '${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}' in torch_install


def test_the_compose_settings_are_the_bots():
    from bot.settings import SETTINGS

    for service in compose_services().values():
        assert {name.lower() for name in service["environment"]} <= set(SETTINGS) | {"hf_home"}
