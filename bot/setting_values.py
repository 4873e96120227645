"""How a setting's text becomes its value: the parsers and annotated types ``bot.settings`` declares its
settings with. Each parser raises ``ValueError`` with what is expected; the settings module words it as one
line naming the setting."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field
from pydantic_settings import NoDecode
from yarl import URL

MIN_TOKEN_BUDGET = 1024  # the same floor as inference.serving.cache_size's


def setting(default: Any, doc: str, *, section: str | None = None, **bounds: Any) -> Any:
    """One setting: its default, the sentence documenting it, and where a new section of the docs begins."""
    return Field(
        default, description=doc, json_schema_extra={"section": section} if section else None, **bounds
    )


def parsed(parse: Any) -> BeforeValidator:
    """Text from the environment through ``parse``; values given as Python objects pass as they are."""
    return BeforeValidator(lambda value: parse(value.strip()) if isinstance(value, str) else value)


def choice(*allowed: str, upper: bool = False) -> Any:
    return Annotated[Literal[allowed], parsed(str.upper if upper else str.lower)]


def auto_or(parse: Any) -> BeforeValidator:
    return parsed(lambda raw: None if raw.lower() == "auto" else parse(raw))


def _numbers(what: str) -> Any:
    """ "1, 2,3" as {1, 2, 3}; anything else names the bad part."""

    def parse(raw: str) -> frozenset[int]:
        parts = [part.strip() for part in raw.split(",") if part.strip()]
        for part in parts:
            if not part.isdigit():
                raise ValueError(f"{part!r} is not {what}")
        return frozenset(int(part) for part in parts)

    return parse


def parse_http_url(raw: str) -> str:
    try:
        url = URL(raw.rstrip("/"))
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise ValueError("use an http:// or https:// address such as http://127.0.0.1:8000/v1")
    return str(url)


def parse_device(raw: str) -> str:
    value = raw.lower()
    if value in ("auto", "cpu", "mps", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise ValueError("use auto, cpu, mps, cuda or cuda:N (for example cuda:1)")


def _whole(raw: str, what: str, minimum: int) -> int:
    try:
        number = int(raw.replace("_", ""))
    except ValueError:
        raise ValueError(f"use auto or a whole number of {what}") from None
    if number < minimum:
        raise ValueError(f"must be at least {minimum}")
    return number


def parse_seconds(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError("use auto or a number of seconds") from None


_discord_ids = _numbers("a Discord ID (IDs are numbers, separated by commas)")
_shard_ids = _numbers("a shard ID (numbers from 0, separated by commas)")
IdSet = Annotated[frozenset[int], NoDecode, parsed(_discord_ids)]
ShardIds = Annotated[tuple[int, ...], NoDecode, parsed(lambda raw: tuple(sorted(_shard_ids(raw))))]
ShardCount = Annotated[
    int | Literal["auto"] | None,
    parsed(lambda raw: "auto" if raw.lower() == "auto" else _whole(raw, "shards", 1)),
]
TokenBudget = Annotated[int | None, auto_or(lambda raw: _whole(raw, "tokens", MIN_TOKEN_BUDGET))]
Timeout = Annotated[float | None, auto_or(parse_seconds)]
