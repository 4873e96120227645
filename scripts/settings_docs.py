"""Write the README's settings table and .env.example from the settings' one declaration (bot/settings.py).

python scripts/settings_docs.py          # rewrite both
python scripts/settings_docs.py --check  # exit 1 if either differs from the declaration (tests run it too)
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from pydantic import SecretStr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.settings import SETTINGS, Settings  # noqa: E402

README = ROOT / "README.md"
ENV_EXAMPLE = ROOT / ".env.example"
TABLE_START = "<!-- the settings table: written by scripts/settings_docs.py from bot/settings.py -->"
TABLE_END = "<!-- end of the settings table -->"
AUTO_WHEN_UNSET = {"token_budget", "request_timeout_s"}  # None means "auto" for these
ENV_HEADER = (
    "# Copy this file to .env and fill in DISCORD_TOKEN. The values below are the defaults; a blank value "
    "means the default too.\n"
    "# Written from bot/settings.py by scripts/settings_docs.py (run it to refresh this file).\n"
)


def default_text(name: str) -> str:
    """A setting's default as written in .env ("" for blank)."""
    value = SETTINGS[name].default
    if value is None:
        return "auto" if name in AUTO_WHEN_UNSET else ""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, frozenset | tuple):
        return ",".join(map(str, sorted(value)))
    return str(value)


def section(name: str) -> str | None:
    extra = SETTINGS[name].json_schema_extra
    return extra.get("section") if isinstance(extra, dict) else None  # type: ignore[return-value]


def readme_table() -> str:
    rows = ["| setting | default | what it does |", "| --- | --- | --- |"]
    for name, field in SETTINGS.items():
        if section(name):
            rows.append(f"| **{section(name)}** | | |")
        default = default_text(name)
        rows.append(
            f"| `{name.upper()}` | {f'`{default}`' if default else '(blank)'} | {field.description} |"
        )
    return "\n".join(rows)


def env_example() -> str:
    parts = [ENV_HEADER]
    for name, field in SETTINGS.items():
        if section(name):
            parts.append(f"\n# --- {section(name)} ".ljust(81, "-") + "\n")
        comment = (field.description or "").replace("`", "")
        parts += [f"# {line}\n" for line in textwrap.wrap(comment, 108)]
        parts.append(f"{name.upper()}={default_text(name)}\n")
    return "".join(parts)


def readme_with_table(readme: str) -> str:
    before, start, rest = readme.partition(TABLE_START)
    _, end, after = rest.partition(TABLE_END)
    if not start or not end:
        raise SystemExit(f"README.md lacks the markers {TABLE_START!r} ... {TABLE_END!r}")
    return f"{before}{TABLE_START}\n{readme_table()}\n{TABLE_END}{after}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only say whether the files are up to date")
    args = parser.parse_args(argv)
    assert Settings.model_fields  # the declaration imported
    wanted = {README: readme_with_table(README.read_text()), ENV_EXAMPLE: env_example()}
    stale = [path.name for path, text in wanted.items() if path.read_text() != text]
    if args.check:
        for name in stale:
            print(f"{name} differs from the settings in bot/settings.py: run python scripts/settings_docs.py")
        return 1 if stale else 0
    for path, text in wanted.items():
        path.write_text(text)
    print(f"wrote {', '.join(stale) or 'nothing (up to date)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
