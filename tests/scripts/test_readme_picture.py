"""scripts/readme_picture.py: the README's picture is made by the real bot in a simulated server, and says so.

Chromium itself is not run here (CI has none); its photograph is replaced by a blank page of the same size,
so everything up to it (the bot answering the three requests, the preview serving them) and the label after
it run.
"""

from __future__ import annotations

import argparse
import importlib.util
import urllib.request
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def load_script():
    spec = importlib.util.spec_from_file_location("readme_picture", ROOT / "scripts" / "readme_picture.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_picture_shows_three_answers_of_the_real_bot_and_is_labelled(tmp_path, monkeypatch):
    script = load_script()
    served: list[str] = []

    def photograph(url: str, output: Path) -> None:
        origin = url.split("/#")[0]
        with urllib.request.urlopen(origin + "/", timeout=10) as page:  # the preview is up and serving
            served.append(page.read().decode("utf-8", "replace"))
        Image.new("RGB", (script.WIDTH, script.HEIGHT), "white").save(output)

    monkeypatch.setattr(script, "photograph", photograph)
    output = tmp_path / "picture.png"
    answers = await script.run(argparse.Namespace(model=None, output=output))
    assert answers == 3  # describe, OCR as Markdown, compare: each answered, with its buttons
    assert served and "<html" in served[0].lower()
    picture = Image.open(output)
    assert picture.size[0] == script.WIDTH and picture.size[1] > script.HEIGHT  # the label's band on top


def test_the_readme_shows_the_picture_and_says_what_it_is():
    readme = (ROOT / "README.md").read_text()
    assert "docs/bot-at-work.png" in readme and "simulated Discord server" in readme
    assert (ROOT / "docs" / "bot-at-work.png").is_file()
