"""Settings: parsing, defaults, clear errors, secrecy of the token."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from bot.settings import (
    DEFAULT_MODEL_ID,
    DISCORD_CDN_HOSTS,
    REMOTE_URL_MISSING,
    REMOVED,
    SETTINGS,
    Settings,
    SettingsError,
    unknown_names,
)
from inference import EngineConfig
from inference.remote import RemoteConfig
from inference.types import DEFAULT_REQUEST_TIMEOUT_S

TOKEN = "MTIzNDU2Nzg5.secret-token-value"


def test_defaults_with_an_empty_environment():
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.model_id == DEFAULT_MODEL_ID
    assert settings.quantization == "auto"
    assert settings.num_crops is None
    assert settings.max_new_tokens == 512
    assert settings.max_images == 4
    assert settings.command_prefix == "!"
    assert settings.allowed_guild_ids == frozenset()
    assert settings.ocr_public is False
    assert settings.cdn_hosts == DISCORD_CDN_HOSTS
    assert not settings.discord_token
    assert settings.backend == "local"
    assert settings.remote_url is None
    assert settings.remote_model == DEFAULT_MODEL_ID
    assert settings.remote_max_concurrent == 16
    assert not settings.remote_api_key
    assert settings.shard_count is None and settings.shard_ids == ()
    assert not settings.sharded


def test_every_setting_is_read():
    settings = Settings.from_env(
        {
            "DISCORD_TOKEN": TOKEN,
            "MODEL_ID": "/models/phi3v",
            "DEVICE": "cuda:1",
            "DTYPE": "bfloat16",
            "QUANTIZATION": "4BIT",
            "ATTN_IMPLEMENTATION": "sdpa",
            "NUM_CROPS": "16",
            "MAX_NEW_TOKENS": "256",
            "MAX_IMAGES": "3",
            "REQUEST_TIMEOUT_S": "90",
            "COMMAND_PREFIX": "?",
            "DEV_GUILD_ID": "123",
            "SYNC_COMMANDS": "no",
            "OWNER_IDS": "7",
            "ALLOWED_GUILD_IDS": "1, 2,3",
            "ALLOWED_CHANNEL_IDS": "4,",
            "OCR_ROLE_IDS": "5,6",
            "OCR_PUBLIC": "true",
            "ALLOW_DMS": "off",
            "USER_COOLDOWN_S": "2.5",
            "MAX_JOBS_PER_USER": "3",
            "MAX_ATTACHMENT_MB": "8",
            "MAX_IMAGE_PIXELS": "20_000_000",
            "LOG_LEVEL": "debug",
        }
    )
    assert settings.discord_token.get_secret_value() == TOKEN
    assert settings.model_id == "/models/phi3v"
    assert settings.device == "cuda:1"
    assert settings.dtype == "bfloat16"
    assert settings.quantization == "4bit"
    assert settings.attn_implementation == "sdpa"
    assert settings.num_crops == 16
    assert settings.max_new_tokens == 256
    assert settings.max_images == 3
    assert settings.request_timeout_s == 90
    assert settings.command_prefix == "?"
    assert settings.dev_guild_id == 123
    assert settings.sync_commands is False
    assert settings.owner_ids == {7}
    assert settings.allowed_guild_ids == {1, 2, 3}
    assert settings.allowed_channel_ids == {4}
    assert settings.ocr_role_ids == {5, 6}
    assert settings.ocr_public is True
    assert settings.allow_dms is False
    assert settings.user_cooldown_s == 2.5
    assert settings.max_jobs_per_user == 3
    assert settings.max_attachment_bytes == 8 * 1024 * 1024
    assert settings.max_image_pixels == 20_000_000
    assert settings.log_level == "DEBUG"


def test_blank_values_mean_default_but_a_blank_prefix_means_none():
    settings = Settings.from_env({"NUM_CROPS": "", "MODEL_ID": "  ", "MAX_IMAGES": "", "COMMAND_PREFIX": ""})
    assert settings.num_crops is None
    assert settings.model_id == DEFAULT_MODEL_ID
    assert settings.max_images == 4
    assert settings.command_prefix == ""  # as documented: mentions and slash commands only
    assert Settings.from_env({}).command_prefix == "!"


@pytest.mark.parametrize(
    ("name", "value", "hint"),
    [
        ("QUANTIZATION", "3bit", "none, 4bit, 8bit"),
        ("DEVICE", "gpu", "cuda:N"),
        ("DTYPE", "int4", "bfloat16"),
        ("NUM_CROPS", "zero", "whole number"),
        ("NUM_CROPS", "0", "at least 1"),
        ("MAX_IMAGES", "99", "at most 16"),
        ("MAX_NEW_TOKENS", "-5", "at least 1"),
        ("USER_COOLDOWN_S", "soon", "number"),
        ("USER_COOLDOWN_S", "nan", "finite"),
        ("ALLOWED_GUILD_IDS", "123,general", "'general' is not a Discord ID"),
        ("OCR_PUBLIC", "maybe", "true or false"),
        ("LOG_LEVEL", "LOUD", "DEBUG"),
        ("MAX_IMAGE_PIXELS", "500000000", "at most"),
        ("BACKEND", "cloud", "local, remote"),
        ("REMOTE_URL", "localhost:8000/v1", "http://"),
        ("REMOTE_URL", "ftp://models/v1", "http://"),
        ("REMOTE_MAX_CONCURRENT", "0", "at least 1"),
        ("SHARD_COUNT", "many", "auto or a whole number"),
        ("SHARD_COUNT", "0", "at least 1"),
        ("SHARD_IDS", "1,two", "'two' is not a shard ID"),
        ("TOKEN_BUDGET", "lots", "use auto or a whole number of tokens"),
        ("TOKEN_BUDGET", "512", "at least 1024"),
        ("GPU_MEMORY_FRACTION", "1.5", "at most 0.99"),
        ("REQUEST_TIMEOUT_S", "soon", "use auto or a number of seconds"),
        ("REQUEST_TIMEOUT_S", "0", "at least 1"),
    ],
)
def test_bad_values_name_the_setting_and_say_what_is_expected(name, value, hint):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: value})
    message = str(caught.value)
    assert message.startswith(f"{name}={value!r} is not valid")
    assert hint in message


@pytest.mark.parametrize(
    ("raw", "budget"), [("auto", None), ("AUTO", None), ("8192", 8192), ("16_384", 16384)]
)
def test_token_budget_is_auto_or_a_number_of_tokens(raw, budget):
    settings = Settings.from_env({"TOKEN_BUDGET": raw, "GPU_MEMORY_FRACTION": "0.8"})
    assert settings.token_budget == budget
    assert settings.engine_config().token_budget == budget
    assert settings.engine_config().gpu_memory_fraction == 0.8
    assert Settings.from_env({}).token_budget is None  # auto by default


@pytest.mark.parametrize(("raw", "seconds"), [("auto", None), ("Auto", None), ("90", 90.0), ("2.5", 2.5)])
def test_the_request_limit_is_auto_or_seconds_and_a_remote_server_gets_the_default_for_auto(raw, seconds):
    settings = Settings.from_env({"REQUEST_TIMEOUT_S": raw, "REMOTE_URL": "http://localhost:8000/v1"})
    assert settings.request_timeout_s == seconds
    assert settings.engine_config().request_timeout_s == seconds  # the local engine decides for auto
    assert settings.remote_config().request_timeout_s == (seconds or DEFAULT_REQUEST_TIMEOUT_S)
    assert Settings.from_env({}).request_timeout_s is None  # auto by default


def test_token_never_shows_in_repr_or_str():
    settings = Settings.from_env({"DISCORD_TOKEN": TOKEN})
    assert TOKEN not in repr(settings)
    assert TOKEN not in str(settings)
    assert TOKEN not in f"{settings.discord_token}"
    assert "********" in repr(settings.discord_token)
    assert SecretStr(TOKEN) == settings.discord_token


def test_engine_config_carries_the_model_settings():
    settings = Settings.from_env(
        {
            "MODEL_ID": "m",
            "QUANTIZATION": "8bit",
            "NUM_CROPS": "4",
            "REQUEST_TIMEOUT_S": "30",
            "MAX_IMAGES": "2",
        }
    )
    assert settings.engine_config() == EngineConfig(
        model_id="m",
        quantization="8bit",
        num_crops=4,
        request_timeout_s=30.0,
        max_images=2,
    )


def test_dotenv_file_is_read_when_no_mapping_is_given(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("MAX_IMAGES=2\nOCR_PUBLIC=true\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAX_IMAGES", raising=False)
    monkeypatch.delenv("OCR_PUBLIC", raising=False)
    try:
        settings = Settings.from_env()
    finally:
        import os

        os.environ.pop("MAX_IMAGES", None)
        os.environ.pop("OCR_PUBLIC", None)
    assert settings.max_images == 2
    assert settings.ocr_public is True


def test_env_example_documents_every_setting_with_the_defaults():
    from pathlib import Path

    from dotenv import dotenv_values

    example = Path(__file__).resolve().parents[2] / ".env.example"
    values = dotenv_values(example)
    assert set(values) == {name.upper() for name in SETTINGS}
    assert values["DISCORD_TOKEN"] == ""
    assert Settings.from_env(values) == Settings()
    lines = example.read_text().splitlines()
    for index, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[index - 1].startswith("# "), f"{line} has no comment above it"


def test_remote_backend_settings_are_read():
    settings = Settings.from_env(
        {
            "BACKEND": "Remote",
            "REMOTE_URL": "http://vllm.internal:8000/v1/",
            "REMOTE_API_KEY": TOKEN,
            "REMOTE_MODEL": "phi3v",
            "REMOTE_MAX_CONCURRENT": "64",
        }
    )
    assert settings.backend == "remote"
    assert settings.remote_url == "http://vllm.internal:8000/v1"
    assert settings.remote_api_key.get_secret_value() == TOKEN
    assert settings.remote_model == "phi3v"
    assert settings.remote_max_concurrent == 64
    assert TOKEN not in repr(settings) and TOKEN not in str(settings)


def test_remote_config_carries_the_remote_settings():
    settings = Settings.from_env(
        {
            "BACKEND": "remote",
            "REMOTE_URL": "https://models.example/v1",
            "REMOTE_API_KEY": TOKEN,
            "MAX_NEW_TOKENS": "300",
            "MAX_IMAGES": "2",
            "REQUEST_TIMEOUT_S": "30",
        }
    )
    config = settings.remote_config()
    assert config == RemoteConfig(
        base_url="https://models.example/v1",
        api_key=TOKEN,
        model=DEFAULT_MODEL_ID,
        max_new_tokens=300,
        max_images=2,
        request_timeout_s=30.0,
        retries=3,
        max_concurrent=16,
    )
    assert TOKEN not in repr(config)
    assert Settings(remote_url="http://127.0.0.1:8000/v1").remote_config().api_key is None


def test_remote_backend_needs_an_address():
    with pytest.raises(SettingsError, match="BACKEND=remote needs REMOTE_URL"):
        Settings.from_env({"BACKEND": "remote"})
    with pytest.raises(SettingsError, match="REMOTE_URL"):
        Settings(backend="remote").remote_config()


@pytest.mark.parametrize(
    ("environ", "count", "ids"),
    [
        ({"SHARD_COUNT": "AUTO"}, "auto", ()),
        ({"SHARD_COUNT": "8"}, 8, ()),
        ({"SHARD_COUNT": "8", "SHARD_IDS": "7, 4,5,6,"}, 8, (4, 5, 6, 7)),
        ({"SHARD_COUNT": "2", "SHARD_IDS": "0"}, 2, (0,)),
    ],
)
def test_sharding_settings(environ, count, ids):
    settings = Settings.from_env(environ)
    assert settings.sharded
    assert settings.shard_count == count
    assert settings.shard_ids == ids


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SHARD_IDS": "0,1"}, "SHARD_IDS needs SHARD_COUNT"),
        ({"SHARD_COUNT": "auto", "SHARD_IDS": "0"}, "SHARD_IDS needs SHARD_COUNT"),
        (
            {"SHARD_COUNT": "4", "SHARD_IDS": "2,4"},
            "SHARD_IDS='2,4' is not valid: with SHARD_COUNT=4 the shard IDs run from 0 to 3",
        ),
    ],
)
def test_shard_ids_must_fit_the_shard_count(environ, message):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(environ)
    assert str(caught.value).startswith(message)


def test_the_readme_table_and_env_example_are_written_from_the_declarations(monkeypatch, tmp_path):
    import shutil

    from scripts import settings_docs

    assert settings_docs.main(["--check"]) == 0
    # A renamed setting makes both files stale.
    for path in (settings_docs.README, settings_docs.ENV_EXAMPLE):
        shutil.copy(path, tmp_path / path.name)
    monkeypatch.setattr(settings_docs, "README", tmp_path / "README.md")
    monkeypatch.setattr(settings_docs, "ENV_EXAMPLE", tmp_path / ".env.example")
    renamed = {
        ("max_image_count" if name == "max_images" else name): field for name, field in SETTINGS.items()
    }
    monkeypatch.setattr(settings_docs, "SETTINGS", renamed)
    assert settings_docs.main(["--check"]) == 1
    assert "| `MAX_IMAGE_COUNT` | `4` |" in settings_docs.readme_table()


def test_every_setting_is_documented_with_a_sentence():
    assert all(field.description and field.description.endswith(".") for field in SETTINGS.values())


def test_a_misspelt_setting_names_the_closest_one(tmp_path):
    (tmp_path / ".env").write_text("TOKEN_BUDGT=100\nMAX_IMAGES=2\nBATCH_WINDOW_MS=5\nSOMETHING_ELSE=1\n")

    lines = unknown_names(env_file=str(tmp_path / ".env"))

    assert lines == [
        f"BATCH_WINDOW_MS is no longer a setting ({REMOVED['BATCH_WINDOW_MS']}); remove it from .env",
        "SOMETHING_ELSE in .env is not a setting of this bot; it is ignored",
        "TOKEN_BUDGT is not a setting (did you mean TOKEN_BUDGET?); it is ignored",
    ]
    # In the process environment only names close to a setting count (PATH, HOME... are not ours).
    assert unknown_names({"PATH": "/bin", "MAX_IMAGE": "3"}) == [
        "MAX_IMAGE is not a setting (did you mean MAX_IMAGES?); it is ignored"
    ]


def test_a_setting_in_lower_case_is_applied_and_not_called_unknown(tmp_path):
    """One rule: names are read in any case, and the warning about unknown names agrees."""
    (tmp_path / ".env").write_text("max_new_tokens=5\nbatch_window_ms=5\n")
    assert Settings.from_env({"max_new_tokens": "5"}).max_new_tokens == 5
    lines = unknown_names(env_file=str(tmp_path / ".env"))  # (and names in this process's environment)
    removed = REMOVED["BATCH_WINDOW_MS"]
    assert f"batch_window_ms is no longer a setting ({removed}); remove it from .env" in lines
    assert not any("max_new_tokens" in line for line in lines)


def test_one_setting_under_two_spellings_with_different_values_is_refused():
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"DEVICE": "cpu", "device": "cuda"})
    assert caught.value.problems == [
        "DEVICE='cpu' and device='cuda' both set DEVICE (names are read in any case): keep one"
    ]
    assert Settings.from_env({"DEVICE": "cpu", "device": "cpu"}).device == "cpu"  # the same: no doubt


def test_every_bad_setting_is_reported_at_once_each_on_its_own_line():
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"NUM_CROPS": "99", "MAX_IMAGES": "0", "DEVICE": "gpu"})
    problems = caught.value.problems
    assert len(problems) == 3 and str(caught.value) == "\n".join(problems)
    assert {problem.split("=", 1)[0] for problem in problems} == {"NUM_CROPS", "MAX_IMAGES", "DEVICE"}
    assert all(" is not valid: " in problem for problem in problems)


def test_settings_valid_only_together_are_all_reported():
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"BACKEND": "remote", "SHARD_IDS": "1"})
    assert caught.value.problems == [
        REMOTE_URL_MISSING,
        "SHARD_IDS needs SHARD_COUNT set to the total number of shards (a number).",
    ]
