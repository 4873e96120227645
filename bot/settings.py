"""Bot configuration: the only module that reads the environment (and the .env file), on pydantic-settings.

Each setting is declared once below: its type, bounds, default and the sentence that documents it. The
README's table and ``.env.example`` are written from these declarations (scripts/settings_docs.py; a
test fails when they differ), and a name in ``.env`` that is not a setting is reported with the closest one.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from dotenv import dotenv_values, find_dotenv, load_dotenv
from pydantic import Field, SecretStr, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from bot.setting_values import (
    MIN_TOKEN_BUDGET,
    IdSet,
    ShardCount,
    ShardIds,
    Timeout,
    TokenBudget,
    choice,
    parse_device,
    parse_http_url,
    parsed,
    setting,
)
from inference import EngineConfig
from inference.images import DEFAULT_MAX_PIXELS
from inference.remote import RemoteConfig
from inference.types import DEFAULT_MODEL_ID, DEFAULT_REQUEST_TIMEOUT_S, MAX_NEW_TOKENS_LIMIT

# Where Discord serves uploads. Anything else is never downloaded.
DISCORD_CDN_HOSTS = frozenset({"cdn.discordapp.com", "media.discordapp.net"})
MAX_IMAGES_LIMIT = 16
BYTES_PER_MB = 1024 * 1024
DEFAULT_DATABASE_PATH = "data/bot.sqlite3"
DOWNLOAD_TIMEOUT_S = 20.0  # one image from Discord's CDN
REMOTE_RETRIES = 3  # extra attempts before any text arrived (the openai client's back-off)
REMOTE_URL_MISSING = (
    "BACKEND=remote needs REMOTE_URL, the model server's OpenAI-compatible address "
    "(for example http://127.0.0.1:8000/v1; see docs/deployment.md)."
)
# Settings that are no more, and what to do instead (told at start and by --check when .env still has one).
REMOVED = {
    "BATCH_WINDOW_MS": "removed: the engine gathers a burst by itself (15 ms)",
    "PREFILL_CHUNK_TOKENS": "removed: prompts are read 2048 tokens at a time beside running answers",
    "REMOTE_RETRIES": "removed: the model server is tried 3 more times before any text arrives",
    "DOWNLOAD_TIMEOUT_S": "removed: one image may take 20 s to download",
}


class SettingsError(ValueError):
    """Settings are missing or have values the bot cannot use: one line per problem (``problems``), each
    naming its setting; the message is those lines."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


DISCORD, WHERE, MODEL = (
    "Discord",
    "Where the model runs",
    "Model (BACKEND=local; MAX_NEW_TOKENS, MAX_IMAGES and REQUEST_TIMEOUT_S also apply to remote)",
)
ACCESS, LIMITS = "Who may use the bot, and where", "Limits"


