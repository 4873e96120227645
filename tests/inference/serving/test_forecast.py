"""The start's decisions forecast without loading the model (what ``python -m bot --check`` reports)."""

from __future__ import annotations

import pytest
import torch

from inference.errors import InvalidRequest
from inference.kernels.paged_cache import PagedStorage
from inference.serving import forecast as forecast_module
from inference.serving.forecast import ACTIVATIONS_BYTES, forecast_start, kv_bytes_per_token
from inference.serving.pace import Pace
from inference.types import EngineConfig
from tests.inference.conftest import TINY_CHECKPOINT

GIB = 1024**3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_kv_bytes_are_what_the_cache_stores_for_the_checkpoint(dtype):
    from inference.loading import load
    from inference.serving.startup import start_runner

    config = EngineConfig(model_id=str(TINY_CHECKPOINT), device="cpu", quantization="none", token_budget=2048)
    runner = start_runner(load(config), config)
    stored = PagedStorage.bytes_per_token(runner.num_layers, runner.kv_heads, runner.head_dim, dtype)
    assert kv_bytes_per_token(str(TINY_CHECKPOINT), dtype) == stored


def test_a_checkpoint_without_a_local_config_is_counted_as_the_published_model():
    assert kv_bytes_per_token("microsoft/Phi-3-vision-128k-instruct", torch.bfloat16) == 393_216  # 384 KiB


def test_the_cpu_forecast_reads_at_the_crops_the_pace_allows_and_sizes_the_cache(monkeypatch):
    monkeypatch.setattr(forecast_module, "available_ram", lambda: 64 * GIB)
    slow = Pace(crop_s=2.0, prompt_token_s=0.05, token_s=0.5)
    config = EngineConfig(device="cpu", max_batch_size=2)
    expected = forecast_start(config, pace=slow)
    assert expected.quantization == "8bit" and expected.loading_bytes > expected.weights_bytes
    assert 0 < expected.dense_bytes <= expected.loading_bytes  # the 8-bit layers' dense copies, RAM to spare
    assert expected.checkpoint_crops == 16 and expected.crops < 16 and expected.fewer_crops_text()
    assert expected.weights_fit and expected.people == 2 and expected.cache_problem is None


def test_a_gpu_too_small_for_the_weights_gets_no_cache_and_one_too_small_for_the_cache_its_reason(
    monkeypatch,
):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda: True)
    config = EngineConfig(device="cuda", quantization="none")
    small = forecast_start(config, gpu_memory=lambda device: (6 * GIB, 8 * GIB))
    assert small.weights_fit is False and small.token_budget is None and small.cache_problem is None
    weights = small.weights_bytes
    tight = int(weights + ACTIVATIONS_BYTES + 0.2 * GIB)
    short = forecast_start(config, gpu_memory=lambda device: (tight, tight))
    assert short.weights_fit and short.token_budget is None and "one request" in (short.cache_problem or "")


def test_device_settings_that_cannot_work_here_are_refused_in_the_starts_words():
    with pytest.raises(InvalidRequest, match="4bit"):
        forecast_start(EngineConfig(device="cpu", quantization="4bit"))
