"""What the start would decide on this machine, estimated without loading the model.

:func:`forecast_start` answers from the settings, the checkpoint's files and the memory free now: the device
and precision, what the weights take, the crops pictures will be read at (fewer on a slow CPU), a CPU's pace
estimated from products at the model's shapes, and the KV cache's size, or the start's own words when it
would not fit. ``python -m bot --check`` words it for the owner; the start then measures what this estimates
(the weights as loaded, the activations' peak, the CPU's real pace).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from inference.kernels.paged_cache import PagedStorage
from inference.loading import resolve_choices, resolve_quantization
from inference.serving import pace as pace_module
from inference.serving.block_pool import block_tokens_for
from inference.serving.cache_size import (
    DENSE_RAM_SHARE,
    CacheDoesNotFit,
    CacheShape,
    available_ram,
    cpu_budget,
    explicit_budget_problem,
    full_request_tokens,
    gpu_budget,
)
from inference.serving.pace import Pace
from inference.types import PUBLISHED_WEIGHT_BYTES, EngineConfig

GB = 10**9
PUBLISHED_MODEL_BYTES = 8.3 * GB  # a checkpoint of unknown size is taken to be as large as the published one
# The weights' share of their bf16 size per mode on a GPU (docs/gpu.md, "GPU memory": 8.3, 4.7 and 3.2 GB).
WEIGHTS_SHARE = {"none": 1.0, "8bit": 4.7 / 8.3, "4bit": 3.2 / 8.3}
# The language model's linear layers' share of Phi-3-vision's weights (3.62 of 4.15 billion): what 8-bit
# rounds on the CPU; the vision tower, embeddings and lm_head keep the model's precision.
LINEAR_SHARE = 0.872
PUBLISHED_WIDTHS = (3072, 8192)  # Phi-3-vision's hidden size and its MLP's (gate and up: 2 x 8192 rows)
PUBLISHED_ATTENTION = (32, 32, 96)  # Phi-3-vision's layers, key/value heads and head size
# Activations' peak: the vision tower on MAX_IMAGES images at 16 crops and one 2,048-token prefill chunk. An
# estimate; the start measures it itself (a warm-up) before sizing the cache.
ACTIVATIONS_BYTES = int(0.6 * 1024**3)
DEFAULT_NUM_CROPS = 16  # the published Phi-3-vision's preprocessor setting


@dataclass(frozen=True)
class Forecast:
    """What the start would decide here (memory in bytes)."""

    device: torch.device
    dtype: torch.dtype
    quantization: str  # none | 8bit | 4bit, as the start resolves it
    weights_bytes: float  # the weights once loaded
    loading_bytes: float  # the most the weights take while loading (8-bit on a CPU: bf16 first)
    free_bytes: int | None  # GPU memory free now, or the RAM available; None when unknown
    total_bytes: int | None  # the GPU's memory (None elsewhere)
    pace: Pace | None  # a CPU's estimated speed
    crops: int  # the crops pictures will be read at
    checkpoint_crops: int  # the crops the checkpoint asks for
    token_budget: int | None  # KV-cache tokens; None when the weights do not fit or memory is unknown
    people: int | None  # full requests the cache holds at once (None with an explicit TOKEN_BUDGET)
    cache_problem: str | None  # the start's own words when the cache would not fit
    dense_bytes: float = 0.0  # a CPU's dense copies of its 8-bit weights for prompts (RAM they may take)

    def fewer_crops_text(self) -> str | None:
        """Why a slow CPU reads pictures at fewer crops than the checkpoint asks; None when it does not."""
        if self.pace is None or self.crops >= self.checkpoint_crops:
            return None
        return pace_module.fewer_crops_text(self.pace, self.checkpoint_crops, self.crops)

    @property
    def weights_fit(self) -> bool | None:
        """Whether the weights (and, on a GPU, the activations) fit in the free memory; None when unknown."""
        if self.free_bytes is None:
            return None
        if self.device.type == "cuda":
            return self.free_bytes >= self.weights_bytes + ACTIVATIONS_BYTES
        return self.free_bytes >= max(self.weights_bytes, self.loading_bytes)


def forecast_start(
    config: EngineConfig,
    *,
    gpu_memory: Callable[[torch.device], tuple[int, int] | None] | None = None,
    pace: Pace | None = None,
) -> Forecast:
    """What the start would decide here, without loading the model.

    Raises ``InvalidRequest`` when the device settings cannot work here, in the start's own words.
    ``gpu_memory(device)`` gives (free, total) bytes (default: CUDA's own figures); ``pace`` stands in for
    the CPU's estimated pace (default: :func:`estimate_pace`)."""
    device, dtype, *_ = resolve_choices(config)
    quantization = resolve_quantization(config.quantization, device)
    published = model_bytes(config.model_id)
    asked = checkpoint_crops(config.model_id)
    total: int | None = None
    estimate: Pace | None = None
    dense = 0.0
    if device.type == "cuda":
        memory = (gpu_memory or _cuda_memory)(device)
        free, total = memory if memory is not None else (None, None)
        weights = loading = published * WEIGHTS_SHARE[quantization]
        crops = config.num_crops or asked
    else:
        free = available_ram() if device.type == "cpu" else None
        weights = dtype.itemsize / 2 * published  # checkpoints are in bf16
        loading = weights
        if quantization == "8bit":  # loaded in bf16, then the language model's layers become int8
            weights = published * (LINEAR_SHARE / 2 + (1 - LINEAR_SHARE) * dtype.itemsize / 2)
            loading = published
            if free is not None and free > weights:  # dense copies for prompts, in the share they may take
                dense = min(published * LINEAR_SHARE * dtype.itemsize / 2, DENSE_RAM_SHARE * (free - weights))
        if device.type == "cpu":
            estimate = pace or estimate_pace(config)
        crops = config.num_crops or asked
        if estimate is not None:
            crops = pace_module.crops_for(estimate, config.num_crops, asked)
    forecast = Forecast(
        device, dtype, quantization, weights, loading, free, total, estimate, crops, asked, None, None, None
    )
    forecast = replace(forecast, dense_bytes=dense)
    if free is None or device.type == "mps" or not forecast.weights_fit:
        return forecast
    return _with_cache(forecast, config, int(free - weights - dense))


def _with_cache(forecast: Forecast, config: EngineConfig, free_after_weights: int) -> Forecast:
    """``forecast`` with the KV cache the start would size in ``free_after_weights`` bytes."""
    block_tokens = block_tokens_for(forecast.device.type)
    shape = CacheShape(kv_bytes_per_token(config.model_id, forecast.dtype), block_tokens)
    full = full_request_tokens(forecast.crops, config.max_new_tokens)
    on_gpu = forecast.device.type == "cuda"
    if config.token_budget is not None:
        problem = explicit_budget_problem(shape, config.token_budget, free_after_weights) if on_gpu else None
        return replace(forecast, token_budget=config.token_budget, cache_problem=problem)
    try:
        if on_gpu:
            budget = gpu_budget(
                shape,
                total=forecast.total_bytes or 0,
                free=free_after_weights,
                activation_peak=ACTIVATIONS_BYTES,
                fraction=config.gpu_memory_fraction,
                full_request_tokens=full,
            )
        else:
            budget = cpu_budget(
                shape, free_ram=free_after_weights, full_request_tokens=full, max_rows=config.max_batch_size
            )
    except CacheDoesNotFit as error:
        return replace(forecast, cache_problem=str(error))
    people = min(budget // (-(-full // block_tokens) * block_tokens), config.max_batch_size)
    return replace(forecast, token_budget=budget, people=people)


def estimate_pace(config: EngineConfig) -> Pace | None:
    """On the CPU, the pace the start will measure, estimated from products at the model's shapes (a second
    or two); None elsewhere. Raises ``InvalidRequest`` when the device settings cannot work here."""
    device, dtype, *_ = resolve_choices(config)
    if device.type != "cpu":
        return None
    int8 = resolve_quantization(config.quantization, device) == "8bit"
    return pace_module.from_products(dtype, int8=int8)


def product_choice(config: EngineConfig) -> list[str] | None:
    """On a CPU with 8-bit weights, how the start would multiply (:func:`inference.kernels.cpu_int8.
    choose_products`), measured here on a random 8-bit layer of the model's largest shape (its MLP's first
    product) with a dense copy; None elsewhere. A few seconds."""
    from torch import nn

    from inference.kernels.cpu_int8 import DequantScratch, Int8Linear, choose_products, keep_dense_weights

    device, dtype, *_ = resolve_choices(config)
    if device.type != "cpu" or resolve_quantization(config.quantization, device) != "8bit":
        return None
    hidden, inner = model_widths(config.model_id)
    layers = nn.Sequential(Int8Linear.rounding(nn.Linear(hidden, 2 * inner, bias=False), DequantScratch()))
    keep_dense_weights(layers, hidden * 2 * inner * dtype.itemsize, dtype)
    return choose_products(layers, dtype)


def model_widths(model_id: str) -> tuple[int, int]:
    """The model's width and its MLP's: a local checkpoint's config.json, else the published model's."""
    try:
        config = json.loads((Path(model_id).expanduser() / "config.json").read_text())
        return int(config["hidden_size"]), int(config["intermediate_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return PUBLISHED_WIDTHS


def checkpoint_crops(model_id: str) -> int:
    """The crops the checkpoint asks for: a local folder's ``preprocessor_config.json``, else the
    published 16."""
    config_file = Path(model_id).expanduser() / "preprocessor_config.json"
    try:
        return int(json.loads(config_file.read_text()).get("num_crops", DEFAULT_NUM_CROPS))
    except (OSError, ValueError, TypeError, AttributeError):
        return DEFAULT_NUM_CROPS


def kv_bytes_per_token(model_id: str, dtype: torch.dtype) -> int:
    """Keys and values of one token in every layer, as the cache stores them: from a local checkpoint's
    config.json, else the published model's."""
    config_file = Path(model_id).expanduser() / "config.json"
    try:
        config = json.loads(config_file.read_text())
        heads = config["num_attention_heads"]
        shape = (
            config["num_hidden_layers"],
            config.get("num_key_value_heads") or heads,
            config.get("head_dim") or config["hidden_size"] // heads,
        )
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        shape = PUBLISHED_ATTENTION
    return PagedStorage.bytes_per_token(*shape, dtype)


def model_bytes(model_id: str) -> float:
    """The weights' size as published (bf16): a local folder's files, a known hub model's, else ~8.3 GB."""
    local = Path(model_id).expanduser()
    if local.is_dir():
        return float(sum(path.stat().st_size for path in local.glob("*.safetensors")))
    return float(PUBLISHED_WEIGHT_BYTES.get(model_id, PUBLISHED_MODEL_BYTES))


def _cuda_memory(device: torch.device) -> tuple[int, int] | None:
    free, total = torch.cuda.mem_get_info(device)
    return int(free), int(total)