class Settings(BaseSettings):
    """Everything the bot can be told from the outside, parsed and checked.

    ``Settings(...)`` is exactly what it is given (tests and tools build it so); :meth:`from_env`
    reads the environment and ``.env``.
    """

    model_config = SettingsConfigDict(frozen=True, extra="ignore", allow_inf_nan=False, case_sensitive=False)

    discord_token: SecretStr = setting(
        SecretStr(""),
        "Bot token from the Discord Developer Portal (your application > Bot > Reset Token). Keep it secret.",
        section=DISCORD,
    )
    command_prefix: str = setting(
        "!",
        "Prefix for text commands such as !describe; leave blank for mentions and slash commands only "
        "(no Message Content intent needed).",
    )
    dev_guild_id: int | None = setting(
        None,
        "Server ID to publish slash commands to instantly while developing; blank publishes them globally.",
        ge=1,
    )
    sync_commands: bool = setting(
        True,
        "Publish slash commands and menus at every start (true/false); turn off and use the owner-only !sync "
        "when you prefer.",
    )
    owner_ids: IdSet = setting(
        frozenset(),
        "Comma-separated user IDs allowed to run owner commands (!sync); blank means the application's "
        "owner.",
    )
    shard_count: ShardCount = setting(
        None,
        "Shards (Discord requires them from 2,500 servers): blank for none, auto for Discord's recommended "
        "count, or a number.",
    )
    shard_ids: ShardIds = setting(
        (),
        "Comma-separated shard IDs this process runs (0 to SHARD_COUNT-1, needs a numeric SHARD_COUNT); "
        "blank "
        "runs them all.",
    )
    backend: choice("local", "remote") = setting(  # type: ignore[valid-type]
        "local",
        "local runs the model in this process; remote asks an OpenAI-compatible server such as vLLM (see "
        "docs/deployment.md).",
        section=WHERE,
    )
    remote_url: Annotated[str | None, parsed(parse_http_url)] = setting(
        None,
        "The model server's OpenAI-compatible address, ending in /v1 (needed for BACKEND=remote), e.g. "
        "http://127.0.0.1:8000/v1.",
    )
    remote_api_key: SecretStr = setting(
        SecretStr(""),
        "API key the model server expects (vllm serve --api-key); blank sends none. Keep it secret.",
    )
    remote_model: str = setting(
        DEFAULT_MODEL_ID,
        "Model name the server serves (its --served-model-name, or the model id by default).",
    )
    remote_max_concurrent: int = setting(
        16,
        "Requests this bot process sends to the server at once; more wait their turn in the bot.",
        ge=1,
        le=4096,
    )
    model_id: str = setting(
        DEFAULT_MODEL_ID,
        "Hugging Face model id or local folder of a Phi-3-vision checkpoint.",
        section=MODEL,
    )
    device: Annotated[str, parsed(parse_device)] = setting(
        "auto", "Where to run the model: auto, cuda, cuda:N, mps or cpu."
    )
    dtype: choice("auto", "bfloat16", "float16", "float32") = setting(  # type: ignore[valid-type]
        "auto",
        "Weight precision: auto, bfloat16, float16 or float32. auto: bf16 on a GPU that has it (else "
        "float16), float16 on Apple's GPU, and on a CPU bf16 where it computes it natively (Intel AMX, "
        "AVX-512 BF16), float32 elsewhere.",
    )
    quantization: choice("auto", "none", "4bit", "8bit") = setting(  # type: ignore[valid-type]
        "auto",
        "Smaller weights: auto, none, 4bit or 8bit. auto is 8bit on a CPU (answers about twice as fast; no "
        "extra package; 4bit is refused there) and none on a GPU, where 8bit and 4bit save memory "
        "(bitsandbytes).",
    )
    attn_implementation: choice("auto", "flash_attention_2", "sdpa", "eager") = setting(  # type: ignore[valid-type]
        "auto",
        "The vision tower's attention: auto, flash_attention_2, sdpa or eager (the language model reads the "
        "paged KV cache with the kernel the start-up check chose).",
    )
    num_crops: int | None = setting(
        None,
        "Image tiles per picture (1-16; more reads small text better but costs memory and time); blank uses "
        "the checkpoint's value, or 4 on a CPU where that would take over 30 s to the first words (measured "
        "at start).",
        ge=1,
        le=16,
    )
    max_new_tokens: int = setting(512, "Longest answer, in tokens.", ge=1, le=MAX_NEW_TOKENS_LIMIT)
    max_images: int = setting(
        4,
        "Most images in one request (compare takes 2 to this many; slash /compare offers up to 4), and "
        "the most pages of a PDF or frames of a video read at once.",
        ge=1,
        le=MAX_IMAGES_LIMIT,
    )
    request_timeout_s: Timeout = setting(
        None,
        "Seconds one request may take, waiting in line included, before it is stopped: auto is 180, or on a "
        "CPU three times what the longest answer takes there by the start's measurement.",
        ge=1,
    )
    max_queued: int = setting(
        32,
        'Requests that may wait for the model at once; one more gets an immediate "busy, try again shortly".',
        ge=0,
    )
    max_batch_size: int = setting(
        8,
        "Answers decoded together in one batch on the GPU; a step costs about the same for 1 or 32, so raise "
        "it on a large GPU, e.g. 32 on 80 GB.",
        ge=1,
        le=256,
    )
    token_budget: TokenBudget = setting(
        None,
        "KV-cache tokens (prompt + answer) the running batch may reserve; ~0.4 MB each on the full model in "
        "bf16. `auto`: sized at start-up from the memory left after the weights and a warm-up "
        "(`GPU_MEMORY_FRACTION` of a GPU; half the free RAM, at most 16384, on a CPU); the log and `/status` "
        "say how many people that holds. A number (at least 1024) keeps that size; one 16-crop image request "
        "reserves ~2,500 plus its answer.",
        ge=MIN_TOKEN_BUDGET,
    )
    gpu_memory_fraction: float = setting(
        0.9,
        "With `TOKEN_BUDGET=auto` on a GPU: the share of the card the bot may fill (weights, activations, KV "
        "cache).",
        ge=0.1,
        le=0.99,
    )
    cuda_graphs: bool = setting(
        True,
        "On an NVIDIA GPU: replay each decoding step from a CUDA graph captured at start-up and checked "
        "against an eager step (one launch instead of about a thousand; a few seconds and a little memory). "
        "false: eager steps.",
    )
    allowed_guild_ids: IdSet = setting(
        frozenset(),
        "Comma-separated server IDs the bot answers in; blank means every server it is in.",
        section=ACCESS,
    )
    allowed_channel_ids: IdSet = setting(
        frozenset(),
        "Comma-separated channel IDs the bot answers in (threads inside them count); blank means every "
        "channel.",
    )
    ocr_role_ids: IdSet = setting(
        frozenset(),
        'Comma-separated role IDs allowed to use OCR (/ocr, "Extract text"); blank means everyone.',
    )
    ocr_public: bool = setting(
        False,
        "Show OCR results to the whole channel (true) or only to the person who asked (false) for slash and "
        "right-click.",
    )
    allow_dms: bool = setting(True, "Answer in direct messages (true/false).")
    user_cooldown_s: float = setting(
        10.0, "Seconds each person must wait between two requests.", section=LIMITS, ge=0
    )
    requests_per_hour: int = setting(
        0,
        "Most requests one person may make in an hour, in all servers together (0: no limit). Automatic alt "
        "text of their pictures is counted apart.",
        section=LIMITS,
        ge=0,
    )
    max_jobs_per_user: int = setting(
        2, "Requests one person may have waiting or running at the same time.", ge=1
    )
    max_attachment_mb: float = setting(
        10.0, "Largest file accepted (a picture, a PDF, a video), in megabytes.", ge=0.01, le=500
    )
    max_image_pixels: int = setting(
        DEFAULT_MAX_PIXELS,
        "Largest image accepted, in pixels (width x height); protects against decompression bombs.",
        ge=1,
        le=89_478_485,
    )
    database_path: str = setting(
        DEFAULT_DATABASE_PATH,
        "The SQLite file for what survives a restart: conversations (follow-ups and answer buttons keep "
        "working), each server's `/settings`, alt-text opt-outs. Its folder is made if missing. Back it up "
        'with the bot stopped, or with `sqlite3 FILE ".backup copy.sqlite3"`.',
        section="Storage",
    )
    log_level: choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", upper=True) = setting(  # type: ignore[valid-type]
        "INFO", "How much to log: DEBUG, INFO, WARNING, ERROR or CRITICAL.", section="Logging"
    )
    metrics_port: int | None = setting(
        None,
        "Port to serve Prometheus metrics on (http://METRICS_HOST:PORT/metrics); blank turns them off.",
        section="The owner's view",
        ge=0,
        le=65535,
    )
    metrics_host: str = setting(
        "127.0.0.1",
        "Address the metrics server listens on; 127.0.0.1 is this machine only, 0.0.0.0 every interface "
        "(e.g. "
        "in Docker).",
    )
    # Hosts attachments may be downloaded from: not a setting (never read from the environment), on purpose.
    cdn_hosts: frozenset[str] = Field(DISCORD_CDN_HOSTS, exclude=True)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource, *_: Any, **__: Any
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # the environment only through from_env()

    @property
    def max_attachment_bytes(self) -> int:
        return int(self.max_attachment_mb * BYTES_PER_MB)

    @property
    def sharded(self) -> bool:
        return self.shard_count is not None

    @property
    def reads_every_message(self) -> bool:
        """Whether the bot asks Discord for the Message Content intent: with a command prefix it does, and
        sees the text and pictures of every message; without one only of messages that mention it (and DMs
        and its own), so prefix commands, replies about someone else's picture and automatic alt text cannot
        work."""
        return bool(self.command_prefix)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, env_file: str | None = None) -> Settings:
        """Read settings from ``environ``, or from ``os.environ`` after loading ``.env`` (if any).

        ``env_file`` names the file to load instead of the ``.env`` of the current directory; values
        already in the environment win over the file's. Passing ``environ`` (as tests do) skips the
        file entirely. A blank value means the default (but a blank ``COMMAND_PREFIX`` means none).
        """
        if environ is None:
            path = _dotenv_path(env_file)
            load_dotenv(path)  # into the environment, where the libraries read HF_HOME and friends too
            environ = os.environ
        problems = _spelt_twice(environ)
        source = EnvSettingsSource(cls, case_sensitive=False)  # any case, as unknown_names reads names
        source.env_vars = {name.lower(): value for name, value in environ.items()}
        given = {name: str(value).strip() for name, value in source().items() if name in SETTINGS}
        values: dict[str, Any] = {
            name: value for name, value in given.items() if value or name == "command_prefix"
        }
        try:
            settings = cls(**values)
        except ValidationError as error:
            problems += [_problem_line(problem, given) for problem in error.errors()]
        if problems:
            raise SettingsError(*problems) from None
        _check_together(settings)
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
            cuda_graphs=self.cuda_graphs,
        )

    def remote_config(self) -> RemoteConfig:
        """The remote engine's configuration (BACKEND=remote), taken from these settings."""
        if not self.remote_url:
            raise SettingsError(REMOTE_URL_MISSING)
        return RemoteConfig(
            base_url=self.remote_url,
            api_key=self.remote_api_key.get_secret_value() or None,
            model=self.remote_model,
            max_new_tokens=self.max_new_tokens,
            max_images=self.max_images,
            request_timeout_s=self.request_timeout_s or DEFAULT_REQUEST_TIMEOUT_S,
            retries=REMOTE_RETRIES,
            max_concurrent=self.remote_max_concurrent,
            max_queued=self.max_queued,
        )


