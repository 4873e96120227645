"""What ships is what is tested: the wheel `pip install .` builds (as the Dockerfile does) carries the
translation catalogs, and an installed bot answers in Vietnamese, Danish and Romanian without the checkout."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LANGUAGES = ("vi", "da", "ro")

RENDER = """
import json, sys
import bot.i18n as i18n
from bot.engine_errors import BUSY_TEXT
print(json.dumps({
    "file": i18n.__file__,
    "texts": {language: i18n.render(BUSY_TEXT, locale) for language, locale in
              (("vi", "vi"), ("da", "da"), ("ro", "ro"), ("en", "en-US"))},
}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built as the Dockerfile builds it, from what it copies (no egg-info or build folder of this checkout,
    whose file lists would hide what the project itself declares)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    for package in ("bot", "cogs", "inference"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    [built] = out.glob("phi3v_discord_bot-*.whl")
    return built


def test_the_wheel_carries_its_licence_and_version(wheel):
    import tomllib

    archive = zipfile.ZipFile(wheel)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    [metadata] = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
    text = archive.read(metadata).decode()
    assert "License-Expression: MIT" in text and f"Version: {version}" in text
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in archive.namelist())


def test_the_wheel_carries_every_catalog(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for language in LANGUAGES:
        assert f"bot/locales/{language}/LC_MESSAGES/messages.po" in names
    assert "bot/locales/messages.pot" in names


def test_an_installed_bot_speaks_vietnamese_danish_and_romanian(wheel, tmp_path):
    """A fresh venv with only the wheel (its dependencies come from this venv, appended after it), run from an
    empty folder: the checkout is nowhere on the path."""
    target = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(target)
    python = target / "bin" / "python"
    [own_site] = (target / "lib").glob("python3*/site-packages")
    # The dependencies (discord.py, Babel, ...) from the test venv, after the venv's own packages. A path in a
    # .pth file is appended as it is: the .pth files in it (the checkout's editable install) are not run.
    (own_site / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(own_site),
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    done = subprocess.run(
        [str(python), "-c", RENDER], capture_output=True, text=True, cwd=empty, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert Path(result["file"]).is_relative_to(own_site), result[
        "file"
    ]  # the installed copy, not the checkout
    texts = result["texts"]
    english = texts.pop("en")
    assert english == "I'm busy with other requests right now. Please try again shortly."
    for language, text in texts.items():
        assert text and text != english, language
    assert texts["vi"].startswith("Tôi đang bận")
    assert "error" not in done.stderr.lower()
