"""Bot configuration: the only module that reads the environment (and the .env file)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from dotenv import find_dotenv, load_dotenv
from yarl import URL

from inference import EngineConfig
from inference.images import DEFAULT_MAX_PIXELS
from inference.remote import RemoteConfig
from inference.types import DEFAULT_MODEL_ID, DEFAULT_REQUEST_TIMEOUT_S, MAX_NEW_TOKENS_LIMIT

# Where Discord serves uploads. Anything else is never downloaded.
DISCORD_CDN_HOSTS = frozenset({"cdn.discordapp.com", "media.discordapp.net"})

DTYPES = ("auto", "bfloat16", "float16", "float32")
QUANTIZATIONS = ("auto", "none", "4bit", "8bit")
ATTN_IMPLEMENTATIONS = ("auto", "flash_attention_2", "sdpa", "eager")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
BACKENDS = ("local", "remote")
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
MAX_IMAGES_LIMIT = 16
MIN_TOKEN_BUDGET = 1024  # the same floor as inference.cache_size's
BYTES_PER_MB = 1024 * 1024
DEFAULT_DATABASE_PATH = "data/bot.sqlite3"
REMOTE_URL_MISSING = (
    "BACKEND=remote needs REMOTE_URL, the model server's OpenAI-compatible address "
    "(for example http://127.0.0.1:8000/v1; see docs/deployment.md)."
)

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting is missing or has a value the bot cannot use; the message names it."""