# The settings an owner can set, by field name (cdn_hosts is not one).
SETTINGS = {name: field for name, field in Settings.model_fields.items() if not field.exclude}


def _dotenv_path(env_file: str | None) -> str:
    if env_file is not None and not Path(env_file).is_file():
        raise SettingsError(f"the settings file {env_file} does not exist")
    return env_file or find_dotenv(usecwd=True)  # by default the .env of where the bot runs


def unknown_names(environ: Mapping[str, str] | None = None, *, env_file: str | None = None) -> list[str]:
    """One line for each name that looks like a misspelt or removed setting: every unknown name in the
    ``.env`` file (or in ``environ`` when given), and names in the environment close to a setting's."""
    names = {name.upper() for name in SETTINGS}
    if environ is not None:
        suspects = set(environ)
    else:
        path = _dotenv_path(env_file)
        suspects = set(dotenv_values(path)) if path else set()
        suspects |= {
            name for name in os.environ if difflib.get_close_matches(name.upper(), names, n=1, cutoff=0.85)
        }
    lines = []
    for name in sorted(name for name in suspects if name.upper() not in names):  # any case is read
        removed = REMOVED.get(name.upper())
        if removed is not None:
            lines.append(f"{name} is no longer a setting ({removed}); remove it from .env")
            continue
        closest = difflib.get_close_matches(name.upper(), names, n=1, cutoff=0.7)
        if closest:
            lines.append(f"{name} is not a setting (did you mean {closest[0]}?); it is ignored")
        elif environ is None:  # everything in a .env file is meant for the bot
            lines.append(f"{name} in .env is not a setting of this bot; it is ignored")
    return lines


