"""A runner assembled on this device: every fast path checked against the plain one before it is used, the
CPU's pace measured, the KV cache sized, CUDA graphs captured and replayed against eager steps. The runner
(``runner.py``) is then the hot path alone; what was decided here reaches it as :class:`Decisions`.

    weights loaded ──► attention backends checked, the fastest correct chosen (kernels/attention_backends.py)
               ──► the fused RMSNorm, rotary embedding and mask-free chunks checked, each used if it agrees
               ──► on a CPU: dense copies of the 8-bit weights where memory allows, its pace measured, fewer
                   crops where the checkpoint's would be too slow
               ──► the KV cache sized (TOKEN_BUDGET, or what memory is left after a warm-up on CUDA)
               ──► the runner built ──► on CUDA: graphs captured and checked ──► on a CPU: a step timed
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable

import torch
from PIL import Image

from inference.kernels.attention_backends import check_causal_bias, choose_backend, triton_runs_here
from inference.kernels.fused_attention import check_fused_rope, use_fused_rope
from inference.kernels.norms import check_fused_norm, use_fused_norms
from inference.kernels.paged_cache import PagedStorage
from inference.loading import LoadedModel
from inference.prepare import Prepared, Preparer
from inference.serving import pace
from inference.serving.block_pool import block_tokens_for
from inference.serving.cache_size import (
    DENSE_RAM_SHARE,
    GIB,
    CacheDoesNotFit,
    CacheShape,
    GpuMemory,
    available_ram,
    cpu_budget,
    explicit_budget_problem,
    full_request_tokens,
    gpu_budget,
    gpu_memory_of,
    people_text,
)
from inference.serving.pace import Pace
from inference.serving.runner import Decisions, ModelRunner
from inference.types import EngineConfig, Request, Task

log = logging.getLogger(__name__)

CALIBRATION_ROW = -1  # the start's own timing row (the engine numbers requests from 1)
CALIBRATION_STEPS = 2


def start_runner(loaded: LoadedModel, config: EngineConfig) -> ModelRunner:
    """The runner for ``loaded`` on its device, every decision checked or measured there first."""
    model_config = loaded.model.config
    heads = model_config.num_attention_heads
    kv_heads = model_config.num_key_value_heads or heads
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // heads
    attention = choose_backend(
        loaded.device,
        loaded.dtype,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        sliding_window=getattr(model_config, "sliding_window", None),
        max_rows=config.max_batch_size,
    )
    fused_norms = _use_checked(
        loaded,
        "RMSNorm",
        "one call a norm",
        config.fused_norms,
        lambda: check_fused_norm(
            loaded.device, loaded.dtype, model_config.hidden_size, model_config.rms_norm_eps
        ),
        use_fused_norms,
    )
    fused_rope = _use_checked(
        loaded,
        "Rotary embedding and KV write",
        "one Triton kernel a layer",
        config.fused_rope and triton_runs_here(loaded.device),
        lambda: check_fused_rope(
            loaded.device, loaded.dtype, heads=heads, kv_heads=kv_heads, head_dim=head_dim
        ),
        use_fused_rope,
    )
    causal_bias = kv_heads == heads and _causal_bias_agrees(loaded, heads, head_dim)
    measured: Pace | None = None  # a CPU's, where limits and waits depend on it
    if loaded.device.type == "cpu":
        _keep_dense_weights(loaded)
        _choose_products(loaded)
        measured = pace.measure(loaded.model, loaded.dtype)  # with the fused norms as they will run
        loaded = _with_crops(loaded, pace.crops_for(measured, config.num_crops, _crops(loaded)), measured)
    decisions = Decisions(attention, fused_norms, fused_rope, causal_bias, token_budget=0, pace=measured)
    shape = CacheShape(
        PagedStorage.bytes_per_token(model_config.num_hidden_layers, kv_heads, head_dim, loaded.dtype),
        block_tokens_for(loaded.device.type),
    )
    budget = _size_budget(loaded, config, decisions, shape)
    runner = ModelRunner(loaded, config, dataclasses.replace(decisions, token_budget=budget))
    _log_cache(runner, config)
    if config.cuda_graphs and runner.decode_step.can_capture():
        _capture_graphs(runner)
    if runner.pace is not None:
        runner.pace = dataclasses.replace(
            runner.pace, token_s=max(runner.pace.token_s, _answering_step_s(runner))
        )
        log.info(
            "Speed on this CPU (measured): %s", runner.pace.summary(runner.num_crops, config.max_new_tokens)
        )
        shared = runner.prompt_tokens_per_pass(answering=True)
        log.info(
            "Prompts beside running answers: %d tokens a pass (~%.1f s between two tokens of an answer)",
            shared,
            shared * runner.pace.prompt_token_s,
        )
    return runner


def _crops(loaded: LoadedModel) -> int:
    return int(loaded.processor.image_processor.num_crops)


def _with_crops(loaded: LoadedModel, crops: int, measured: Pace) -> LoadedModel:
    """``loaded`` with a processor of its own at ``crops`` where a slow CPU needs fewer, said once; the
    processor it was loaded with is left as it is."""
    if crops == _crops(loaded):
        return loaded
    log.warning("NUM_CROPS=%d on this CPU: %s", crops, pace.fewer_crops_text(measured, _crops(loaded), crops))
    processor = copy.copy(loaded.processor)
    processor.image_processor = copy.copy(loaded.processor.image_processor)
    processor.image_processor.num_crops = crops
    return dataclasses.replace(loaded, processor=processor)


def _use_checked(
    loaded: LoadedModel,
    part: str,
    how: str,
    wanted: bool,
    check: Callable[[], str | None],
    use: Callable[[torch.nn.Module, bool], object],
) -> bool:
    """A fused ``part`` of the model where wanted and it agrees with transformers' here (``check``); else
    transformers' own. Returns whether the fused one is used."""
    problem = check() if wanted else None
    fused = wanted and problem is None
    use(loaded.model, fused)
    if problem is not None:
        log.warning("%s: transformers' own; the fused one failed its start-up check (%s)", part, problem)
    elif fused:
        log.info("%s: fused, %s (checked on %s against transformers' own)", part, how, loaded.device)
    return fused