class Secret:
    """A string that never shows itself in repr(), str() or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    __str__ = __repr__


@dataclass(frozen=True)
class Settings:
    """Everything the bot can be told from the outside, parsed and checked."""

    discord_token: Secret = field(default_factory=lambda: Secret(""))
    # Sharding: None is one connection; "auto" lets Discord pick the count; shard_ids splits them up
    shard_count: int | Literal["auto"] | None = None
    shard_ids: tuple[int, ...] = ()
    # Where the model runs: "local" (this process) or "remote" (an OpenAI-compatible server such as vLLM)
    backend: str = "local"
    remote_url: str | None = None
    remote_api_key: Secret = field(default_factory=lambda: Secret(""))
    remote_model: str = DEFAULT_MODEL_ID
    remote_retries: int = 3
    remote_max_concurrent: int = 16
    # Model and engine
    model_id: str = DEFAULT_MODEL_ID
    device: str = "auto"
    dtype: str = "auto"
    quantization: str = "auto"
    attn_implementation: str = "auto"
    num_crops: int | None = None
    max_new_tokens: int = 512
    max_images: int = 4
    request_timeout_s: float | None = None  # None: auto (180 s, longer on a slow CPU)
    max_queued: int = 32
    max_batch_size: int = 8
    token_budget: int | None = None  # None: auto, sized from the memory left after the weights
    gpu_memory_fraction: float = 0.9
    batch_window_ms: float = 15.0
    prefill_chunk_tokens: int = 2048
    cuda_graphs: bool = True
    # Discord wiring
    command_prefix: str = "!"
    dev_guild_id: int | None = None
    sync_commands: bool = True
    owner_ids: frozenset[int] = frozenset()
    # Who may use the bot, and where
    allowed_guild_ids: frozenset[int] = frozenset()
    allowed_channel_ids: frozenset[int] = frozenset()
    ocr_role_ids: frozenset[int] = frozenset()
    ocr_public: bool = False
    allow_dms: bool = True
    # Limits
    user_cooldown_s: float = 10.0
    max_jobs_per_user: int = 2
    max_attachment_mb: float = 10.0
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    download_timeout_s: float = 20.0
    # Hosts attachments may be downloaded from; not read from the environment on purpose.
    cdn_hosts: frozenset[str] = DISCORD_CDN_HOSTS
    log_level: str = "INFO"
    # What must survive a restart (conversations; per-server settings): one SQLite file
    database_path: str = DEFAULT_DATABASE_PATH
    # The owner's view: Prometheus metrics over HTTP (off when no port is set)
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"

    @property
    def max_attachment_bytes(self) -> int:
        return int(self.max_attachment_mb * BYTES_PER_MB)

    @property
    def sharded(self) -> bool:
        return self.shard_count is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, env_file: str | None = None) -> Settings:
        """Read settings from ``environ``, or from ``os.environ`` after loading ``.env`` (if any).

        ``env_file`` names the file to load instead of the ``.env`` of the current directory; values
        already in the environment win over the file's. Passing ``environ`` (as tests do) skips the
        file entirely.
        """
        if environ is None:
            if env_file is not None and not Path(env_file).is_file():
                raise SettingsError(f"the settings file {env_file} does not exist")
            load_dotenv(env_file or find_dotenv(usecwd=True))  # by default the .env of where the bot runs
            environ = os.environ
        env = _Reader(environ)
        defaults = cls()
        settings = cls(
            discord_token=Secret(env.text("DISCORD_TOKEN", "")),
            shard_count=env.parse("SHARD_COUNT", defaults.shard_count, _shard_count),
            shard_ids=env.parse("SHARD_IDS", defaults.shard_ids, _shard_ids),
            backend=env.choice("BACKEND", defaults.backend, BACKENDS),
            remote_url=env.parse("REMOTE_URL", defaults.remote_url, _http_url),
            remote_api_key=Secret(env.text("REMOTE_API_KEY", "")),
            remote_model=env.text("REMOTE_MODEL", defaults.remote_model),
            remote_retries=env.integer("REMOTE_RETRIES", defaults.remote_retries, minimum=0, maximum=10),
            remote_max_concurrent=env.integer(
                "REMOTE_MAX_CONCURRENT", defaults.remote_max_concurrent, minimum=1, maximum=4096
            ),
            model_id=env.text("MODEL_ID", defaults.model_id) or defaults.model_id,
            device=env.parse("DEVICE", defaults.device, _device),
            dtype=env.choice("DTYPE", defaults.dtype, DTYPES),
            quantization=env.choice("QUANTIZATION", defaults.quantization, QUANTIZATIONS),
            attn_implementation=env.choice(
                "ATTN_IMPLEMENTATION", defaults.attn_implementation, ATTN_IMPLEMENTATIONS
            ),
            num_crops=env.optional_int("NUM_CROPS", minimum=1, maximum=16),
            max_new_tokens=env.integer(
                "MAX_NEW_TOKENS", defaults.max_new_tokens, minimum=1, maximum=MAX_NEW_TOKENS_LIMIT
            ),
            max_images=env.integer("MAX_IMAGES", defaults.max_images, minimum=1, maximum=MAX_IMAGES_LIMIT),
            request_timeout_s=env.parse("REQUEST_TIMEOUT_S", defaults.request_timeout_s, _request_timeout),
            max_queued=env.integer("MAX_QUEUED", defaults.max_queued, minimum=0),
            max_batch_size=env.integer("MAX_BATCH_SIZE", defaults.max_batch_size, minimum=1, maximum=256),
            token_budget=env.parse("TOKEN_BUDGET", defaults.token_budget, _token_budget),
            gpu_memory_fraction=env.number(
                "GPU_MEMORY_FRACTION", defaults.gpu_memory_fraction, minimum=0.1, maximum=0.99
            ),
            batch_window_ms=env.number("BATCH_WINDOW_MS", defaults.batch_window_ms, minimum=0, maximum=5000),
            prefill_chunk_tokens=env.integer(
                "PREFILL_CHUNK_TOKENS", defaults.prefill_chunk_tokens, minimum=64, maximum=65_536
            ),
            cuda_graphs=env.boolean("CUDA_GRAPHS", defaults.cuda_graphs),
            command_prefix=env.text("COMMAND_PREFIX", defaults.command_prefix),
            dev_guild_id=env.optional_int("DEV_GUILD_ID", minimum=1),
            sync_commands=env.boolean("SYNC_COMMANDS", defaults.sync_commands),
            owner_ids=env.id_set("OWNER_IDS"),
            allowed_guild_ids=env.id_set("ALLOWED_GUILD_IDS"),
            allowed_channel_ids=env.id_set("ALLOWED_CHANNEL_IDS"),
            ocr_role_ids=env.id_set("OCR_ROLE_IDS"),
            ocr_public=env.boolean("OCR_PUBLIC", defaults.ocr_public),
            allow_dms=env.boolean("ALLOW_DMS", defaults.allow_dms),
            user_cooldown_s=env.number("USER_COOLDOWN_S", defaults.user_cooldown_s, minimum=0),
            max_jobs_per_user=env.integer("MAX_JOBS_PER_USER", defaults.max_jobs_per_user, minimum=1),
            max_attachment_mb=env.number(
                "MAX_ATTACHMENT_MB", defaults.max_attachment_mb, minimum=0.01, maximum=500
            ),
            max_image_pixels=env.integer(
                "MAX_IMAGE_PIXELS", defaults.max_image_pixels, minimum=1, maximum=89_478_485
            ),
            download_timeout_s=env.number("DOWNLOAD_TIMEOUT_S", defaults.download_timeout_s, minimum=0.1),
            log_level=env.choice("LOG_LEVEL", defaults.log_level, LOG_LEVELS, upper=True),
            database_path=env.text("DATABASE_PATH", defaults.database_path),
            metrics_port=env.optional_int("METRICS_PORT", minimum=0, maximum=65535),  # 0: any free port
            metrics_host=env.text("METRICS_HOST", defaults.metrics_host) or defaults.metrics_host,
        )
        _check_together(settings, env)
        return settings

    def engine_config(self) -> EngineConfig:
        """The inference engine's configuration, taken from these settings."""
        return EngineConfig(
            model_id=self.model_id,
            device=self.device,
            dtype=self.dtype,
            quantization=self.quantization,
            attn_implementation=self.attn_implementation,
            num_crops=self.num_crops,
            max_new_tokens=self.max_new_tokens,
            max_images=self.max_images,
            request_timeout_s=self.request_timeout_s,
            max_queued=self.max_queued,
            max_batch_size=self.max_batch_size,
            token_budget=self.token_budget,
            gpu_memory_fraction=self.gpu_memory_fraction,
            batch_window_ms=self.batch_window_ms,
            prefill_chunk_tokens=self.prefill_chunk_tokens,
            cuda_graphs=self.cuda_graphs,
        )

    def remote_config(self) -> RemoteConfig:
        """The remote engine's configuration (BACKEND=remote), taken from these settings."""
        if not self.remote_url:
            raise SettingsError(REMOTE_URL_MISSING)
        return RemoteConfig(
            base_url=self.remote_url,
            api_key=self.remote_api_key.reveal() or None,
            model=self.remote_model,
            max_new_tokens=self.max_new_tokens,
            max_images=self.max_images,
            request_timeout_s=self.request_timeout_s or DEFAULT_REQUEST_TIMEOUT_S,
            retries=self.remote_retries,
            max_concurrent=self.remote_max_concurrent,
        )