def _spelt_twice(environ: Mapping[str, str]) -> list[str]:
    """A line for each setting given under two spellings (``DEVICE`` and ``device``) with different values:
    names are read in any case, so which one wins would be chance."""
    spellings: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if name.lower() in SETTINGS:
            spellings.setdefault(name.lower(), {})[name] = str(value).strip()
    return [
        " and ".join(f"{name}={value!r}" for name, value in sorted(given.items()))
        + f" both set {setting.upper()} (names are read in any case): keep one"
        for setting, given in sorted(spellings.items())
        if len(set(given.values())) > 1
    ]


def _problem_line(problem: ErrorDetails, given: Mapping[str, str]) -> str:
    """One problem, as ``NAME='value' is not valid: what is expected``."""
    name = str(problem["loc"][0]) if problem["loc"] else ""
    context = problem.get("ctx") or {}
    match problem["type"]:
        case "greater_than_equal":
            expected = f"must be at least {context['ge']:g}"
        case "less_than_equal":
            expected = f"must be at most {context['le']:g}"
        case "int_parsing" | "int_from_float":
            expected = "expected a whole number"
        case "float_parsing":
            expected = "expected a number"
        case "finite_number":
            expected = "expected a finite number"
        case "bool_parsing":
            expected = "use true or false"
        case "literal_error":
            expected = "choose one of " + context["expected"].replace("'", "").replace(" or ", ", ")
        case _:
            expected = str(problem["msg"]).removeprefix("Value error, ")
    return f"{name.upper()}={given.get(name, problem.get('input'))!r} is not valid: {expected}"


def _check_together(settings: Settings) -> None:
    """Settings that are only valid in combination: every problem at once."""
    problems = []
    if settings.backend == "remote" and not settings.remote_url:
        problems.append(REMOTE_URL_MISSING)
    if settings.shard_ids:
        count = settings.shard_count
        if not isinstance(count, int):
            problems.append("SHARD_IDS needs SHARD_COUNT set to the total number of shards (a number).")
        elif settings.shard_ids[-1] >= count:
            ids = ",".join(map(str, settings.shard_ids))
            problems.append(
                f"SHARD_IDS={ids!r} is not valid: "
                f"with SHARD_COUNT={count} the shard IDs run from 0 to {count - 1}"
            )
    if problems:
        raise SettingsError(*problems)
