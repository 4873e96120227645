"""``python -m bot``: clear one-line messages for setup problems, and a clean exit."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import patch

import aiohttp
import discord
import pytest

import bot.__main__ as entry
from bot import doctor
from bot.settings import Settings
from tests.conftest import acknowledge_errors, image_bytes, make_settings
from tests.fakes import FakeEngine


def test_missing_token_prints_one_clear_line(capsys):
    assert entry.main({}) == entry.EXIT_CONFIG

    err = capsys.readouterr().err
    assert err.strip() == entry.MISSING_TOKEN_TEXT
    assert "DISCORD_TOKEN" in err and ".env" in err
    assert "Traceback" not in err


def test_bad_setting_prints_what_is_wrong(capsys):
    assert entry.main({"DISCORD_TOKEN": "x", "QUANTIZATION": "2bit"}) == entry.EXIT_CONFIG

    err = capsys.readouterr().err.strip()
    assert err.startswith("Configuration error: QUANTIZATION='2bit' is not valid")
    assert "\n" not in err


def test_every_bad_setting_gets_its_own_line(capsys):
    environ = {"DISCORD_TOKEN": "x", "NUM_CROPS": "99", "MAX_IMAGES": "0"}
    assert entry.main(environ) == entry.EXIT_CONFIG
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("Configuration error: ") for line in lines)
    assert any("NUM_CROPS='99'" in line for line in lines) and any("MAX_IMAGES='0'" in line for line in lines)


def test_check_with_a_misspelt_setting_is_ready_with_a_warning_not_plainly_ready(capsys):
    environ = {"DISCORD_TOKEN": FAKE_TOKEN, "MODEL_ID": TINY_MODEL, "DEVICE": "cpu", "MAX_IMAGE": "2"}
    assert entry.main(environ, ["--check", "--no-device"]) == entry.EXIT_OK
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0] == "[warn] settings: MAX_IMAGE is not a setting (did you mean MAX_IMAGES?); it is ignored"
    assert not any("read and valid" in line for line in out)
    assert out[-1] == "Ready to start, with 1 warning above."


def bot_whose_login_fails(monkeypatch, engine: FakeEngine, error: BaseException) -> list:
    built = []

    def fake_create_bot(settings):
        from bot.app import create_bot

        bot = create_bot(make_settings(discord_token=settings.discord_token), engine)

        async def refuse(token: str) -> None:
            raise error

        bot.http.static_login = refuse
        built.append(bot)
        return bot

    monkeypatch.setattr(entry, "create_bot", fake_create_bot)
    monkeypatch.setattr(entry, "configure_logging", lambda level: None)
    return built


def test_no_connection_to_discord_prints_one_clear_line(capsys, monkeypatch):
    engine = FakeEngine()
    built = bot_whose_login_fails(
        monkeypatch, engine, aiohttp.ClientConnectionError("Name or service not known")
    )

    assert entry.main({"DISCORD_TOKEN": "token"}) == entry.EXIT_STARTUP

    err = capsys.readouterr().err.strip()
    assert err.startswith(entry.NO_CONNECTION_TEXT) and "\n" not in err
    assert built[0].is_closed()


def test_a_rejected_token_prints_one_clear_line(capsys, monkeypatch):
    engine = FakeEngine()
    built = bot_whose_login_fails(
        monkeypatch, engine, discord.LoginFailure("Improper token has been passed.")
    )

    assert entry.main({"DISCORD_TOKEN": "not-a-real-token"}) == entry.EXIT_CONFIG

    err = capsys.readouterr().err
    assert err.strip() == entry.INVALID_TOKEN_TEXT
    assert "not-a-real-token" not in err
    assert built[0].is_closed()
    assert not engine.started


# ---------------------------------------------------------------- the command line


ROOT = Path(__file__).resolve().parents[2]
TINY_MODEL = str(ROOT / "tests" / "fixtures" / "phi3v-tiny" / "checkpoint")
# Shaped like a bot token (base64 of an id, a timestamp, an HMAC); not a real one.
FAKE_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GabcDE.abcdefghijklmnopqrstuvwxyz0123456789AB"


def test_help_explains_and_starts_nothing(capsys):
    with pytest.raises(SystemExit) as exit_:
        entry.main({}, ["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--check" in out and "--env-file" in out


def test_check_passes_for_a_good_set_up_and_never_prints_the_token(capsys):
    code = entry.main({"DISCORD_TOKEN": FAKE_TOKEN, "MODEL_ID": TINY_MODEL, "DEVICE": "cpu"}, ["--check"])
    out = capsys.readouterr().out
    assert "[ok  ] token: has the shape of a bot token for application 123456789012345678" in out
    assert (
        "[ok  ] invite: add the bot to a server: https://discord.com/oauth2/authorize?client_id=123456789012345678"
        in out
    )
    assert f"[ok  ] model: local folder {TINY_MODEL}" in out
    assert "CPU only" in out and "~0.0 GB" not in out and re.search(r"needs ~\d+ MB of RAM", out)
    # How long an answer takes here, from products at the published model's shapes timed on this CPU.
    assert re.search(r"\[ok  \] speed: roughly, one picture at \d+ crops: first words after ~\d+ s", out)
    assert "REQUEST_TIMEOUT_S=auto: " in out
    assert FAKE_TOKEN not in out and FAKE_TOKEN.split(".")[2] not in out
    assert code == entry.EXIT_OK
    assert out.strip().splitlines()[-1] == "Ready to start, with 1 warning above."  # the CPU's


def test_the_speed_estimate_names_the_crops_a_slow_cpu_uses_and_the_limit_it_sets():
    from inference.serving import pace

    slow = pace.Pace(crop_s=2.0, prompt_token_s=0.05, token_s=0.5)
    settings = Settings(model_id=TINY_MODEL, device="cpu", max_new_tokens=512)
    finding = doctor.check_cpu_speed(settings, doctor.forecast(settings, estimate=slow))
    assert finding.item == "speed" and finding.verdict == "ok"
    assert slow.summary(pace.CPU_CROPS, 512) in finding.detail
    assert f"REQUEST_TIMEOUT_S=auto: {slow.request_timeout_s(pace.CPU_CROPS, 512):.0f} s" in finding.detail
    assert f"NUM_CROPS={pace.CPU_CROPS}: a picture at 16 crops would take" in finding.detail
    told = Settings(model_id=TINY_MODEL, device="cpu", num_crops=16, request_timeout_s=900)
    told_finding = doctor.check_cpu_speed(told, doctor.forecast(told, estimate=slow))
    assert "at 16 crops" in told_finding.detail
    assert "NUM_CROPS=" not in told_finding.detail and "REQUEST_TIMEOUT_S" not in told_finding.detail
    refused = doctor.forecast(Settings(model_id=TINY_MODEL, device="cpu", quantization="4bit"))
    assert isinstance(refused, str) and doctor.check_cpu_speed(settings, refused) is None


def test_on_a_slow_cpu_check_counts_the_cache_at_the_crops_the_start_will_use(monkeypatch):
    from inference.serving import pace
    from inference.serving.block_pool import block_tokens_for
    from inference.serving.cache_size import full_request_tokens

    slow = pace.Pace(crop_s=2.0, prompt_token_s=0.05, token_s=0.5)
    settings = Settings(model_id=TINY_MODEL, device="cpu", max_batch_size=2)
    monkeypatch.setattr("inference.serving.forecast.available_ram", lambda: 64 * 1024**3)
    block = block_tokens_for("cpu")
    per_request = -(-full_request_tokens(pace.CPU_CROPS, settings.max_new_tokens) // block) * block
    finding = doctor.check_device(settings, estimate=slow)  # MAX_BATCH_SIZE people at 4 crops, no more
    assert f"about {2 * per_request} tokens, room for 2 people" in finding.detail


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "[FAIL] token: DISCORD_TOKEN is not set"),
        ({"DISCORD_TOKEN": "hunter2"}, "[FAIL] token: DISCORD_TOKEN does not look like a bot token"),
        (
            {"DISCORD_TOKEN": FAKE_TOKEN, "MODEL_ID": "./no/such/folder"},
            "[FAIL] model: MODEL_ID './no/such/folder'",
        ),
        (
            {"DISCORD_TOKEN": FAKE_TOKEN, "MODEL_ID": TINY_MODEL, "DEVICE": "cuda"},
            "[FAIL] device: DEVICE is set to cuda",
        ),
    ],
)
def test_check_fails_each_problem_with_its_reason(capsys, environ, expected):
    assert entry.main(environ, ["--check"]) == entry.EXIT_CHECK_FAILED
    out = capsys.readouterr().out
    assert expected in out and "hunter2" not in out
    assert ("[ok  ] invite:" in out) == ("[ok  ] token:" in out)  # a link only for a token that names its app
    assert out.strip().splitlines()[-1].startswith("Not ready")


def test_check_says_how_big_the_first_download_is(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("bot.doctor.hub_cache_dir", lambda: tmp_path)
    monkeypatch.setattr("bot.doctor._cached_bytes", lambda model_id: 0)
    entry.main({"DISCORD_TOKEN": FAKE_TOKEN, "DEVICE": "cpu"}, ["--check"])
    out = capsys.readouterr().out
    assert "[warn] model: microsoft/Phi-3-vision-128k-instruct is not downloaded yet" in out
    assert "~8.3 GB" in out and str(tmp_path) in out


@pytest.mark.parametrize(
    ("free_gb", "verdict", "advice"),
    [
        (60, "ok", "KV cache: TOKEN_BUDGET=98304 tokens fit"),
        # the weights fit, the cache would not: the start's own words
        (20, "fail", "set TOKEN_BUDGET to at most 23808, or TOKEN_BUDGET=auto."),
        (8, "fail", "use QUANTIZATION=8bit or 4bit"),  # not even the weights
    ],
)
def test_an_explicit_token_budget_is_weighed_against_the_gpu(free_gb, verdict, advice):
    settings = Settings(device="cuda", quantization="none", token_budget=98_304)  # ~8.3 + ~38.7 GB
    with (
        patch("torch.cuda.is_available", return_value=True),
        patch("torch.cuda.get_device_name", return_value="Some GPU"),
        patch("torch.cuda.is_bf16_supported", return_value=True),
        patch("inference.loading.quantization_config", return_value=None),  # as if bitsandbytes were here
    ):
        finding = doctor.check_device(settings, cuda_free=lambda: (free_gb * doctor.GB, 80 * doctor.GB))
    assert finding.verdict == verdict and advice in finding.detail


GIB = 1024**3


@pytest.mark.parametrize(
    ("card_gib", "quantization", "verdict", "detail"),
    [
        (16, "none", "ok", "KV cache (TOKEN_BUDGET=auto): about "),
        (8, "8bit", "ok", "room for 1 person at once"),
        (6, "4bit", "ok", "room for 1 person at once"),
        (10, "none", "fail", "one request with an image at the most crops and the longest answer needs 3045"),
    ],
)
def test_token_budget_auto_is_predicted_for_the_card(card_gib, quantization, verdict, detail):
    settings = Settings(device="cuda", quantization=quantization)
    free = int(card_gib * GIB - 0.5 * GIB)  # the CUDA context is in use already
    with (
        patch("torch.cuda.is_available", return_value=True),
        patch("torch.cuda.get_device_name", return_value="Some GPU"),
        patch("torch.cuda.is_bf16_supported", return_value=True),
        patch("inference.loading.quantization_config", return_value=None),  # as if bitsandbytes were here
    ):
        finding = doctor.check_device(settings, cuda_free=lambda: (free, card_gib * GIB))
    assert finding.verdict == verdict, finding.detail
    assert detail in finding.detail


def test_check_predicts_the_token_budget_the_cpu_start_takes(monkeypatch):
    from inference.loading import load
    from inference.serving.forecast import model_bytes
    from inference.serving.startup import start_runner

    settings = Settings(model_id=TINY_MODEL, device="cpu", quantization="none")  # full float32 weights
    after_load = 20 * 1024**2
    monkeypatch.setattr("inference.serving.startup.available_ram", lambda: after_load)
    runner = start_runner(load(settings.engine_config()), settings.engine_config())
    # What --check counts for the weights: the checkpoint's bf16 size, doubled in float32.
    weights = runner.loaded.dtype.itemsize / 2 * model_bytes(settings.model_id)
    monkeypatch.setattr("inference.serving.forecast.available_ram", lambda: int(after_load + weights))
    # The pace --check estimates is the one the start measured: timed on a busy machine (the tests run side by
    # side) the two could differ and choose different crops, which is not what this test is about.
    finding = doctor.check_device(settings, estimate=runner.pace)
    assert f"KV cache (TOKEN_BUDGET=auto): about {runner.token_budget} tokens" in finding.detail
    assert finding.verdict == "warn"  # the CPU always warns: answers are slower


def test_env_file_is_read_and_a_missing_one_is_one_line(capsys, tmp_path, monkeypatch):
    for name in ("DISCORD_TOKEN", "MODEL_ID", "DEVICE"):
        monkeypatch.delenv(name, raising=False)
    assert entry.main(None, ["--env-file", str(tmp_path / "missing.env"), "--check"]) == entry.EXIT_CONFIG
    assert (
        capsys.readouterr().err.strip()
        == f"Configuration error: the settings file {tmp_path / 'missing.env'} does not exist"
    )
    settings_file = tmp_path / "bot.env"
    settings_file.write_text(f"DISCORD_TOKEN={FAKE_TOKEN}\nMODEL_ID={TINY_MODEL}\nDEVICE=cpu\n")
    entry.main(None, ["--env-file", str(settings_file), "--check"])
    assert "[ok  ] token" in capsys.readouterr().out


def test_the_module_reads_its_command_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bot", "--check"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # no .env here
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DISCORD_TOKEN": "",
            "MODEL_ID": TINY_MODEL,
            "DEVICE": "cpu",
        },
        timeout=120,
    )
    assert done.returncode == entry.EXIT_CHECK_FAILED
    assert "[FAIL] token: DISCORD_TOKEN is not set" in done.stdout and "Traceback" not in done.stderr


@pytest.mark.parametrize(("script", "expected"), [("phi3v-bot", "--check"), ("phi3v", "describe")])
def test_the_console_scripts_are_installed(script, expected):
    path = Path(sys.executable).parent / script
    done = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and expected in done.stdout


async def test_every_log_line_of_a_request_carries_its_id(world, fake_engine):
    from bot.log_context import RequestIdFilter

    fake_engine.answer_next(RuntimeError("a bug"))  # logged by the error handler, in another task
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    handler.addFilter(RequestIdFilter())
    logging.getLogger("bot").addHandler(handler)
    try:
        message = await world.member.send(world.channel, "!describe", attachments=[("a.png", image_bytes())])
    finally:
        logging.getLogger("bot").removeHandler(handler)
    acknowledge_errors(world.env)
    [error] = [r for r in records if r.getMessage().startswith("Unexpected error")]
    assert error.request == f"m{message.id}"
    assert logging.Formatter(entry.LOG_FORMAT).format(error).count(f"[m{message.id}]") == 1


def test_the_container_files_use_what_the_bot_offers():
    import yaml

    dockerfile = (ROOT / "Dockerfile").read_text()
    [health] = [line for line in dockerfile.splitlines() if line.startswith("HEALTHCHECK")]
    command = json.loads(health.split("CMD", 1)[1])
    assert command[0] in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    args = entry.parse_args(command[1:])
    assert args.check and args.no_device
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    bot = compose["services"]["bot"]
    assert bot["env_file"] == ".env" and bot["volumes"] == ["bot-data:/data"]
    assert bot["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert ".env" in (ROOT / ".dockerignore").read_text().split()  # the token never goes into the image


def test_check_can_leave_out_the_device(capsys):
    environ = {"DISCORD_TOKEN": FAKE_TOKEN, "MODEL_ID": TINY_MODEL, "DEVICE": "cuda"}  # no GPU here
    assert entry.main(environ, ["--check", "--no-device"]) == entry.EXIT_OK
    assert "device" not in capsys.readouterr().out


def test_check_reads_the_database_without_changing_it(capsys, tmp_path):
    base = {"DISCORD_TOKEN": FAKE_TOKEN, "MODEL_ID": TINY_MODEL, "DEVICE": "cpu"}
    new = tmp_path / "new" / "bot.sqlite3"
    assert entry.main({**base, "DATABASE_PATH": str(new)}, ["--check"]) == entry.EXIT_OK
    assert f"[ok  ] database: {new} will be created at the first start" in capsys.readouterr().out
    assert not new.exists()  # --check changes nothing

    damaged = tmp_path / "damaged.sqlite3"
    damaged.write_bytes(b"not a database" * 100)
    assert entry.main({**base, "DATABASE_PATH": str(damaged)}, ["--check"]) == entry.EXIT_CHECK_FAILED
    assert "[FAIL] database: The database file" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("compiler", "verdict", "words"),
    [
        ("/usr/bin/cc", "ok", "its kernel launcher can be built (/usr/bin/cc"),
        (None, "warn", "Triton cannot build its kernel launcher without a C compiler"),
    ],
)
def test_check_says_whether_triton_can_build_its_launcher_on_an_nvidia_gpu(
    monkeypatch, compiler, verdict, words
):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr("shutil.which", lambda name: compiler)
    with patch("torch.cuda.is_available", return_value=True):
        finding = doctor.check_triton(Settings(device="auto"))
    assert finding is not None and finding.verdict == verdict and words in finding.detail
    if verdict == "warn":
        assert "apt-get install gcc python3-dev" in finding.detail and "plain one" in finding.detail
    with patch("torch.cuda.is_available", return_value=False):
        assert doctor.check_triton(Settings(device="auto")) is None  # no NVIDIA GPU: nothing to say
    assert doctor.check_triton(Settings(device="cpu")) is None


def test_the_image_brings_a_c_compiler_for_triton():
    dockerfile = (ROOT / "Dockerfile").read_text()
    install = next(line for line in dockerfile.splitlines() if "apt-get install" in line)
    assert "gcc" in install.split() and "libc6-dev" in install.split()


class DiscordStandIn:
    """Discord's side of a start, without the network: the login and the application's details are answered
    here, and connecting (the gateway) is only noted. Everything the bot does before that is real."""

    def __init__(self, monkeypatch) -> None:
        self.connected = False
        stand_in = self

        async def static_login(http, token):
            return {"id": "1", "username": "bot", "discriminator": "0", "avatar": None, "bot": True}

        async def application_info(client):
            return SimpleNamespace(id=1, interactions_endpoint_url=None, flags=discord.ApplicationFlags())

        async def connect(client, *, reconnect=True):
            stand_in.connected = True

        monkeypatch.setattr(discord.http.HTTPClient, "static_login", static_login)
        monkeypatch.setattr(discord.Client, "application_info", application_info)
        monkeypatch.setattr(discord.Client, "connect", connect)


BAD_SETTINGS = {
    "database folder that cannot be made": {"DATABASE_PATH": "/proc/no-such/bot.sqlite3"},
    "4-bit weights without CUDA": {"QUANTIZATION": "4bit"},
    "flash attention without CUDA": {"ATTN_IMPLEMENTATION": "flash_attention_2"},
    "a CUDA device on a machine without one": {"DEVICE": "cuda"},
    "offline with the model not downloaded": {
        "MODEL_ID": "microsoft/Phi-3-vision-128k-instruct",
        "OFFLINE": "1",
    },
}


@pytest.mark.parametrize("case", BAD_SETTINGS)
def test_check_and_the_real_start_refuse_bad_settings_in_the_same_words(case, monkeypatch, tmp_path, capsys):
    """The real start (database, engine, up to connecting; Discord's side a stand-in) and --check on the same
    settings: both refuse, and --check's [FAIL] line carries the start's own words."""
    from huggingface_hub import constants

    environ = {
        "DISCORD_TOKEN": FAKE_TOKEN,
        "MODEL_ID": TINY_MODEL,
        "DEVICE": "cpu",
        "DATABASE_PATH": str(tmp_path / "data" / "bot.sqlite3"),
        "SYNC_COMMANDS": "false",
        "LOG_LEVEL": "WARNING",
    }
    environ.update(BAD_SETTINGS[case])
    if environ.pop("OFFLINE", None):
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    discord_side = DiscordStandIn(monkeypatch)
    assert entry.main(environ, []) == entry.EXIT_STARTUP
    started = capsys.readouterr().err.strip().splitlines()[-1]
    assert not discord_side.connected
    words = started.removeprefix("Could not start the model: ")

    assert entry.main(environ, ["--check"]) == entry.EXIT_CHECK_FAILED
    failed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[FAIL]")]
    # The published model's case may also fail the device line where RAM is short (the start's words too).
    assert any(line.endswith(words) for line in failed), (failed, words)


def test_the_real_start_with_good_settings_reaches_discord(monkeypatch, tmp_path, capsys):
    """The stand-in lets a good start through: the table's refusals are the settings', not the harness's."""
    environ = {
        "DISCORD_TOKEN": FAKE_TOKEN,
        "MODEL_ID": TINY_MODEL,
        "DEVICE": "cpu",
        "DATABASE_PATH": str(tmp_path / "bot.sqlite3"),
        "SYNC_COMMANDS": "false",
        "LOG_LEVEL": "WARNING",
    }
    discord_side = DiscordStandIn(monkeypatch)
    assert entry.main(environ, []) == entry.EXIT_OK
    assert discord_side.connected
    assert entry.main(environ, ["--check"]) == entry.EXIT_OK


def test_debug_logging_leaves_the_model_clients_at_info(monkeypatch):
    import logging

    from bot.__main__ import configure_logging

    loggers = [logging.getLogger(name) for name in ("discord", "openai", "httpx2", "httpcore2")]
    for logger in loggers:
        monkeypatch.setattr(logger, "level", logger.level)  # put back after the test
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)  # pytest owns the root handlers

    configure_logging("DEBUG")

    assert {logger.level for logger in loggers} == {logging.INFO}  # openai's DEBUG lines carry the images


