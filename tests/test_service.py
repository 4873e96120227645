"""The systemd unit in docs/ runs the bot as `make run` does, and the page that installs it agrees."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

from bot.__main__ import EXIT_CONFIG

ROOT = Path(__file__).resolve().parents[1]


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd's keys are case-sensitive
    parser.read_string((ROOT / "docs" / "phi3v-bot.service").read_text())
    return parser


def test_the_unit_runs_the_bots_venv_in_its_folder_where_it_reads_its_env():
    service = unit()["Service"]
    folder = service["WorkingDirectory"]
    assert service["ExecStart"] == f"{folder}/.venv/bin/python -m bot"
    assert "EnvironmentFile" not in service  # the bot reads .env itself (systemd's parser differs)


def test_the_unit_restarts_on_failure_but_not_on_a_setting_to_fix():
    service = unit()["Service"]
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == str(EXIT_CONFIG)
    assert int(service["TimeoutStopSec"]) > 30  # open answers end before the process is killed
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_the_page_installs_the_unit_with_the_paths_and_make_target_it_names():
    page = (ROOT / "docs" / "systemd.md").read_text()
    service = unit()["Service"]
    home = service["Environment"].split("=")[-1]
    assert service["WorkingDirectory"] in page and f"--home-dir {home}" in page
    assert "docs/phi3v-bot.service /etc/systemd/system/" in page
    target = re.search(r"make -C \S+ (\S+)", page).group(1)
    makefile = (ROOT / "Makefile").read_text()
    assert target == ".venv/.installed-run" and "$(VENV)/.installed-run$(EXTRAS):" in makefile


def test_the_troubleshooting_page_has_every_message_the_start_ends_with():
    from bot import __main__ as entry
    from bot.settings import REMOTE_URL_MISSING

    page = (ROOT / "docs" / "troubleshooting.md").read_text()
    texts = [
        entry.MISSING_TOKEN_TEXT,
        entry.INVALID_TOKEN_TEXT,
        entry.NO_CONNECTION_TEXT,
        entry.MISSING_INTENT_TEXT,
        REMOTE_URL_MISSING,
    ]
    for text in texts:
        opening = re.split(r"[.,:](?:\s|$)", text, maxsplit=1)[0]
        assert opening in page, opening
    for start in ("The database file", "Could not start the model", "Configuration error", "[FAIL]"):
        assert start in page