def _check_together(settings: Settings, env: _Reader) -> None:
    """Settings that are only valid in combination."""
    if settings.backend == "remote" and not settings.remote_url:
        raise SettingsError(REMOTE_URL_MISSING)
    if settings.shard_ids:
        count = settings.shard_count
        if not isinstance(count, int):
            raise SettingsError("SHARD_IDS needs SHARD_COUNT set to the total number of shards (a number).")
        if settings.shard_ids[-1] >= count:
            raise SettingsError(
                f"SHARD_IDS={env.text('SHARD_IDS', '')!r} is not valid: "
                f"with SHARD_COUNT={count} the shard IDs run from 0 to {count - 1}"
            )


def _token_budget(raw: str) -> int | None:
    """``auto`` (None: sized at start-up from the memory left) or a whole number of tokens, at least 1024."""
    if raw.strip().lower() == "auto":
        return None
    try:
        tokens = int(_digits(raw))
    except ValueError:
        raise ValueError("use auto or a whole number of tokens") from None
    return _bounded(tokens, MIN_TOKEN_BUDGET, None)


def _request_timeout(raw: str) -> float | None:
    """``auto`` (None: 180 s, or what the longest answer needs on a slow CPU) or seconds, at least 1."""
    if raw.strip().lower() == "auto":
        return None
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError("use auto or a number of seconds") from None
    return _bounded(seconds, 1, None)