def test_check_warns_about_a_misspelt_setting_and_still_starts(capsys, tmp_path, monkeypatch):
    for name in ("DISCORD_TOKEN", "MODEL_ID", "DEVICE", "TOKEN_BUDGT"):
        monkeypatch.delenv(name, raising=False)
    settings_file = tmp_path / "bot.env"
    settings_file.write_text(f"DISCORD_TOKEN={FAKE_TOKEN}\nMODEL_ID={TINY_MODEL}\nTOKEN_BUDGT=100\n")

    code = entry.main(None, ["--env-file", str(settings_file), "--check", "--no-device"])

    out = capsys.readouterr().out
    assert "[warn] settings: TOKEN_BUDGT is not a setting (did you mean TOKEN_BUDGET?); it is ignored" in out
    assert code == entry.EXIT_OK


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("!", "[ok  ] intents: asks for Message Content (prefix commands, replies about others' pictures"),
        ("", "[ok  ] intents: without Message Content (COMMAND_PREFIX is blank): slash commands"),
    ],
)
def test_check_says_what_the_intent_set_up_leaves_out(capsys, prefix, expected):
    environ = {"DISCORD_TOKEN": FAKE_TOKEN, "MODEL_ID": TINY_MODEL, "COMMAND_PREFIX": prefix}
    assert entry.main(environ, ["--check", "--no-device"]) == entry.EXIT_OK
    out = capsys.readouterr().out
    assert expected in out
    assert ("automatic alt text do not" in out) is (prefix == "")