def _choose_products(loaded: LoadedModel) -> None:
    """On a CPU with 8-bit weights: which way each product takes, by rows, measured here and logged."""
    from inference.kernels.cpu_int8 import choose_products

    lines = choose_products(loaded.model, loaded.dtype)
    if lines:
        log.info("8-bit products on this CPU (measured, each checked against float32): %s", lines[0])
        for line in lines[1:]:
            log.info("  %s", line)


def _keep_dense_weights(loaded: LoadedModel) -> None:
    """On a CPU with 8-bit weights: dense copies for reading prompts, within a share of the RAM free now."""
    from inference.kernels.cpu_int8 import keep_dense_weights

    free = available_ram() or 0
    kept, layers, used = keep_dense_weights(loaded.model, int(DENSE_RAM_SHARE * free), loaded.dtype)
    if layers == 0:
        return
    if kept == layers:
        log.info(
            "8-bit weights: dense %s copies kept for reading prompts (%.1f GiB of RAM; prompts read without "
            "expanding weights at every chunk)",
            str(loaded.dtype).removeprefix("torch."),
            used / GIB,
        )
    else:
        log.warning(
            "8-bit weights: dense copies kept for %d of %d layers only (%.1f GiB; %.1f GiB of RAM free): "
            "prompts read slower, expanding the other layers' weights at every chunk",
            kept,
            layers,
            used / GIB,
            free / GIB,
        )


def _causal_bias_agrees(loaded: LoadedModel, heads: int, head_dim: int) -> bool:
    """Whether a prompt's later chunks attend without a mask (PyTorch's ``causal_lower_right``, see
    :func:`~inference.kernels.attention_backends.attend_at_end`): where it agrees with the mask here.
    (Grouped-query models always build the mask, so nothing is checked for them.)"""
    problem = check_causal_bias(loaded.device, loaded.dtype, heads=heads, head_dim=head_dim)
    if problem is not None:
        log.warning(
            "A prompt's later chunks: attention through a mask; PyTorch's causal attention without one "
            "failed its start-up check (%s)",
            problem,
        )
        return False
    log.info(
        "A prompt's later chunks: PyTorch's causal attention without a mask (checked on %s against a mask)",
        loaded.device,
    )
    return True


def _size_budget(loaded: LoadedModel, config: EngineConfig, decisions: Decisions, shape: CacheShape) -> int:
    """``TOKEN_BUDGET`` as set, checked against free GPU memory; or, for ``auto``, what memory is left."""
    memory = gpu_memory_of(loaded.device)
    request_tokens = full_request_tokens(_crops(loaded), config.max_new_tokens)
    if config.token_budget is not None:
        if memory is not None:
            free, _ = memory.free_and_total()
            problem = explicit_budget_problem(shape, config.token_budget, free)
            if problem is not None:
                raise CacheDoesNotFit(problem)
        return config.token_budget
    if memory is not None:
        activation_peak = _warm_up(loaded, config, decisions, memory)
        free, total = memory.free_and_total()
        return gpu_budget(
            shape,
            total=total,
            free=free,
            activation_peak=activation_peak,
            fraction=config.gpu_memory_fraction,
            full_request_tokens=request_tokens,
        )
    return cpu_budget(
        shape, free_ram=available_ram(), full_request_tokens=request_tokens, max_rows=config.max_batch_size
    )


