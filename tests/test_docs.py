"""The README documents every setting, and the commands it promises exist."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import discord

ROOT = Path(__file__).resolve().parents[1]


def env_example_keys() -> list[str]:
    text = (ROOT / ".env.example").read_text()
    return re.findall(r"^([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE)


def test_every_setting_is_in_the_readme_table():
    readme = (ROOT / "README.md").read_text()
    missing = [key for key in env_example_keys() if f"| `{key}` |" not in readme]
    assert not missing, f"add these settings to README.md's table: {missing}"


def test_readme_names_the_two_setup_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run:", makefile, flags=re.MULTILINE) and re.search(
        r"^test:", makefile, flags=re.MULTILINE
    )


def readme_block(after: str, kind: str) -> list[str]:
    """The lines of the first ```kind block after the text ``after`` in the README."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index(f"```{kind}\n", readme.index(after)) + len(kind) + 4
    return readme[start : readme.index("```", start)].strip().splitlines()


def test_the_readmes_command_line_examples_run_as_written(tmp_path):
    """Each example, from the repository root, with the interpreter of this run for `.venv/bin/python`."""
    examples = readme_block("Check the model without Discord", "bash")
    assert len(examples) == 4
    for example in examples:
        words = shlex.split(example)
        assert words[0] == ".venv/bin/python"
        done = subprocess.run(
            [sys.executable, *words[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"{example}\n{done.stderr[-2000:]}"
        assert done.stdout.strip(), example


def test_the_readmes_sample_start_matches_what_the_start_logs(monkeypatch, tmp_path, caplog):
    """The sample first start's lines (for a GPU) against a real start here (the CPU, the tiny checkpoint,
    Discord's side a stand-in): the same loggers and messages, and as many app commands synced."""
    import logging

    import bot.__main__ as entry
    from tests.bot.test_main import FAKE_TOKEN, TINY_MODEL, DiscordStandIn

    DiscordStandIn(monkeypatch)
    synced = []

    async def sync(tree, *, guild=None):
        synced.append(tree.get_commands())
        return tree.get_commands()

    monkeypatch.setattr(discord.app_commands.CommandTree, "sync", sync)
    environ = {
        "DISCORD_TOKEN": FAKE_TOKEN,
        "MODEL_ID": TINY_MODEL,
        "DEVICE": "cpu",
        "DATABASE_PATH": str(tmp_path / "bot.sqlite3"),
    }
    with caplog.at_level(logging.INFO):
        assert entry.main(environ, []) == entry.EXIT_OK
    logged = {(r.name, r.getMessage()) for r in caplog.records}
    sample = [line for line in readme_block("A good first start on a GPU", "text") if line.startswith("…")]
    on_a_gpu_only = ("Downloading", "Warm-up", "CUDA graphs", "Logged in")  # no download, GPU or gateway here
    for line in sample:
        name, message = re.match(r"… INFO +(\S+) \[-\]: (.*)$", line).groups()
        if message.startswith(on_a_gpu_only):
            continue
        opening = message.split(":")[0].split()[
            0
        ]  # the first word: the rest names this GPU, its paths, figures
        assert any(n == name and m.split(":")[0].split()[0] == opening for n, m in logged), line
    [commands] = synced
    synced_line = next(line for line in sample if "Synced" in line)
    assert f"Synced {len(commands)} app commands" in synced_line


def test_the_readmes_sample_check_lists_what_check_checks(capsys):
    from unittest.mock import patch

    from bot.__main__ import check
    from bot.settings import Settings
    from tests.bot.test_main import FAKE_TOKEN

    sample = readme_block("python -m bot --check` says whether the machine is ready", "text")
    items = [
        re.match(r"\[(?:ok  |warn|FAIL)\] (\w+):", line).group(1) for line in sample if line.startswith("[")
    ]
    with (
        patch("torch.cuda.is_available", return_value=True),
        patch("torch.cuda.is_bf16_supported", return_value=True),
        patch("torch.cuda.get_device_name", return_value="Some GPU"),
        patch("torch.cuda.mem_get_info", return_value=(23.7e9, 25.4e9)),
        patch("bot.doctor._cached_bytes", return_value=0),
    ):
        check(Settings(device="cuda", discord_token=FAKE_TOKEN))
    printed = capsys.readouterr().out.strip().splitlines()
    assert items == [re.match(r"\[(?:ok  |warn|FAIL)\] (\w+):", line).group(1) for line in printed[:-1]]
    assert sample[-1] == printed[-1]


def test_the_architecture_page_names_every_module():
    """docs/architecture.md is the page a newcomer reads first: every module of bot/, bot/reply/, inference/
    and its serving/ and kernels/ wings is on it (the cogs are named together)."""
    import re

    section = (ROOT / "docs" / "architecture.md").read_text()
    block = section[: section.index("```", section.index("```") + 3)]
    missing = [
        f"{folder}/{path.name}"
        for folder in ("bot", "bot/reply", "inference", "inference/serving", "inference/kernels")
        for path in sorted((ROOT / folder).glob("*.py"))
        if path.name not in ("__init__.py", "__main__.py")
        and not re.search(rf"\b{re.escape(path.name)}\b", block)
    ]
    assert missing == []
