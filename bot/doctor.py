"""``python -m bot --check``: is this machine ready to run the bot? Checked offline, one verdict per item.

Nothing here connects to Discord or downloads anything, and the token is never printed: only whether it
has the shape of a bot token and which application it belongs to (a public number).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import json
import os
import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bot.settings import Settings
from inference.serving.block_pool import BLOCK_TOKENS
from inference.serving.cache_size import (
    CacheDoesNotFit,
    CacheShape,
    available_ram,
    cpu_budget,
    explicit_budget_problem,
    full_request_tokens,
    gpu_budget,
    people_text,
)
from inference.types import PUBLISHED_WEIGHT_BYTES

if TYPE_CHECKING:
    from inference.serving.pace import Pace

GB = 10**9  # as the README counts
# The weights' share of their bf16 size per mode (docs/gpu.md, "GPU memory": 8.3, 4.7 and 3.2 GB).
# The language model's linear layers' share of Phi-3-vision's weights (3.62 of 4.15 billion): what 8-bit
# rounds on the CPU; the vision tower, embeddings and lm_head keep the model's precision.
LINEAR_SHARE = 0.872
WEIGHTS_SHARE = {"none": 1.0, "8bit": 4.7 / 8.3, "4bit": 3.2 / 8.3}
KV_BYTES_PER_TOKEN = 32 * 2 * 3072 * 2  # layers x (keys, values) x width x bf16
# Activations' peak: the vision tower on MAX_IMAGES images at 16 crops and one 2,048-token prefill chunk. An
# estimate until a GPU measures it; the start measures it itself (a warm-up) before sizing the cache.
ACTIVATIONS_BYTES = int(0.6 * 1024**3)
DEFAULT_NUM_CROPS = 16  # the published Phi-3-vision's preprocessor setting
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
    token = settings.discord_token.get_secret_value()
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


def checkpoint_crops(settings: Settings) -> int:
    """The crops the checkpoint asks for: a local folder's ``preprocessor_config.json``, else the
    published 16."""
    config_file = Path(settings.model_id).expanduser() / "preprocessor_config.json"
    try:
        return int(json.loads(config_file.read_text()).get("num_crops", DEFAULT_NUM_CROPS))
    except (OSError, ValueError, TypeError, AttributeError):
        return DEFAULT_NUM_CROPS


def cpu_pace(settings: Settings) -> Pace | None:
    """On the CPU, what the start will measure, estimated from products at the model's shapes (a second or
    two); None elsewhere, or when the device settings cannot work (the device line says why)."""
    from inference import InvalidRequest
    from inference.loading import resolve_choices, resolve_quantization
    from inference.serving import pace

    try:
        device, dtype, *_ = resolve_choices(settings.engine_config())
    except InvalidRequest:
        return None
    if device.type != "cpu":
        return None
    return pace.from_products(dtype, int8=resolve_quantization(settings.quantization, device) == "8bit")


def crops_at_start(settings: Settings, estimate: Pace | None) -> int:
    """The crops the start will read pictures at: ``NUM_CROPS``, the checkpoint's, or fewer on a slow CPU."""
    from inference.serving import pace

    if estimate is None:
        return settings.num_crops or checkpoint_crops(settings)
    return pace.crops_for(estimate, settings.num_crops, checkpoint_crops(settings))


def check_device(
    settings: Settings,
    *,
    cuda_free: Callable[[], tuple[int, int] | None] | None = None,
    estimate: Pace | None = None,
) -> Finding:
    import torch

    from inference import InvalidRequest
    from inference.loading import resolve_choices, resolve_quantization

    try:  # what the start decides before loading anything, refused in the start's own words
        device, dtype, *_ = resolve_choices(settings.engine_config())
    except InvalidRequest as error:
        return Finding("device", "fail", str(error))
    quantization = resolve_quantization(settings.quantization, device)
    if device.type == "cuda":
        free_total = (cuda_free or (lambda: torch.cuda.mem_get_info(device)))()
        if free_total is None:
            return Finding("device", "warn", f"{device}: free memory unknown")
        free, total = free_total
        weights = model_bytes(settings) * WEIGHTS_SHARE[quantization]
        name = torch.cuda.get_device_name(device)
        text = (
            f"{name}: {free / GB:.1f} of {total / GB:.1f} GB free; the weights take about "
            f"{weights / GB:.1f} GB (QUANTIZATION={quantization})"
        )
        if free < weights + ACTIVATIONS_BYTES:
            return Finding("device", "fail", text + ": the model does not fit; use QUANTIZATION=8bit or 4bit")
        return _kv_cache_finding(
            settings,
            text,
            crops=crops_at_start(settings, None),
            value_bytes=2,
            gpu_free_after_weights=int(free - weights),
            gpu_total=total,
        )
    if device.type == "mps":
        return Finding("device", "ok", "Apple GPU (mps); bf16 weights need ~8.3 GB of unified memory")
    # float32, or bf16 where the CPU computes it: DTYPE=auto decides as at the start. Checkpoints are in bf16.
    value_bytes = dtype.itemsize
    precision = str(dtype).removeprefix("torch.")
    ram, need = available_ram(), value_bytes / 2 * model_bytes(settings)
    if quantization == "8bit":  # loaded in bf16, then the language model's layers become int8
        need = model_bytes(settings) * (LINEAR_SHARE / 2 + (1 - LINEAR_SHARE) * value_bytes / 2)
        precision = f"8-bit, {precision} elsewhere"
    text = f"CPU only: answers take minutes; the model needs ~{need / GB:.1f} GB of RAM ({precision})"
    if quantization == "8bit" and ram is not None and ram < model_bytes(settings):
        return Finding("device", "fail", f"{text}, and ~{model_bytes(settings) / GB:.1f} GB while loading")
    if ram is None:
        return Finding("device", "warn", text)
    text += f" ({ram / GB:.1f} GB available)"
    if ram < need:
        return Finding("device", "fail", text + ": not enough memory")
    crops = crops_at_start(settings, estimate or cpu_pace(settings))
    finding = _kv_cache_finding(
        settings, text, crops=crops, value_bytes=value_bytes, ram_free_after_weights=int(ram - need)
    )
    return Finding("device", "warn" if finding.verdict == "ok" else finding.verdict, finding.detail)