def _warm_up(loaded: LoadedModel, config: EngineConfig, decisions: Decisions, memory: GpuMemory) -> int:
    """On CUDA, before the cache exists: the largest prompt the settings allow (``MAX_IMAGES`` images at the
    most crops, through the vision tower) and one prefill chunk of it through the language model, on a cache
    just large enough for that chunk. Returns the activations' peak in bytes."""
    images = config.max_images
    side = 336 * max(1, int(_crops(loaded) ** 0.5))
    request = Request(
        Task.COMPARE if images > 1 else Task.DESCRIBE,
        tuple(Image.new("RGB", (side, side), (127, 127, 127)) for _ in range(images)),
        max_new_tokens=1,
    )
    prepared = Preparer(loaded.processor, config, token_budget=1 << 30).prepare(request)
    count = min(config.prefill_chunk_tokens, prepared.prompt_tokens)
    probe = ModelRunner(loaded, config, dataclasses.replace(decisions, token_budget=count))
    base = memory.start_peak()
    probe.prefill_alone(prepared, count)
    peak = memory.peak() - base
    del probe  # the cache is made again at its full size
    _free_memory()
    log.info(
        "Warm-up: %d images at %d crops and a %d-token prefill chunk peaked at %.2f GiB of activations",
        images,
        _crops(loaded),
        count,
        peak / GIB,
    )
    return int(peak)


def _log_cache(runner: ModelRunner, config: EngineConfig) -> None:
    log.info(
        "KV cache: %d tokens (%s), %.1f GiB allocated once in %d blocks of %d; room for %s at once with an "
        "image at %d crops and a %d-token answer each (MAX_BATCH_SIZE=%d); prompts prefilled %d tokens per "
        "step",
        runner.token_budget,
        "TOKEN_BUDGET" if config.token_budget is not None else "TOKEN_BUDGET=auto",
        runner.cache_bytes / GIB,
        runner.pool.num_blocks + 1,
        runner.block_tokens,
        people_text(runner.people),
        runner.num_crops,
        config.max_new_tokens,
        config.max_batch_size,
        config.prefill_chunk_tokens,
    )
    checked = runner.attention_choice.summary()
    log.info(
        "Attention kernel: %s, %s%s",
        runner.attention.name,
        runner.attention.text,
        f" (checked on {runner.loaded.device} against the plain kernel: {checked})" if checked else "",
    )


def _capture_graphs(runner: ModelRunner) -> None:
    """Capture the decoding steps as CUDA graphs, then replay each against an eager step before use."""
    step = runner.decode_step
    with torch.inference_mode():
        problem = step.capture(runner.config.max_batch_size)
        if problem is not None:
            log.warning("CUDA graphs are off, decoding steps run eagerly: %s", problem)
            return
        problem = step.verify(runner.pool.num_blocks)
    if problem is not None:
        step.graphs.clear()
        runner.graphs_refused = True
        _free_memory()
        log.error(
            "CUDA graphs failed their start-up check and are off; decoding steps run eagerly: %s", problem
        )
        return
    runner.graphs_checked = True
    log.info(
        "CUDA graphs: every batch bucket (%s) replayed like an eager step: same tokens, same logits",
        ", ".join(map(str, sorted(step.graphs))),
    )


def _answering_step_s(runner: ModelRunner) -> float:
    """Seconds of one real answering step, everything around the model included (one person, a short prompt):
    the layers timed alone understate it. The row leaves, its blocks go back, before serving."""
    ids = runner.tokenizer("<|user|>\nHello.<|end|>\n<|assistant|>\n", return_tensors="pt")["input_ids"][0]
    stop_ids, runner.stop_ids = runner.stop_ids, set()  # no early stop: every step decodes
    try:
        runner.step([(CALIBRATION_ROW, Prepared(ids, None, None, max_new_tokens=CALIBRATION_STEPS + 2))], [])
        runner.step([], [])  # the first answering step pays for first-call set-up
        started = time.perf_counter()
        for _ in range(CALIBRATION_STEPS):
            runner.step([], [])
        return (time.perf_counter() - started) / CALIBRATION_STEPS
    finally:
        runner.step([], [CALIBRATION_ROW])
        runner.stop_ids = stop_ids


def _free_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