def _shard_count(raw: str) -> int | Literal["auto"]:
    if raw.lower() == "auto":
        return "auto"
    try:
        count = int(raw)
    except ValueError:
        raise ValueError("use auto or a whole number of shards") from None
    return _bounded(count, 1, None)


def _number_list(raw: str, what: str) -> set[int]:
    """Parse "1, 2,3" into {1, 2, 3}; anything else names the bad part."""
    numbers = set()
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise ValueError(f"{part!r} is not {what}")
        numbers.add(int(part))
    return numbers


def _shard_ids(raw: str) -> tuple[int, ...]:
    return tuple(sorted(_number_list(raw, "a shard ID (numbers from 0, separated by commas)")))


def _http_url(raw: str) -> str:
    try:
        url = URL(raw.rstrip("/"))
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise ValueError("use an http:// or https:// address such as http://127.0.0.1:8000/v1")
    return str(url)


def _device(raw: str) -> str:
    value = raw.lower()
    if value in ("auto", "cpu", "mps", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise ValueError("use auto, cpu, mps, cuda or cuda:N (for example cuda:1)")


class _Reader:
    """Reads one environment mapping, turning bad values into SettingsError with the name."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def _raw(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def text(self, name: str, default: str) -> str:
        value = self._raw(name)
        return default if value is None else value

    def parse(self, name: str, default: T, parser: Callable[[str], T]) -> T:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            return parser(raw)
        except ValueError as error:
            raise SettingsError(f"{name}={raw!r} is not valid: {error}") from None

    def choice(self, name: str, default: str, allowed: tuple[str, ...], *, upper: bool = False) -> str:
        def pick(raw: str) -> str:
            value = raw.upper() if upper else raw.lower()
            if value not in allowed:
                raise ValueError(f"choose one of {', '.join(allowed)}")
            return value

        return self.parse(name, default, pick)

    def integer(self, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        return self.parse(name, default, lambda raw: _bounded(int(_digits(raw)), minimum, maximum))

    def optional_int(self, name: str, *, minimum: int, maximum: int | None = None) -> int | None:
        return self.parse(name, None, lambda raw: _bounded(int(_digits(raw)), minimum, maximum))

    def number(self, name: str, default: float, *, minimum: float, maximum: float | None = None) -> float:
        return self.parse(name, default, lambda raw: _bounded(_float(raw), minimum, maximum))

    def boolean(self, name: str, default: bool) -> bool:
        def to_bool(raw: str) -> bool:
            word = raw.lower()
            if word in TRUE_WORDS:
                return True
            if word in FALSE_WORDS:
                return False
            raise ValueError("use true or false")

        return self.parse(name, default, to_bool)

    def id_set(self, name: str) -> frozenset[int]:
        def to_ids(raw: str) -> frozenset[int]:
            return frozenset(_number_list(raw, "a Discord ID (IDs are numbers, separated by commas)"))

        return self.parse(name, frozenset(), to_ids)


def _digits(raw: str) -> str:
    cleaned = raw.replace("_", "")
    if not cleaned.lstrip("-").isdigit():
        raise ValueError("expected a whole number")
    return cleaned


def _float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number") from None
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


def _bounded(value: T, minimum: float, maximum: float | None) -> T:
    if value < minimum:  # type: ignore[operator]
        raise ValueError(f"must be at least {minimum:g}")
    if maximum is not None and value > maximum:  # type: ignore[operator]
        raise ValueError(f"must be at most {maximum:g}")
    return value
