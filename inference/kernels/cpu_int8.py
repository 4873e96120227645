"""8-bit weights for the language model on the CPU (``QUANTIZATION=8bit`` without a GPU).

Answering a token reads every weight of the language model once, so on a CPU the time per token is set by
memory bandwidth: int8 weights are half of bf16's bytes and a quarter of float32's. Each linear layer of the
language model keeps its weight as int8 with one scale per output row (symmetric, rounded to nearest); the
vision tower, the embeddings and ``lm_head`` stay in the model's precision, as on the GPU.

Three ways to multiply, by the number of rows in the product (the rows where each stops paying are measured
on this CPU at start-up: :mod:`inference.kernels.cpu_products`):
- few rows (answering: one row per person): PyTorch's own CPU kernel for int8 weights,
  ``aten._weight_int8pack_mm``, with bf16 activations;
- more rows (reading a prompt), where memory allowed the start to keep them (:func:`keep_dense_weights`):
  the usual matrix product with the weight's dense copy (the int8 weight times its scales, in the model's
  precision);
- more rows without a dense copy: the weight is expanded into a scratch buffer shared by all layers, then
  multiplied: the same numbers as the kept copy, but each prompt chunk pays for the expansion again.

Why not torchao: on the CPUs we measured (``bench/cpu.py --matmul``), torchao 0.18's eager int8 weight-only
path dequantizes on every call and was 14x slower than PyTorch's kernel for one row, its dynamic int8 path
was 25x slower on prompts, and its int4 CPU kernel was slower than int8 while less exact.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path
from typing import cast

import torch
from torch import nn

from inference.kernels.cpu_products import (
    DENSE_COPY,
    EXPANDED,
    INT8_KERNEL,
    ProductRules,
    describe,
    measure,
    rules_from,
)

log = logging.getLogger(__name__)

# PyTorch's int8 kernel reads its weight with aligned loads: on a Xeon with AMX (torch 2.13) a weight at an
# address that is not a multiple of 64 bytes crashes the process, and safetensors hands tensors back at
# any offset (24 bytes past, read from our cache file).
WEIGHT_ALIGNMENT = 64
LINEAR_NAMES = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
CACHE_FORMAT = 1  # bump when the rounding changes: older files are then not read


class DequantScratch:
    """One buffer, as large as the largest weight, that the prompt path expands weights into; one owner
    (the model thread) uses it, one layer at a time."""

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None

    def expand(self, weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        size = weight.numel()
        if self._buffer is None or self._buffer.numel() < size or self._buffer.dtype != dtype:
            self._buffer = torch.empty(size, dtype=dtype)
        out = self._buffer[:size].view(weight.shape)
        return torch.mul(weight, scale.to(dtype).unsqueeze(1), out=out)


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` [out, in] as int8 and a bf16 scale per row: round(w / scale), scale = max|w| / 127."""
    scale = (weight.abs().amax(dim=1).float() / 127).clamp(min=torch.finfo(torch.float32).tiny)
    scale = scale.to(torch.bfloat16)
    scaled = torch.mul(weight, scale.float().reciprocal().unsqueeze(1))  # one float32 pass, rounded in place
    return scaled.round_().clamp_(-127, 127).to(torch.int8), scale


