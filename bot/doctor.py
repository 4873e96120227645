"""``python -m bot --check``: is this machine ready to run the bot? Checked offline, one verdict per item.

Nothing here connects to Discord or downloads anything, and the token is never printed: only whether it
has the shape of a bot token and which application it belongs to (a public number).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import os
import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bot.settings import Settings
from inference.serving.cache_size import people_text
from inference.types import PUBLISHED_WEIGHT_BYTES

if TYPE_CHECKING:
    from inference.serving.forecast import Forecast
    from inference.serving.pace import Pace

GB = 10**9  # as the README counts
TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{20,}$")


@dataclass(frozen=True)
class Finding:
    item: str
    verdict: str  # ok | warn | fail
    detail: str

    def line(self) -> str:
        mark = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}[self.verdict]
        return f"[{mark}] {self.item}: {self.detail}"


def application_id(settings: Settings) -> str | None:
    """The application a bot token belongs to: its first part is the id in base64; None when it is not one."""
    token = settings.discord_token.get_secret_value()
    if not TOKEN_SHAPE.match(token):
        return None
    first = token.split(".", 1)[0]
    try:
        app_id = base64.urlsafe_b64decode(first + "=" * (-len(first) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return app_id if app_id.isdigit() else None


def check_token(settings: Settings) -> Finding:
    if not settings.discord_token.get_secret_value():
        return Finding(
            "token", "fail", "DISCORD_TOKEN is not set (Developer Portal > your app > Bot > Reset Token)"
        )
    if not TOKEN_SHAPE.match(settings.discord_token.get_secret_value()):
        return Finding(
            "token", "fail", "DISCORD_TOKEN does not look like a bot token (three parts, dot-separated)"
        )
    app_id = application_id(settings)
    if app_id is None:
        return Finding("token", "fail", "DISCORD_TOKEN's first part is not a bot's id: is it a bot token?")
    return Finding(
        "token", "ok", f"has the shape of a bot token for application {app_id} (not sent to Discord)"
    )


def check_invite(settings: Settings) -> Finding | None:
    """The links that add the bot, once the token names its application."""
    from bot.about import server_invite_url, user_install_url

    app_id = application_id(settings)
    if app_id is None:
        return None
    return Finding(
        "invite",
        "ok",
        f"add the bot to a server: {server_invite_url(app_id)} ; to your own account (User Install): "
        f"{user_install_url(app_id)}",
    )


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def check_model(settings: Settings) -> Finding:
    model_id = settings.model_id
    local = Path(model_id).expanduser()
    if local.is_dir():
        if (local / "config.json").is_file():
            return Finding("model", "ok", f"local folder {local}")
        return Finding("model", "fail", f"{local} has no config.json: is it a Phi-3-vision checkpoint?")
    if model_id.startswith((".", "/", "~")) or model_id.count("/") != 1:
        return Finding(
            "model", "fail", f"MODEL_ID {model_id!r} is neither a folder nor a hub id like owner/name"
        )
    cached = _cached_bytes(model_id)
    if cached:
        return Finding("model", "ok", f"{model_id} is downloaded ({cached / GB:.1f} GB in {hub_cache_dir()})")
    if hub_offline():
        from inference.loading import not_downloaded_text

        return Finding("model", "fail", not_downloaded_text(model_id))
    size = PUBLISHED_WEIGHT_BYTES.get(model_id)
    how_big = f"~{size / GB:.1f} GB" if size else "its size is unknown offline"
    return Finding(
        "model",
        "warn",
        f"{model_id} is not downloaded yet: the first start downloads it ({how_big}) "
        f"into {hub_cache_dir()} (set HF_HOME to put it elsewhere), once",
    )


def _cached_bytes(model_id: str) -> int:
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cache = scan_cache_dir()
    except (CacheNotFound, OSError):
        return 0
    for repo in cache.repos:
        if repo.repo_id == model_id and repo.repo_type == "model":
            has_weights = any(f.file_name.endswith(".safetensors") for r in repo.revisions for f in r.files)
            return repo.size_on_disk if has_weights else 0
    return 0


def forecast(
    settings: Settings,
    *,
    cuda_free: Callable[[], tuple[int, int] | None] | None = None,
    estimate: Pace | None = None,
) -> Forecast | str:
    """What the start would decide here (``inference``'s forecast), or why the device settings cannot work,
    in the start's own words."""
    from inference import InvalidRequest
    from inference.serving.forecast import forecast_start

    try:
        return forecast_start(
            settings.engine_config(),
            gpu_memory=(lambda device: cuda_free()) if cuda_free is not None else None,
            pace=estimate,
        )
    except InvalidRequest as error:
        return str(error)


def check_device(
    settings: Settings,
    *,
    cuda_free: Callable[[], tuple[int, int] | None] | None = None,
    estimate: Pace | None = None,
    expected: Forecast | str | None = None,
) -> Finding:
    """Whether the model and its KV cache fit on the device the start would use."""
    expected = (
        expected if expected is not None else forecast(settings, cuda_free=cuda_free, estimate=estimate)
    )
    if isinstance(expected, str):
        return Finding("device", "fail", expected)
    device = expected.device
    if device.type == "mps":
        return Finding("device", "ok", "Apple GPU (mps); bf16 weights need ~8.3 GB of unified memory")
    if device.type == "cuda":
        import torch

        if expected.free_bytes is None or expected.total_bytes is None:
            return Finding("device", "warn", f"{device}: free memory unknown")
        text = (
            f"{torch.cuda.get_device_name(device)}: {expected.free_bytes / GB:.1f} of "
            f"{expected.total_bytes / GB:.1f} GB free; the weights take about "
            f"{size_text(expected.weights_bytes)} (QUANTIZATION={expected.quantization})"
        )
        if not expected.weights_fit:
            return Finding("device", "fail", text + ": the model does not fit; use QUANTIZATION=8bit or 4bit")
        return _with_cache(settings, expected, text)
    precision = str(expected.dtype).removeprefix("torch.")
    if expected.quantization == "8bit":
        precision = f"8-bit, {precision} elsewhere"
    needs = f"~{size_text(expected.weights_bytes)} of RAM ({precision})"
    if expected.dense_bytes:
        needs += f", and ~{size_text(expected.dense_bytes)} more for copies that read prompts faster"
    text = f"CPU only (no GPU: answers are slower, see speed): the model needs {needs}"
    ram = expected.free_bytes
    if ram is None:
        return Finding("device", "warn", text)
    if expected.loading_bytes > expected.weights_bytes and ram < expected.loading_bytes:
        return Finding("device", "fail", f"{text}, and ~{size_text(expected.loading_bytes)} while loading")
    text += f" ({ram / GB:.1f} GB available)"
    if not expected.weights_fit:
        return Finding("device", "fail", text + ": not enough memory")
    finding = _with_cache(settings, expected, text)
    return Finding("device", "warn" if finding.verdict == "ok" else finding.verdict, finding.detail)


def _with_cache(settings: Settings, expected: Forecast, text: str) -> Finding:
    """The device line with what the start will make of TOKEN_BUDGET here (its own words when it would
    refuse)."""
    if expected.cache_problem is not None:
        return Finding("device", "fail", f"{text}. {expected.cache_problem}")
    if settings.token_budget is not None:
        return Finding("device", "ok", f"{text}; KV cache: TOKEN_BUDGET={settings.token_budget} tokens fit")
    people = expected.people or 0
    return Finding(
        "device",
        "ok",
        f"{text}; KV cache (TOKEN_BUDGET=auto): about {expected.token_budget} tokens, room for "
        f"{people_text(people)} at once (the start measures it exactly)",
    )


def size_text(size: float) -> str:
    """``8.3 GB``, or ``12 MB`` for what a tenth of a gigabyte would round away (a small checkpoint)."""
    return f"{size / GB:.1f} GB" if size >= GB / 10 else f"{size / 10**6:.0f} MB"


def check_cpu_speed(settings: Settings, expected: Forecast | str | None) -> Finding | None:
    """On the CPU: roughly how long a one-picture answer takes here (the forecast's estimate; the start
    measures the real weights)."""
    if isinstance(expected, str) or expected is None or expected.pace is None:
        return None
    estimate, crops = expected.pace, expected.crops
    text = f"roughly, {estimate.summary(crops, settings.max_new_tokens)}"
    if settings.request_timeout_s is None:
        text += (
            f"; REQUEST_TIMEOUT_S=auto: {estimate.request_timeout_s(crops, settings.max_new_tokens):.0f} s"
        )
    fewer = expected.fewer_crops_text()
    if fewer is not None:
        text += f"; NUM_CROPS={crops}: {fewer}"
    return Finding("speed", "ok", text)


def check_cpu_products(settings: Settings) -> Finding | None:
    """On the CPU with 8-bit weights: which way the products take here, measured as the start measures it."""
    from inference import InvalidRequest
    from inference.serving.forecast import product_choice

    try:
        lines = product_choice(settings.engine_config())
    except InvalidRequest:
        return None  # the device check has said why
    if not lines:
        return None
    return Finding("products", "ok", f"measured here: {lines[0]}")


def check_triton(settings: Settings) -> Finding | None:
    """On an NVIDIA GPU: can Triton build our decode kernel's launcher (a C compiler, Python's headers)?"""
    import importlib.util
    import shutil
    import sysconfig

    import torch

    if settings.device not in ("auto",) and not settings.device.startswith("cuda"):
        return None
    if not torch.cuda.is_available():
        return None
    fallback = (
        "the start-up check then refuses the Triton kernel and decoding uses PyTorch's fused kernel "
        "(PyTorch 2.12 and newer) or the plain one (slower at many users)"
    )
    if importlib.util.find_spec("triton") is None:
        return Finding("triton", "warn", f"Triton is not installed: {fallback}")
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    needs = (("a C compiler", compiler), ("Python's headers", headers.is_file()))
    missing = [what for what, there in needs if not there]
    if missing:
        return Finding(
            "triton",
            "warn",
            f"Triton cannot build its kernel launcher without {' and '.join(missing)} (Debian/Ubuntu: "
            f"apt-get install gcc python3-dev): {fallback}",
        )
    return Finding("triton", "ok", f"its kernel launcher can be built ({compiler}, {headers.parent})")


def check_remote(settings: Settings) -> Finding:
    """Where the model server is (not contacted), and a warning for plain HTTP to another machine: the API key
    and every picture would cross the network unencrypted."""
    from yarl import URL

    from inference.remote import display_url

    where = f"{settings.remote_model} at {display_url(settings.remote_url or '')} (not contacted)"
    url = URL(settings.remote_url or "")
    if url.scheme == "http" and not _is_this_machine(url.host or ""):
        return Finding(
            "model server",
            "warn",
            f"{where}: plain http to another machine, so the API key and every picture cross the network "
            "unencrypted; use https (a reverse proxy in front of vLLM), or a private network only your "
            "machines reach (docs/deployment.md)",
        )
    return Finding("model server", "ok", where)


def _is_this_machine(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_intents(settings: Settings) -> Finding:
    """What the Message Content set-up leaves out (COMMAND_PREFIX decides whether the bot asks for it)."""
    if settings.reads_every_message:
        return Finding(
            "intents",
            "ok",
            "asks for Message Content (prefix commands, replies about others' pictures, automatic alt "
            "text): turn it on in the Developer Portal (Bot > Privileged Gateway Intents), or Discord "
            "refuses the start",
        )
    return Finding(
        "intents",
        "ok",
        "without Message Content (COMMAND_PREFIX is blank): slash commands, right-click menus and @mentions "
        "with the picture attached work; prefix commands, an @mention replying to someone else's picture and "
        "automatic alt text do not (Discord hides those pictures from the bot)",
    )


def check_database(settings: Settings) -> Finding:
    """Read the database file without changing it: damaged, locked, or from a newer bot? (None yet: fine.)"""
    from bot.database import IN_MEMORY, MIGRATIONS, VERSION_SQL, describe_failure, folder_problem

    path = Path(settings.database_path)
    if settings.database_path == IN_MEMORY:
        return Finding("database", "warn", "in memory: conversations and settings are lost at every restart")
    if not path.exists():
        problem = folder_problem(str(path))
        if problem is not None:
            return Finding("database", "fail", problem)
        return Finding("database", "ok", f"{path} will be created at the first start")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)) as connection:
            if connection.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("database disk image is malformed")
            version = connection.execute(VERSION_SQL).fetchone()[0]
    except sqlite3.Error as error:
        return Finding("database", "fail", describe_failure(str(path), error))
    if version > MIGRATIONS[-1][0]:
        return Finding(
            "database", "fail", f"{path} was written by a newer version of the bot (schema {version})"
        )
    return Finding("database", "ok", f"{path} (schema {version})")


def run_checks(
    settings: Settings, *, device: bool = True, unknown_names: Sequence[str] = ()
) -> list[Finding]:
    """Every check; ``unknown_names``: the lines ``bot.settings.unknown_names`` wrote (misspelt settings)."""
    findings = [Finding("settings", "warn", line) for line in unknown_names]
    if not findings:
        findings.append(Finding("settings", "ok", "read and valid"))
    findings.append(check_token(settings))
    invite = check_invite(settings)
    if invite is not None:
        findings.append(invite)
    findings += [check_intents(settings), check_database(settings)]
    if settings.backend == "remote":
        findings.append(check_remote(settings))
    else:
        findings.append(check_model(settings))
        if device:
            expected = forecast(settings)
            findings.append(check_device(settings, expected=expected))
            checks = (
                check_triton(settings),
                check_cpu_speed(settings, expected),
                check_cpu_products(settings),
            )
            for finding in checks:
                if finding is not None:
                    findings.append(finding)
    return findings
