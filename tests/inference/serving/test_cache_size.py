"""How many KV-cache tokens a machine gets (TOKEN_BUDGET=auto), on cards a runner here cannot have: the
published model's shapes, the weights' sizes the README gives, and a warm-up's activation peak."""

from __future__ import annotations

import pytest
from PIL import Image

from inference import phi3v
from inference.prompts import build_prompt
from inference.serving.cache_size import (
    CPU_TOKEN_CAP,
    GIB,
    CacheDoesNotFit,
    CacheShape,
    cpu_budget,
    explicit_budget_problem,
    full_request_tokens,
    gpu_budget,
    image_tokens,
)
from inference.types import Task
from tests.inference.conftest import OFFICIAL

PUBLISHED = CacheShape(bytes_per_token=2 * 32 * 32 * 96 * 2, block_tokens=256)  # bf16
CONTEXT = int(0.5 * GIB)  # the CUDA context and PyTorch's own, in use before the weights
WARM_UP_PEAK = int(0.6 * GIB)  # activations of a 2,048-token chunk and four 16-crop images, with margin
FULL = full_request_tokens(16, 512)


def budget_on(card_gib: float, weights_bytes: float) -> int:
    total = int(card_gib * GIB)
    free = int(total - CONTEXT - weights_bytes)
    return gpu_budget(
        PUBLISHED,
        total=total,
        free=free,
        activation_peak=WARM_UP_PEAK,
        fraction=0.9,
        full_request_tokens=FULL,
    )


@pytest.mark.parametrize(
    "card_gib, weights_gb, at_least",
    [
        (16, 8.3, 13_000),  # bf16: the README calls 16 GB enough
        (8, 4.7, 4_096),  # 8-bit
        (6, 3.2, 3_072),  # 4-bit: one full request (12 blocks), a tight fit
        (24, 8.3, 30_000),
        (80, 8.3, 170_000),
    ],
)
def test_every_card_the_readme_names_starts_with_room_for_one_full_request(card_gib, weights_gb, at_least):
    budget = budget_on(card_gib, weights_gb * 1e9)
    assert budget >= max(FULL, at_least)
    assert budget % 256 == 0
    # What it allocates stays within the fraction of the card, beside what was in use.
    used = CONTEXT + weights_gb * 1e9 + WARM_UP_PEAK + PUBLISHED.bytes_for(budget)
    assert used <= 0.9 * card_gib * GIB


def test_a_card_that_cannot_hold_one_request_says_what_would_fit():
    with pytest.raises(CacheDoesNotFit) as error:
        budget_on(8, 8.3e9)  # bf16 weights on an 8 GB card
    message = str(error.value)
    assert message.startswith("The KV cache has room for ")
    assert f"needs {FULL} (1.2 GiB)" in message
    assert message.endswith("use QUANTIZATION=4bit, a smaller NUM_CROPS or MAX_NEW_TOKENS, or a larger GPU.")
    assert "\n" not in message


def test_an_explicit_budget_that_does_not_fit_names_the_largest_that_does():
    shape = CacheShape(bytes_per_token=1024, block_tokens=256)
    free = 2 * GIB + 40 * 1024**2
    assert explicit_budget_problem(shape, 8192, free) is None
    fits = (40 * 1024**2 // 1024 - 256) // 256 * 256  # less the scratch block
    assert explicit_budget_problem(shape, 98_304, free) == (
        "The KV cache for TOKEN_BUDGET=98304 needs 0.1 GiB, but 2.0 GiB of GPU memory "
        "is free after the weights (2 GiB of it is kept for activations): "
        f"set TOKEN_BUDGET to at most {fits}, or TOKEN_BUDGET=auto."
    )
    assert "use QUANTIZATION=4bit, a smaller NUM_CROPS or a larger GPU" in explicit_budget_problem(
        shape, 98_304, 2 * GIB
    )


def test_on_the_cpu_half_the_free_ram_is_used_and_capped():
    shape = CacheShape(bytes_per_token=2 * 32 * 32 * 96 * 4, block_tokens=256)  # float32
    small = cpu_budget(shape, free_ram=6 * GIB, full_request_tokens=FULL)
    assert small == (3 * GIB // (256 * shape.bytes_per_token) - 1) * 256
    assert cpu_budget(shape, free_ram=64 * GIB, full_request_tokens=FULL) == CPU_TOKEN_CAP
    assert cpu_budget(shape, free_ram=None, full_request_tokens=FULL) == CPU_TOKEN_CAP  # RAM unknown: the cap
    with pytest.raises(CacheDoesNotFit, match="in half the free RAM"):
        cpu_budget(shape, free_ram=2 * GIB, full_request_tokens=FULL)


def test_on_the_cpu_the_cache_holds_no_more_than_max_batch_size_full_requests():
    shape = CacheShape(bytes_per_token=2 * 32 * 32 * 96 * 4, block_tokens=256)
    per_request = -(-FULL // 256) * 256  # whole blocks
    assert cpu_budget(shape, free_ram=64 * GIB, full_request_tokens=FULL, max_rows=2) == 2 * per_request
    assert cpu_budget(shape, free_ram=64 * GIB, full_request_tokens=FULL, max_rows=64) == CPU_TOKEN_CAP
    assert cpu_budget(shape, free_ram=6 * GIB, full_request_tokens=FULL, max_rows=64) == cpu_budget(
        shape, free_ram=6 * GIB, full_request_tokens=FULL
    )  # the RAM is the tighter bound


@pytest.mark.parametrize("crops", [1, 4, 9, 16])
def test_a_full_request_counts_what_the_processor_makes_of_an_image_at_the_most_crops(crops):
    processor = phi3v.Phi3VProcessor.from_pretrained(OFFICIAL, num_crops=crops)
    side = 336 * int(crops**0.5)
    prompt = build_prompt(Task.DESCRIBE, 1, None, ())
    ids = processor(text=prompt, images=[Image.new("RGB", (side, side))], return_tensors="pt")["input_ids"]
    assert image_tokens(crops) < ids.shape[1] <= full_request_tokens(crops, 0)
