"""How many KV-cache tokens to allocate at start-up (``TOKEN_BUDGET=auto``), in the spirit of vLLM's
``gpu_memory_utilization``: after the weights are loaded (and, on CUDA, a warm-up pass has shown the
activations' peak), the cache takes what is left of ``GPU_MEMORY_FRACTION`` of the card. On the CPU it
takes a share of the free RAM, capped: a CPU answers a handful of people at a time at most.

Pure arithmetic on byte counts plus the two readings of free memory, so ``python -m bot --check`` and the
runner share it and tests can give it any card.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from inference.errors import EngineUnavailable

if TYPE_CHECKING:
    import torch

GIB = 1024**3
MIN_TOKEN_BUDGET = 1024  # the smallest TOKEN_BUDGET the settings accept
ACTIVATION_HEADROOM = 2 * GIB  # kept beside an explicit TOKEN_BUDGET's cache on CUDA (no warm-up measures it)
CPU_RAM_SHARE = 0.5  # of the RAM free after the weights, on the CPU (and Apple's unified memory)
# On a CPU with 8-bit weights: the share of the RAM free after loading that the weights' dense copies for
# reading prompts may take, before the KV cache takes its share of what is left.
DENSE_RAM_SHARE = 0.5
CPU_TOKEN_CAP = 16_384  # about five one-image answers at 16 crops: more than a CPU serves at once


class CacheDoesNotFit(EngineUnavailable):
    """The KV cache cannot be had on this device; the message says what would fit."""


@dataclass(frozen=True)
class CacheShape:
    """What one token costs and how blocks are laid out. Requests reserve whole blocks (the scheduler rounds
    up), so the budget is a whole number of blocks; one block more is the scratch block of padded steps."""

    bytes_per_token: int  # keys and values of one token in every layer
    block_tokens: int
    extra_blocks: int = 1

    def bytes_for(self, token_budget: int) -> int:
        blocks = -(-token_budget // self.block_tokens) + self.extra_blocks
        return blocks * self.block_tokens * self.bytes_per_token

    def tokens_in(self, usable_bytes: float) -> int:
        """The largest budget (a whole number of blocks) whose cache fits in ``usable_bytes``."""
        blocks = int(usable_bytes // (self.block_tokens * self.bytes_per_token)) - self.extra_blocks
        return max(blocks, 0) * self.block_tokens


def auto_token_budget(
    shape: CacheShape,
    *,
    usable_bytes: float,
    full_request_tokens: int,
    where: str,
    cap: int | None = None,
) -> int:
    """The budget ``usable_bytes`` holds (at most ``cap``), or :class:`CacheDoesNotFit` when that is less
    than one full request (``full_request_tokens``: a prompt at the most crops plus the longest answer).

    ``where`` says in the error what memory was counted, e.g. "0.9 of the GPU's 8.0 GiB after the weights".
    """
    budget = shape.tokens_in(usable_bytes)
    if cap is not None:
        budget = min(budget, cap)
    if budget >= max(full_request_tokens, MIN_TOKEN_BUDGET):
        return budget
    needed = shape.bytes_for(max(full_request_tokens, MIN_TOKEN_BUDGET))
    raise CacheDoesNotFit(
        f"The KV cache has room for {budget} tokens in {where} ({max(usable_bytes, 0) / GIB:.1f} GiB), "
        f"but one request with an image at the most crops and the longest answer needs {full_request_tokens} "
        f"({needed / GIB:.1f} GiB): use QUANTIZATION=4bit, a smaller NUM_CROPS or MAX_NEW_TOKENS, or a "
        "larger GPU."
    )


def gpu_budget(
    shape: CacheShape,
    *,
    total: int,
    free: int,
    activation_peak: int,
    fraction: float,
    full_request_tokens: int,
) -> int:
    """``TOKEN_BUDGET=auto`` on a GPU (:func:`gpu_usable_bytes`), or :class:`CacheDoesNotFit`."""
    usable = gpu_usable_bytes(total=total, free=free, activation_peak=activation_peak, fraction=fraction)
    where = (
        f"GPU_MEMORY_FRACTION={fraction} of the GPU's {total / GIB:.1f} GiB, after the "
        f"{(total - free) / GIB:.1f} GiB in use (the weights, other programs) and "
        f"{activation_peak / GIB:.1f} GiB of activations"
    )
    return auto_token_budget(shape, usable_bytes=usable, full_request_tokens=full_request_tokens, where=where)


def cpu_budget(
    shape: CacheShape, *, free_ram: int | None, full_request_tokens: int, max_rows: int | None = None
) -> int:
    """``TOKEN_BUDGET=auto`` on the CPU: half the RAM free after the weights, at most ``CPU_TOKEN_CAP`` and at
    most what ``max_rows`` full requests hold at once (``MAX_BATCH_SIZE``; no more can run): a CPU pays for
    every token of cache in start-up time and in RAM other programs on a small server need."""
    cap = CPU_TOKEN_CAP
    if max_rows is not None:
        per_request = -(-full_request_tokens // shape.block_tokens) * shape.block_tokens
        cap = min(cap, max(max_rows, 1) * per_request)
    return auto_token_budget(
        shape,
        usable_bytes=cpu_usable_bytes(free_ram),
        full_request_tokens=full_request_tokens,
        where="half the free RAM",
        cap=cap,
    )


def explicit_budget_problem(shape: CacheShape, token_budget: int, free_bytes: int) -> str | None:
    """Why an explicit ``TOKEN_BUDGET`` does not fit in ``free_bytes`` of GPU memory (None when it does)."""
    needed = shape.bytes_for(token_budget)
    if needed + ACTIVATION_HEADROOM <= free_bytes:
        return None
    fits = shape.tokens_in(free_bytes - ACTIVATION_HEADROOM)
    head = (
        f"The KV cache for TOKEN_BUDGET={token_budget} needs {needed / GIB:.1f} GiB, but "
        f"{free_bytes / GIB:.1f} GiB of GPU memory is free after the weights "
        f"({ACTIVATION_HEADROOM / GIB:.0f} GiB of it is kept for activations)"
    )
    if fits >= MIN_TOKEN_BUDGET:
        return f"{head}: set TOKEN_BUDGET to at most {fits}, or TOKEN_BUDGET=auto."
    return f"{head}: use QUANTIZATION=4bit, a smaller NUM_CROPS or a larger GPU."


def available_ram() -> int | None:
    """Bytes of RAM a new allocation can have (Linux's MemAvailable), or None where it cannot be read."""
    with contextlib.suppress(OSError, ValueError, IndexError):  # not Linux: ask the C library below
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def cpu_usable_bytes(free_ram: int | None) -> float:
    """What the cache may take on the CPU: a share of the free RAM (the cap alone when it cannot be read)."""
    if free_ram is None:
        return float(1 << 62)
    return CPU_RAM_SHARE * free_ram


def gpu_usable_bytes(*, total: int, free: int, activation_peak: int, fraction: float) -> float:
    """What the cache may take on a GPU: ``fraction`` of the card, less what is in use now (weights, the
    CUDA context, other processes) and less the activations' peak the warm-up measured."""
    return fraction * total - (total - free) - activation_peak


# Image tokens of one image at the most crops: (crops + the global view) x 144, one separator per row of
# crops and for the global view, and the newline after the image (Phi-3-vision's HD layout).
PROMPT_TEXT_TOKENS = 24  # the describe prompt's own tokens around the image (18), with a margin


def people_text(count: int) -> str:
    """``1 person``, ``3 people``: for the log, /status and --check."""
    return f"{count} person" if count == 1 else f"{count} people"


def image_tokens(num_crops: int) -> int:
    side = max(1, int(num_crops**0.5))
    return (side * side + 1) * 144 + (side + 1) * 12 + 1


def full_request_tokens(num_crops: int, max_new_tokens: int) -> int:
    """KV-cache tokens of the largest ordinary request: one image at the most crops, the longest answer."""
    return image_tokens(num_crops) + PROMPT_TEXT_TOKENS + max_new_tokens


class GpuMemory:
    """What the runner reads of a CUDA device's memory (tests stand in for it to run the warm-up on a CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def free_and_total(self) -> tuple[int, int]:
        """(free, total) bytes, counting what PyTorch caches but no tensor uses as free (it hands that out
        first)."""
        import torch

        free, total = torch.cuda.mem_get_info(self.device)
        cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return int(free + max(cached, 0)), int(total)

    def start_peak(self) -> int:
        """Start measuring a peak; returns the bytes allocated now."""
        import torch

        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        return int(torch.cuda.memory_allocated(self.device))

    def peak(self) -> int:
        """The most bytes allocated since :meth:`start_peak`, once the device has finished its work."""
        import torch

        torch.cuda.synchronize(self.device)
        return int(torch.cuda.max_memory_allocated(self.device))


def gpu_memory_of(device: torch.device) -> GpuMemory | None:
    """The memory the runner sizes its cache by: a CUDA device's; None elsewhere (RAM is read instead)."""
    return GpuMemory(device) if device.type == "cuda" else None
