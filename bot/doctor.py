"""``python -m bot --check``: is this machine ready to run the bot? Checked offline, one verdict per item.

Nothing here connects to Discord or downloads anything, and the token is never printed: only whether it
has the shape of a bot token and which application it belongs to (a public number).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bot.settings import Settings
from inference.types import PUBLISHED_WEIGHT_BYTES

GB = 10**9  # as the README counts
# The weights' share of their bf16 size per mode (README, "GPU memory": 8.3, 4.7 and 3.2 GB).
WEIGHTS_SHARE = {"none": 1.0, "8bit": 4.7 / 8.3, "4bit": 3.2 / 8.3}
KV_BYTES_PER_TOKEN = 32 * 2 * 3072 * 2  # layers x (keys, values) x width x bf16
ACTIVATIONS_BYTES = 1.5 * GB  # prefill of one 16-crop image, with margin
TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{20,}$")


@dataclass(frozen=True)
class Finding:
    item: str
    verdict: str  # ok | warn | fail
    detail: str

    def line(self) -> str:
        mark = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}[self.verdict]
        return f"[{mark}] {self.item}: {self.detail}"


def check_token(settings: Settings) -> Finding:
    token = settings.discord_token.reveal()
    if not token:
        return Finding(
            "token", "fail", "DISCORD_TOKEN is not set (Developer Portal > your app > Bot > Reset Token)"
        )
    if not TOKEN_SHAPE.match(token):
        return Finding(
            "token", "fail", "DISCORD_TOKEN does not look like a bot token (three parts, dot-separated)"
        )
    first = token.split(".", 1)[0]
    try:
        app_id = base64.urlsafe_b64decode(first + "=" * (-len(first) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        app_id = ""
    if not app_id.isdigit():
        return Finding("token", "fail", "DISCORD_TOKEN's first part is not a bot's id: is it a bot token?")
    return Finding(
        "token", "ok", f"has the shape of a bot token for application {app_id} (not sent to Discord)"
    )


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


def check_device(
    settings: Settings, *, cuda_free: Callable[[], tuple[int, int] | None] | None = None
) -> Finding:
    import torch

    from inference import InvalidRequest
    from inference.loading import resolve_device

    try:
        device = resolve_device(settings.device)
    except InvalidRequest as error:  # an unknown or missing device, said plainly
        return Finding("device", "fail", str(error))
    if device.type == "cuda":
        free_total = (cuda_free or (lambda: torch.cuda.mem_get_info(device)))()
        if free_total is None:
            return Finding("device", "warn", f"{device}: free memory unknown")
        free, total = free_total
        weights = model_bytes(settings) * WEIGHTS_SHARE[settings.quantization]
        need = weights + settings.token_budget * KV_BYTES_PER_TOKEN + ACTIVATIONS_BYTES
        name = torch.cuda.get_device_name(device)
        text = (
            f"{name}: {free / GB:.1f} of {total / GB:.1f} GB free; QUANTIZATION={settings.quantization} and "
            f"TOKEN_BUDGET={settings.token_budget} need about {need / GB:.1f} GB"
        )
        if free < weights + ACTIVATIONS_BYTES:
            return Finding("device", "fail", text + ": the model does not fit; use QUANTIZATION=8bit or 4bit")
        if free < need:
            fits = int((free - weights - ACTIVATIONS_BYTES) / KV_BYTES_PER_TOKEN) // 1024 * 1024
            return Finding(
                "device", "warn", text + f" when the batch is full: lower TOKEN_BUDGET to {fits} to be safe"
            )
        return Finding("device", "ok", text)
    if device.type == "mps":
        return Finding("device", "ok", "Apple GPU (mps); bf16 weights need ~8.3 GB of unified memory")
    ram, need = _available_ram(), 2 * model_bytes(settings)  # float32 on a CPU
    text = f"CPU only: answers take minutes; the model needs ~{need / GB:.1f} GB of RAM in float32"
    if ram is not None:
        text += f" ({ram / GB:.1f} GB available)"
        if ram < need:
            return Finding("device", "fail", text + ": not enough memory")
    return Finding("device", "warn", text)


def model_bytes(settings: Settings) -> float:
    """The weights' size as published (bf16): a local folder's files, a known hub model's, else ~8.3 GB."""
    local = Path(settings.model_id).expanduser()
    if local.is_dir():
        return float(sum(path.stat().st_size for path in local.glob("*.safetensors")))
    return float(PUBLISHED_WEIGHT_BYTES.get(settings.model_id, 8.3 * GB))


def _available_ram() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_remote(settings: Settings) -> Finding:
    from inference.remote import display_url

    return Finding(
        "model server",
        "ok",
        f"{settings.remote_model} at {display_url(settings.remote_url or '')} (not contacted)",
    )


def check_database(settings: Settings) -> Finding:
    """Read the database file without changing it: damaged, locked, or from a newer bot? (None yet: fine.)"""
    from bot.database import IN_MEMORY, MIGRATIONS, VERSION_SQL, describe_failure

    path = Path(settings.database_path)
    if settings.database_path == IN_MEMORY:
        return Finding("database", "warn", "in memory: conversations and settings are lost at every restart")
    if not path.exists():
        folder = next((parent for parent in path.parents if parent.exists()), Path("."))
        if not os.access(folder, os.W_OK):
            return Finding("database", "fail", f"{path} cannot be created: {folder} is not writable")
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


def run_checks(settings: Settings, *, device: bool = True) -> list[Finding]:
    findings = [Finding("settings", "ok", "read and valid"), check_token(settings), check_database(settings)]
    if settings.backend == "remote":
        findings.append(check_remote(settings))
    else:
        findings.append(check_model(settings))
        if device:
            findings.append(check_device(settings))
    return findings