def _kv_cache_finding(
    settings: Settings,
    text: str,
    *,
    crops: int,
    value_bytes: int,
    gpu_free_after_weights: int | None = None,
    gpu_total: int = 0,
    ram_free_after_weights: int | None = None,
) -> Finding:
    """What the start will make of TOKEN_BUDGET here, with the start's own words when it would refuse."""
    shape = CacheShape(kv_bytes_per_token(settings, value_bytes), BLOCK_TOKENS)
    full = full_request_tokens(crops, settings.max_new_tokens)
    if settings.token_budget is not None:
        problem = None
        if gpu_free_after_weights is not None:
            problem = explicit_budget_problem(shape, settings.token_budget, gpu_free_after_weights)
        if problem is not None:
            return Finding("device", "fail", f"{text}. {problem}")
        return Finding("device", "ok", f"{text}; KV cache: TOKEN_BUDGET={settings.token_budget} tokens fit")
    try:
        if gpu_free_after_weights is not None:
            budget = gpu_budget(
                shape,
                total=gpu_total,
                free=gpu_free_after_weights,
                activation_peak=ACTIVATIONS_BYTES,
                fraction=settings.gpu_memory_fraction,
                full_request_tokens=full,
            )
        else:
            budget = cpu_budget(
                shape,
                free_ram=ram_free_after_weights,
                full_request_tokens=full,
                max_rows=settings.max_batch_size,
            )
    except CacheDoesNotFit as error:
        return Finding("device", "fail", f"{text}. {error}")
    people = min(budget // (-(-full // BLOCK_TOKENS) * BLOCK_TOKENS), settings.max_batch_size)
    return Finding(
        "device",
        "ok",
        f"{text}; KV cache (TOKEN_BUDGET=auto): about {budget} tokens, room for {people_text(people)} at "
        "once (the start measures it exactly)",
    )


def check_cpu_speed(settings: Settings, estimate: Pace | None) -> Finding | None:
    """On the CPU: roughly how long a one-picture answer takes here (``estimate``, from :func:`cpu_pace`;
    the start measures the real weights)."""
    from inference.serving import pace

    if estimate is None:
        return None
    crops, asked = crops_at_start(settings, estimate), checkpoint_crops(settings)
    text = f"roughly, {estimate.summary(crops, settings.max_new_tokens)}"
    if settings.request_timeout_s is None:
        text += (
            f"; REQUEST_TIMEOUT_S=auto: {estimate.request_timeout_s(crops, settings.max_new_tokens):.0f} s"
        )
    if crops != (settings.num_crops or asked):
        text += f"; NUM_CROPS={crops}: {pace.fewer_crops_text(estimate, asked, crops)}"
    return Finding("speed", "ok", text)


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


def kv_bytes_per_token(settings: Settings, value_bytes: int) -> int:
    """Keys and values of one token in every layer: from a local checkpoint's config.json, else the published
    model's; ``value_bytes`` a value (2 in bf16 or fp16, 4 in float32)."""
    config_file = Path(settings.model_id).expanduser() / "config.json"
    try:
        config = json.loads(config_file.read_text())
        heads = config["num_attention_heads"]
        per_layer = (config.get("num_key_value_heads") or heads) * (config["hidden_size"] // heads)
        return 2 * config["num_hidden_layers"] * per_layer * value_bytes
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return KV_BYTES_PER_TOKEN // 2 * value_bytes


def model_bytes(settings: Settings) -> float:
    """The weights' size as published (bf16): a local folder's files, a known hub model's, else ~8.3 GB."""
    local = Path(settings.model_id).expanduser()
    if local.is_dir():
        return float(sum(path.stat().st_size for path in local.glob("*.safetensors")))
    return float(PUBLISHED_WEIGHT_BYTES.get(settings.model_id, 8.3 * GB))


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
    findings += [
        Finding("settings", "ok", "read and valid"),
        check_token(settings),
        check_intents(settings),
        check_database(settings),
    ]
    if settings.backend == "remote":
        findings.append(check_remote(settings))
    else:
        findings.append(check_model(settings))
        if device:
            estimate = cpu_pace(settings)
            findings.append(check_device(settings, estimate=estimate))
            for finding in (check_triton(settings), check_cpu_speed(settings, estimate)):
                if finding is not None:
                    findings.append(finding)
    return findings