@pytest.mark.parametrize(
    ("url", "verdict"),
    [
        ("http://127.0.0.1:8000/v1", "ok  "),
        ("http://localhost:8000/v1", "ok  "),
        ("http://[::1]:8000/v1", "ok  "),
        ("https://gpu.example.net/v1", "ok  "),
        ("http://gpu.example.net:8000/v1", "warn"),
        ("http://10.0.0.5:8000/v1", "warn"),
    ],
)
def test_check_warns_of_a_model_server_over_plain_http_on_another_machine(capsys, url, verdict):
    environ = {"DISCORD_TOKEN": FAKE_TOKEN, "BACKEND": "remote", "REMOTE_URL": url}
    entry.main(environ, ["--check", "--no-device"])
    [line] = [line for line in capsys.readouterr().out.splitlines() if "model server:" in line]
    assert line.startswith(f"[{verdict}] model server:")
    assert ("unencrypted" in line) is (verdict == "warn")


def test_check_says_how_the_cpu_multiplies_by_8bit_weights_as_the_start_measures_it():
    settings = Settings(device="cpu", model_id=TINY_MODEL, quantization="8bit")
    finding = doctor.check_cpu_products(settings)
    assert finding is not None and finding.verdict == "ok"
    assert finding.line().startswith("[ok  ] products: measured here: layers with a dense copy: the int8")
    assert doctor.check_cpu_products(Settings(device="cpu", model_id=TINY_MODEL, quantization="none")) is None
