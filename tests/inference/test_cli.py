"""``python -m inference``: answers with the tiny checkpoint, one clear line for every bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inference.__main__ import main
from tests.conftest import image_bytes, png_header_only
from tests.inference.conftest import TINY, TINY_CHECKPOINT

ROOT = Path(__file__).resolve().parents[2]
IMAGE = str(TINY / "images" / "rgba_500x300.png")
MODEL = ["--model", str(TINY_CHECKPOINT), "--device", "cpu", "--max-new-tokens", "4"]


def test_describe_streams_an_answer(capsys):
    assert main(["describe", IMAGE, "--question", "What is this?", *MODEL]) == 0
    assert capsys.readouterr().out.strip()


def test_ocr_and_compare_answer(capsys):
    assert main(["ocr", IMAGE, *MODEL]) == 0
    assert main(["compare", IMAGE, str(TINY / "images" / "gray_640x480.png"), *MODEL]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_missing_file(capsys):
    assert main(["describe", "nope.png", *MODEL]) == 2
    assert capsys.readouterr().err.strip() == "error: nope.png: no such file"


def test_file_that_is_not_an_image(capsys):
    assert main(["ocr", str(ROOT / "pyproject.toml"), *MODEL]) == 2
    err = capsys.readouterr().err.strip()
    assert "not an image" in err and len(err.splitlines()) == 1


def test_compare_needs_two_images(capsys):
    assert main(["compare", IMAGE, *MODEL]) == 2
    assert "at least 2 images" in capsys.readouterr().err


def test_compare_takes_at_most_as_many_images_as_the_bot_before_anything_is_read(capsys):
    from inference.types import EngineConfig

    limit = EngineConfig.max_images
    assert main(["compare", *[IMAGE] * (limit + 1), "--model", "./no-such-model"]) == 2  # before loading
    err = capsys.readouterr().err.strip()
    assert err == f"error: compare takes at most {limit} images (as the bot does by default)"


def test_an_empty_file_is_said_to_be_empty(capsys, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert main(["describe", str(empty), *MODEL]) == 2
    assert capsys.readouterr().err.strip() == f"error: {empty}: the file is empty"


def test_a_device_that_is_not_here_is_named_by_the_flag_typed(capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["describe", IMAGE, *MODEL[:2], "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --device cuda but PyTorch sees no CUDA GPU") and "DEVICE" not in err


def test_missing_model_folder(capsys):
    assert main(["describe", IMAGE, "--model", "./no-such-model"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_hub_model_offline_and_not_cached(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "inference",
            "describe",
            IMAGE,
            "--model",
            "microsoft/Phi-3-vision-128k-instruct",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 2
    assert "not in the local Hugging Face cache" in done.stderr
    assert "Traceback" not in done.stderr


# -- every bad input is one line and a non-zero exit --------------------------------------------


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_decompression_bomb_is_refused_in_one_line(capsys, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(9_000, 9_000))
    assert main(["describe", str(bomb), *MODEL]) == 2
    assert (
        one_error_line(capsys)
        == f"error: {bomb}: it is 9000×9000 pixels; the limit is 40,000,000 pixels in total"
    )


def test_a_folder_is_not_an_image_file(capsys, tmp_path):
    assert main(["ocr", str(tmp_path), *MODEL]) == 2
    assert one_error_line(capsys) == f"error: {tmp_path}: is a folder, not an image file"


def test_a_truncated_image_is_damaged(capsys, tmp_path):
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(image_bytes((400, 300), color="white")[:200])
    assert main(["describe", str(truncated), *MODEL]) == 2
    assert "damaged or incomplete" in one_error_line(capsys)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--num-crops", "0", "0 is out of range (from 1 to 16)"),
        ("--num-crops", "99", "99 is out of range (from 1 to 16)"),
        ("--num-crops", "four", "'four' is not a whole number"),
        ("--max-new-tokens", "0", "0 is out of range (from 1 to 4096)"),
    ],
)
def test_values_out_of_range_are_one_line(capsys, option, value, message):
    with pytest.raises(SystemExit) as exit_:
        main(["describe", IMAGE, *MODEL, option, value])
    assert exit_.value.code == 2
    line = one_error_line(capsys)
    assert message in line and option in line


CTRL_C_DRIVER = """
import sys, time
import inference.loading
from inference.__main__ import cli

def slow_load(config):  # stands in for a multi-GB download: busy in the model thread for a minute
    print("loading", file=sys.stderr, flush=True)
    time.sleep(60)

inference.loading.load = slow_load
sys.argv = ["phi3v", "describe", sys.argv[1], "--model", sys.argv[2]]
cli()
"""


def in_a_terminal() -> None:
    """Ctrl-C as a terminal delivers it: a shell runs background jobs (a CI script's `cmd &`) with SIGINT
    ignored, and a process started from one inherits that; the command line is started from a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_a_slow_load_ends_within_two_seconds_without_a_traceback():
    process = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_DRIVER, IMAGE, str(TINY_CHECKPOINT)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=in_a_terminal,
    )
    try:
        assert process.stderr.readline().strip() == "loading"  # the load has started in its thread
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=10)
        took = time.monotonic() - started
        err = process.stderr.read()
    finally:
        process.kill()
    assert code == 130 and took < 2.0, (code, took, err)
    assert "Traceback" not in err and err.strip() == "Stopped."


def test_max_new_tokens_is_capped_like_the_bots_before_anything_loads(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["describe", IMAGE, "--model", str(TINY_CHECKPOINT), "--max-new-tokens", "24000"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: argument --max-new-tokens: 24000 is out of range (from 1 to 4096)")


def test_an_engine_refusal_is_worded_for_the_person_at_the_terminal(capsys, monkeypatch):
    from inference.errors import TooLarge

    async def too_large(args):
        raise TooLarge(30_000, 24_576)

    monkeypatch.setattr("inference.__main__.answer", too_large)
    assert main(["describe", IMAGE, *MODEL]) == 2
    err = capsys.readouterr().err.strip()
    assert "server" not in err and err.startswith("error: this request does not fit in the KV cache")
