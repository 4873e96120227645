"""Choosing device, precision and attention, and finding checkpoints, with plain-word errors."""

from __future__ import annotations

import logging

import pytest
import torch

from inference.errors import InvalidRequest, ModelNotFound
from inference.loading import (
    configure_attention_kernels,
    quantization_config,
    resolve_attention,
    resolve_checkpoint,
    resolve_device,
    resolve_dtype,
)
from inference.types import EngineConfig
from tests.inference.conftest import TINY_CHECKPOINT

CPU = torch.device("cpu")


def test_default_configuration_runs_the_published_model():
    assert EngineConfig().model_id == "microsoft/Phi-3-vision-128k-instruct"


def test_auto_device_and_precision_on_a_cpu_machine():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the CPU defaults are what is checked here")
    from inference.loading import cpu_computes_bf16

    assert resolve_device("auto") == CPU
    assert resolve_dtype("auto", CPU) == (torch.bfloat16 if cpu_computes_bf16() else torch.float32)
    assert resolve_attention("auto", CPU) == "sdpa"


@pytest.mark.parametrize(
    "amx, avx512_bf16, expected",
    [(True, False, torch.bfloat16), (False, True, torch.bfloat16), (False, False, torch.float32)],
)
def test_auto_precision_on_the_cpu_is_bf16_only_where_the_cpu_computes_it(
    monkeypatch, amx, avx512_bf16, expected
):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert resolve_dtype("auto", CPU) == expected
    assert resolve_dtype("float32", CPU) == torch.float32  # an explicit choice always wins


def test_explicit_choices():
    assert resolve_dtype("bf16", CPU) == torch.bfloat16
    assert resolve_dtype("float16", CPU) == torch.float16
    assert resolve_attention("eager", CPU) == "eager"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: resolve_device("tpu9"), "Unknown device"),
        (lambda: resolve_dtype("int3", CPU), "Unknown dtype"),
        (lambda: resolve_attention("magic", CPU), "Unknown attention"),
        (lambda: resolve_attention("flash_attention_2", CPU), "flash-attn"),
        (lambda: quantization_config("4bit", torch.float16, CPU), "CUDA GPU"),
        (lambda: quantization_config("3bit", torch.float16, CPU), "Unknown quantization"),
    ],
)
def test_bad_settings_are_explained(call, message):
    with pytest.raises(InvalidRequest, match=message):
        call()


@pytest.fixture
def restore_cudnn_sdp():
    enabled = torch.backends.cuda.cudnn_sdp_enabled()
    yield
    torch.backends.cuda.enable_cudnn_sdp(enabled)


def test_cudnn_attention_is_switched_off_for_cuda_only(restore_cudnn_sdp):
    # cuDNN's sdpa re-plans for every new key length: ~45 ms of CPU per decoding step measured on an H100.
    torch.backends.cuda.enable_cudnn_sdp(True)
    configure_attention_kernels(CPU)
    assert torch.backends.cuda.cudnn_sdp_enabled()
    configure_attention_kernels(torch.device("cuda"))
    assert not torch.backends.cuda.cudnn_sdp_enabled()
    assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()


def test_cuda_requested_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(InvalidRequest, match="no CUDA GPU"):
        resolve_device("cuda")


def test_checkpoint_folders(tmp_path):
    assert resolve_checkpoint(str(TINY_CHECKPOINT)) == TINY_CHECKPOINT
    with pytest.raises(ModelNotFound, match="no config.json"):
        resolve_checkpoint(str(tmp_path))
    with pytest.raises(ModelNotFound, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "missing"))
    with pytest.raises(ModelNotFound, match="does not exist"):
        resolve_checkpoint("not/a/hub/id")
    assert quantization_config("none", torch.float16, CPU) is None


def test_automatic_quantization_is_8bit_on_a_cpu_and_none_elsewhere():
    from inference.loading import CpuInt8, resolve_quantization

    assert resolve_quantization("auto", CPU) == "8bit"
    assert isinstance(quantization_config("auto", torch.float32, CPU), CpuInt8)
    assert resolve_quantization("auto", torch.device("cuda")) == "none"
    assert resolve_quantization("auto", torch.device("mps")) == "none"
    assert resolve_quantization("NONE", CPU) == "none"


def test_the_weight_loading_bar_shows_only_when_debugging(capsys, caplog):
    from transformers.utils import logging as transformers_logging

    from inference.loading import load

    config = EngineConfig(model_id=str(TINY_CHECKPOINT), device="cpu")
    with caplog.at_level(logging.INFO, logger="inference.loading"):
        load(config)
    assert "Loading weights" not in capsys.readouterr().err
    assert transformers_logging.is_progress_bar_enabled()  # restored for everyone else


def test_a_first_download_is_announced_with_its_size_and_place(monkeypatch, tmp_path, caplog):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from inference.loading import resolve_checkpoint

    calls = []

    def snapshot_download(repo_id, *, allow_patterns, local_files_only=False):
        calls.append(local_files_only)
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    with caplog.at_level(logging.INFO, logger="inference.loading"):
        assert resolve_checkpoint("microsoft/Phi-3-vision-128k-instruct") == tmp_path
    assert calls == [True, False]
    assert "Downloading microsoft/Phi-3-vision-128k-instruct (~8.3 GB) into" in caplog.text
    assert "this happens once" in caplog.text


def test_a_cached_model_is_not_announced(monkeypatch, tmp_path, caplog):
    import huggingface_hub

    from inference.loading import resolve_checkpoint

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: str(tmp_path))
    with caplog.at_level(logging.INFO, logger="inference.loading"):
        assert resolve_checkpoint("microsoft/Phi-3-vision-128k-instruct") == tmp_path
    assert "Downloading" not in caplog.text


def test_loading_ends_with_one_line_that_sums_it_up_and_warns_on_the_cpu(caplog):
    from inference.loading import load

    config = EngineConfig(
        model_id=str(TINY_CHECKPOINT), device="cpu", dtype="float32", max_batch_size=8, token_budget=24_576
    )
    with caplog.at_level(logging.INFO, logger="inference.loading"):
        load(config)
    ready = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Model ready")]
    # QUANTIZATION=auto on the CPU: the language model in 8 bits.
    assert ready == ["Model ready on cpu (float32, the language model's weights in 8 bits, sdpa attention)"]
    assert any(
        r.levelname == "WARNING" and "tens of seconds to minutes" in r.getMessage() for r in caplog.records
    )