class Int8Linear(nn.Module):
    """A linear layer whose weight is int8 with a bf16 scale per output row."""

    weight_int8: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self,
        weight_int8: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
        scratch: DequantScratch,
        rules: ProductRules | None = None,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = weight_int8.shape
        if weight_int8.data_ptr() % WEIGHT_ALIGNMENT:
            weight_int8 = weight_int8.clone()  # PyTorch's allocator aligns fresh memory to 64 bytes
        # Buffers, not parameters: model.to(dtype) leaves int8 alone; ``scale`` is read as bf16 by both paths.
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("scale", scale)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self._scratch = scratch
        # When to use which way: one object for every 8-bit layer, measured at start-up (cpu_products).
        self.rules = rules if rules is not None else ProductRules()
        # The dense copy for reading prompts (:func:`keep_dense_weights`): not a buffer, so neither saved nor
        # moved; None where memory did not allow it.
        self.dense: torch.Tensor | None = None

    @classmethod
    def rounding(
        cls, linear: nn.Linear, scratch: DequantScratch, rules: ProductRules | None = None
    ) -> Int8Linear:
        return cls(*quantize(linear.weight.detach()), linear.bias, scratch, rules)

    def kernel_product(self, flat: torch.Tensor) -> torch.Tensor:
        """PyTorch's int8 kernel, bf16 activations."""
        return torch.ops.aten._weight_int8pack_mm(
            flat.to(torch.bfloat16), self.weight_int8, self.scale.to(torch.bfloat16)
        ).to(flat.dtype)

    def dense_product(self, flat: torch.Tensor) -> torch.Tensor:
        assert self.dense is not None
        return torch.nn.functional.linear(flat, self.dense)

    def expanded_product(self, flat: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(
            flat, self._scratch.expand(self.weight_int8, self.scale, flat.dtype)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        rows = flat.shape[0]
        if self.dense is not None and rows > self.rules.dense_after_rows and self.dense.dtype == x.dtype:
            y = self.dense_product(flat)
        elif rows <= self.rules.kernel_max_rows:
            y = self.kernel_product(flat)
        else:
            y = self.expanded_product(flat)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-row"


def quantize_language_model(model: nn.Module, cache: Path | None = None) -> int:
    """Replace the language model's linear layers of ``model`` (a ``Phi3VForCausalLM``) by
    :class:`Int8Linear`, one at a time so that memory never holds two copies of more than one layer;
    returns how many.

    ``cache``: a file of int8 weights rounded before from the same checkpoint, read instead of rounding
    again (reading ~3.6 GB takes seconds, rounding a minute or more on a small CPU); written when missing.
    """
    stored = _read_cache(cache) or {}
    scratch = DequantScratch()
    rules = ProductRules()
    made: dict[str, torch.Tensor] = {}
    replaced = 0
    for index, layer in enumerate(cast(nn.ModuleList, model.get_submodule("model.layers"))):
        for part, parent in (("self_attn", layer.self_attn), ("mlp", layer.mlp)):
            for name in LINEAR_NAMES:
                linear = getattr(parent, name, None)
                if not isinstance(linear, nn.Linear):
                    continue
                key = f"layers.{index}.{part}.{name}"
                if f"{key}.weight" in stored and f"{key}.scale" in stored:
                    int8 = Int8Linear(
                        stored[f"{key}.weight"], stored[f"{key}.scale"], linear.bias, scratch, rules
                    )
                else:
                    int8 = Int8Linear.rounding(linear, scratch, rules)
                    made[f"{key}.weight"], made[f"{key}.scale"] = int8.weight_int8, int8.scale
                setattr(parent, name, int8)
                replaced += 1
    if made and cache is not None:
        _write_cache(cache, stored | made)
    return replaced


def keep_dense_weights(model: nn.Module, budget_bytes: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """Give the 8-bit layers of ``model`` dense copies in ``dtype`` (their int8 weights times their scales:
    the very numbers the expanded path multiplies by), in order, while they fit in ``budget_bytes``; prompts
    then multiply without expanding weights each chunk. Returns (layers with a copy, 8-bit layers, bytes)."""
    layers = [module for module in model.modules() if isinstance(module, Int8Linear)]
    kept = used = 0
    for layer in layers:
        size = layer.weight_int8.numel() * dtype.itemsize
        if used + size > budget_bytes:
            break
        layer.dense = torch.mul(layer.weight_int8, layer.scale.to(dtype).unsqueeze(1))
        kept, used = kept + 1, used + size
    return kept, len(layers), used


def choose_products(model: nn.Module, dtype: torch.dtype) -> list[str] | None:
    """Time the ways to multiply at the model's largest 8-bit layer on this CPU (most of the bytes are in
    layers of its shape), each checked against the float32 product, and set the rows at which every layer
    changes way; the lines say what was chosen and why. None where the model has no 8-bit layers."""
    layers = [module for module in model.modules() if isinstance(module, Int8Linear)]
    if not layers:
        return None
    layer = max(layers, key=lambda module: module.weight_int8.numel())
    candidates = {INT8_KERNEL: layer.kernel_product, EXPANDED: layer.expanded_product}
    if layer.dense is not None:
        candidates[DENSE_COPY] = layer.dense_product
    exact = layer.weight_int8.float() * layer.scale.float().unsqueeze(1)
    measurement = measure(candidates, lambda x: x @ exact.T, layer.in_features, dtype)
    chosen = rules_from(measurement)
    layer.rules.kernel_max_rows = chosen.kernel_max_rows  # the object every layer shares
    layer.rules.dense_after_rows = chosen.dense_after_rows
    layer.rules.measured = True
    return describe(measurement, layer.rules)


def cache_file(source: Path) -> Path:
    """Where the int8 weights of the checkpoint in ``source`` are kept: beside the Hugging Face cache
    (``HF_HOME``, a volume in Docker), named by the checkpoint's files (names, sizes, times) so that a
    changed checkpoint is rounded anew."""
    from huggingface_hub import constants

    files = sorted(source.glob("*.safetensors"))
    stamp = "|".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    key = hashlib.sha256(f"{CACHE_FORMAT}|{source.resolve()}|{stamp}".encode()).hexdigest()[:20]
    return Path(constants.HF_HOME) / "phi3v-bot" / "int8" / f"{key}.safetensors"


def _read_cache(cache: Path | None) -> dict[str, torch.Tensor] | None:
    if cache is None or not cache.is_file():
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(cache)
    except (
        OSError,
        ValueError,
        RuntimeError,
        SafetensorError,
    ) as error:  # damaged: round again and write it anew
        log.warning("The 8-bit weights in %s could not be read (%s); rounding them again", cache, error)
        return None


def _write_cache(cache: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    partial = cache.with_suffix(".partial")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, partial)
        os.replace(partial, cache)  # whole or absent: a start killed while writing leaves no half file
        log.info("8-bit weights kept in %s (%.1f GB) for the next start", cache, cache.stat().st_size / 1e9)
    except OSError as error:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        log.warning(
            "Could not keep the 8-bit weights in %s (%s): the next start rounds them again", cache, error
        )
