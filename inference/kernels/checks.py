"""Start-up self-verification, on the device the runner will serve from, before anyone is served.

The fast paths (an in-place attention kernel, decoding steps replayed from CUDA graphs) are checked
against the plain path here, at the model's own shapes, and used only if they agree:

- :func:`choose_kernel`: every kernel that exists here runs the same attention as the plain kernel
  (computed in float32) on planted keys and values: the model's heads, head size and sliding window;
  one row and the largest batch bucket; rows of 1, ~300, ~2,600 and over 4,096 keys; a prompt chunk
  beside answering rows; block tables shuffled. Each output element must agree within a tolerance for
  the dtype. The fastest kernel that agrees is chosen, by its measured time on the largest check.
- :func:`check_fused_norm`: the fused RMSNorm (:mod:`inference.kernels.norms`) against transformers' own on
  activations of a residual stream's range, one row to a prompt chunk's worth.
- :func:`check_fused_rope`: the rotary embedding and KV write in one Triton kernel
  (:mod:`inference.kernels.fused_attention`) against transformers' rotary embedding and the cache's own write:
  the same queries and every slot of the cache the same, for one token, a batch and a prompt chunk.
- :func:`check_causal_bias`: a prompt's later chunk attending through PyTorch's ``causal_lower_right``
  (no mask built) against the same attention through an explicit mask, in float32: the published shape's
  second chunk and a small one.
- :func:`verify_graphs`: after the runner captured its decoding steps as CUDA graphs, each batch
  bucket is replayed against the same step run eagerly, on the same planted cache: the same greedy
  tokens, and logits within tolerance, or every graph is dropped and decoding runs eagerly.

A kernel or graph that raises an ordinary error is not used (one log line says why). One that breaks
the device (a CUDA error: every later call in the process fails) ends the start with
:class:`SelfCheckFailed`, never a half-working engine.
"""

from __future__ import annotations

import functools
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers.models.phi3.modeling_phi3 import Phi3RMSNorm, apply_rotary_pos_emb

from inference.errors import EngineUnavailable
from inference.kernels.norms import FusedRMSNorm
from inference.kernels.paged_cache import (
    KERNELS,
    PagedBatch,
    PagedStorage,
    attend,
    attend_at_end,
    kernel_runs_here,
    slots_of,
)

log = logging.getLogger(__name__)

# Per element: |candidate − reference| <= TOLERANCE * (1 + |reference|), by the dtype the model runs in.
TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 5e-3, torch.float32: 1e-4}
CHECK_LENGTHS = (1, 300, 2600, 4400)  # keys per answering row, cycled; the last is past LongRoPE's 4,096
CHUNK = (300, 2600)  # a prompt chunk of 300 queries whose row then has 2,600 keys
TIMED_RUNS = 5
NORM_ROWS = (1, 33, 2048)  # a decoding row, a batch, a prompt chunk
ROPE_TOKENS = (1, 33, 700)  # the same, for the rotary embedding and KV write
# A prompt's later chunk: (queries, keys). A 16-crop prompt's second chunk is ~330 queries on ~2,400 keys.
LATER_CHUNKS = ((300, 2600), (37, 101))
ROPE_POSITIONS = 8192  # positions drawn below this (past LongRoPE's switch at 4,096)
# Messages of errors after which CUDA refuses all further work in this process.
FATAL_DEVICE_ERRORS = ("CUDA error", "device-side assert", "illegal memory access", "CUBLAS_STATUS")


class SelfCheckFailed(EngineUnavailable):
    """A fast path broke the device while it was being checked: the engine cannot start."""


def is_fatal(error: BaseException) -> bool:
    """True for an error after which the device cannot be trusted (a CUDA error poisons the context)."""
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(error, accelerator_error):
        return True
    return isinstance(error, RuntimeError) and any(mark in str(error) for mark in FATAL_DEVICE_ERRORS)


def _short(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:300]


@dataclass(frozen=True)
class KernelChoice:
    """The paged attention kernel chosen, and what the check measured (milliseconds per call)."""

    name: str
    timings_ms: dict[str, float] = field(default_factory=dict)  # kernels that agreed with plain
    refused: dict[str, str] = field(default_factory=dict)  # kernel -> why it is not used

    @property
    def time_ms(self) -> float | None:
        return self.timings_ms.get(self.name)

    def summary(self) -> str:
        """e.g. ``triton 0.31 ms, plain 2.10 ms; fused refused (it differs …)``."""
        timed = ", ".join(f"{name} {ms:.2f} ms" for name, ms in self.timings_ms.items())
        refused = "; ".join(f"{name} refused ({why})" for name, why in self.refused.items())
        return "; ".join(part for part in (timed, refused) if part)


@dataclass(frozen=True)
class _Case:
    """One attention call to check: queries per row, keys per row, and each row's block table."""

    q_lengths: list[int]
    k_lengths: list[int]
    tables: list[list[int]]


class _Planted:
    """A small storage of random keys and values, and the cases that read it."""

    def __init__(self, device, dtype, heads: int, kv_heads: int, head_dim: int, max_rows: int, window):
        self.device, self.window = device, window
        self.block_tokens = 256
        num_blocks = -(-max(CHECK_LENGTHS) // self.block_tokens) + 1
        generator = torch.Generator(device="cpu").manual_seed(0)
        shape = (num_blocks, self.block_tokens, kv_heads, head_dim)
        self.storage = PagedStorage(
            num_layers=1,
            num_blocks=num_blocks,
            block_tokens=self.block_tokens,
            kv_heads=kv_heads,
            head_dim=head_dim,
            dtype=dtype,
            device=device,
        )
        self.storage.keys[0].copy_(torch.randn(shape, generator=generator))
        self.storage.values[0].copy_(torch.randn(shape, generator=generator))
        self.reference_keys = self.storage.keys[0].float()
        self.reference_values = self.storage.values[0].float()

        def shuffled() -> list[int]:  # every row reads the blocks in its own random order
            return torch.randperm(num_blocks, generator=generator).tolist()

        decode_rows = [CHECK_LENGTHS[i % len(CHECK_LENGTHS)] for i in range(max_rows)]
        self.cases = {
            "one row": _Case([1], [max(CHECK_LENGTHS)], [shuffled()]),
            f"{max_rows} rows": _Case([1] * max_rows, decode_rows, [shuffled() for _ in decode_rows]),
            "a prompt chunk beside answering rows": _Case(
                [1, CHUNK[0], 1], [CHECK_LENGTHS[-1], CHUNK[1], 1], [shuffled() for _ in range(3)]
            ),
        }
        self.largest = f"{max_rows} rows"
        self.queries = {
            name: torch.randn(sum(case.q_lengths), heads, head_dim, generator=generator).to(device, dtype)
            for name, case in self.cases.items()
        }

    def batch(self, case: _Case, kernel: str) -> PagedBatch:
        def on(values, kind=torch.int32):
            return torch.tensor(values, dtype=kind, device=self.device)

        cu_q, cu_k = [0], [0]
        for q, k in zip(case.q_lengths, case.k_lengths):
            cu_q.append(cu_q[-1] + q)
            cu_k.append(cu_k[-1] + k)
        slots = [
            s
            for table, q, k in zip(case.tables, case.q_lengths, case.k_lengths)
            for s in slots_of(table, k - q, k, self.block_tokens)
        ]
        return PagedBatch(
            storage=self.storage,
            slots=on(slots, torch.long),
            cu_seq_q=on(cu_q),
            cu_seq_k=on(cu_k),
            lengths=on(case.k_lengths),
            block_table=on(case.tables),
            q_lengths=case.q_lengths,
            k_lengths=case.k_lengths,
            kernel=kernel,
            sliding_window=self.window,
        )

    def run(self, name: str, kernel: str) -> torch.Tensor:
        batch = self.batch(self.cases[name], kernel)
        return attend(self.queries[name], self.storage.keys[0], self.storage.values[0], batch, None)

    def reference(self, name: str) -> torch.Tensor:
        batch = self.batch(self.cases[name], "plain")
        query = self.queries[name].float()
        return attend(query, self.reference_keys, self.reference_values, batch, None)


def _reason_unless_fatal(error: Exception, part: str) -> str:
    """Why ``part`` is not used, for the log; an error that broke the device ends the start instead."""
    if is_fatal(error):
        raise SelfCheckFailed(
            f"{part} broke the GPU during its start-up check ({_short(error)}). Restart the bot; if this "
            "happens again, update PyTorch and the NVIDIA driver."
        ) from error
    return _short(error)


def _disagreement(
    out: torch.Tensor, reference: torch.Tensor, tolerance: float, plain: str = "the plain kernel's"
) -> str | None:
    """None when every element agrees; else where the worst one is, for the log."""
    out = out.float()
    excess = (out - reference).abs() - tolerance * (1 + reference.abs())
    if bool(torch.isfinite(out).all()) and float(excess.max()) <= 0:
        return None
    bad = int((excess > 0).sum()) if bool(torch.isfinite(out).all()) else int((~torch.isfinite(out)).sum())
    worst = float((out - reference).abs().nan_to_num(float("inf")).max())
    return f"{bad} of {out.numel()} values differ from {plain}, by up to {worst:.3g}"


def _time_ms(call: Callable[[], object], device: torch.device) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    call()  # a first call compiles or plans; it is not timed
    sync()
    times = []
    for _ in range(TIMED_RUNS):
        started = time.perf_counter()
        call()
        sync()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


@torch.inference_mode()
def choose_kernel(
    device: torch.device,
    dtype: torch.dtype,
    *,
    heads: int,
    kv_heads: int,
    head_dim: int,
    sliding_window: int | None,
    max_rows: int,
) -> KernelChoice:
    """The fastest of :data:`~inference.kernels.paged_cache.KERNELS` that exists here and agrees with the
    plain one.

    Where only ``plain`` exists (the CPU, Apple's ``mps``) nothing is compared: it is the reference.
    """
    candidates = [kernel for kernel in KERNELS if kernel_runs_here(kernel, device, dtype)]
    if candidates == ["plain"]:
        return KernelChoice("plain")
    planted = _Planted(device, dtype, heads, kv_heads, head_dim, max_rows, sliding_window)
    references = {name: planted.reference(name) for name in planted.cases}
    tolerance = TOLERANCE.get(dtype, 1e-2)
    timings, refused = {}, {}
    for kernel in candidates:
        try:
            problem = None
            for name in planted.cases:
                why = _disagreement(planted.run(name, kernel), references[name], tolerance)
                if why is not None:
                    problem = f"{why} ({name})"
                    break
            if problem is None:
                timings[kernel] = _time_ms(functools.partial(planted.run, planted.largest, kernel), device)
        except Exception as error:
            problem = _reason_unless_fatal(error, f"The {kernel} attention kernel")
        if problem is not None:
            refused[kernel] = problem
            log.warning(
                "The %s paged attention kernel failed its start-up check: not used (%s).", kernel, problem
            )
    if not timings:
        raise SelfCheckFailed(
            "No attention kernel, not even the plain one, computed attention correctly on this device "
            f"({'; '.join(f'{k}: {why}' for k, why in refused.items())})."
        )
    chosen = min(timings, key=timings.__getitem__)
    return KernelChoice(chosen, timings, refused)


@torch.inference_mode()
def check_fused_norm(device: torch.device, dtype: torch.dtype, hidden_size: int, eps: float) -> str | None:
    """:class:`~inference.kernels.norms.FusedRMSNorm` against transformers' ``Phi3RMSNorm`` with the same
    weight, on rows whose sizes range as a residual stream's do; None when every element agrees within the
    dtype's tolerance, else what differed (then the runner keeps transformers' norms)."""
    generator = torch.Generator().manual_seed(0)
    fused = FusedRMSNorm(hidden_size, eps)
    fused.weight.copy_(1 + 0.2 * torch.randn(hidden_size, generator=generator))
    fused.to(device, dtype)
    plain = Phi3RMSNorm(hidden_size, eps).to(device, dtype)
    plain.weight.copy_(fused.weight)
    tolerance = TOLERANCE.get(dtype, 1e-2)
    try:
        for rows in NORM_ROWS:
            scales = torch.rand(rows, 1, generator=generator) * 60 + 0.01
            hidden = (torch.randn(rows, hidden_size, generator=generator) * scales).to(device, dtype)
            why = _disagreement(fused(hidden), plain(hidden).float(), tolerance, "transformers' RMSNorm")
            if why is not None:
                return f"{why} ({rows} rows)"
    except Exception as error:
        return _reason_unless_fatal(error, "The fused RMSNorm")
    return None


@torch.inference_mode()
def check_fused_rope(
    device: torch.device, dtype: torch.dtype, *, heads: int, kv_heads: int, head_dim: int
) -> str | None:
    """:func:`inference.kernels.fused_attention.rope_and_write` against transformers'
    ``apply_rotary_pos_emb`` and :meth:`~inference.kernels.paged_cache.PagedStorage.write` on random rows of
    ``qkv`` at random positions: the same queries, and every slot of both caches the same (the right slots
    written, no other); None when all agree within the dtype's tolerance, else what differed (then the runner
    keeps transformers')."""
    from inference.kernels import fused_attention

    generator = torch.Generator().manual_seed(0)
    tolerance = TOLERANCE.get(dtype, 1e-2)
    widths = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
    frequencies = 1 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    block_tokens = 16
    try:
        for tokens in ROPE_TOKENS:
            num_blocks = -(-tokens // block_tokens) + 2  # room for slots no token writes
            qkv = (torch.randn(tokens, sum(widths), generator=generator) * 4).to(device, dtype)
            positions = torch.randint(0, ROPE_POSITIONS, (tokens, 1), generator=generator).float()
            angles = torch.cat([positions * frequencies, positions * frequencies], dim=-1)
            cos, sin = angles.cos().to(device, dtype), angles.sin().to(device, dtype)
            slots = torch.randperm(num_blocks * block_tokens, generator=generator)[:tokens].to(device)
            fused, plain = (
                PagedStorage(
                    num_layers=1,
                    num_blocks=num_blocks,
                    block_tokens=block_tokens,
                    kv_heads=kv_heads,
                    head_dim=head_dim,
                    dtype=dtype,
                    device=device,
                )
                for _ in range(2)
            )
            queries = fused_attention.rope_and_write(
                qkv, cos, sin, slots, fused.keys[0], fused.values[0], heads
            )
            q, k, v = (part.view(1, tokens, -1, head_dim).transpose(1, 2) for part in qkv.split(widths, -1))
            q, k = apply_rotary_pos_emb(q, k, cos[None], sin[None])
            plain.write(0, slots, k[0].transpose(0, 1), v[0].transpose(0, 1))
            compared = {
                "queries": (queries, q[0].transpose(0, 1)),
                "keys": (fused.keys[0], plain.keys[0]),
                "values": (fused.values[0], plain.values[0]),
            }
            for name, (got, expected) in compared.items():
                why = _disagreement(got, expected.float(), tolerance, "transformers'")
                if why is not None:
                    return f"{name}: {why} ({tokens} tokens)"
    except Exception as error:
        return _reason_unless_fatal(error, "The fused rotary embedding")
    return None


@torch.inference_mode()
def check_causal_bias(device: torch.device, dtype: torch.dtype, *, heads: int, head_dim: int) -> str | None:
    """:func:`~inference.kernels.paged_cache.attend_at_end` with PyTorch's ``causal_lower_right`` against the
    same attention through an explicit mask, computed in float32, for :data:`LATER_CHUNKS`; None when every
    element agrees within the dtype's tolerance, else what differed (then the runner builds the mask)."""
    generator = torch.Generator().manual_seed(0)
    tolerance = TOLERANCE.get(dtype, 1e-2)
    scale = head_dim**-0.5
    try:
        for queries, keys in LATER_CHUNKS:
            q, k, v = (
                torch.randn(1, heads, length, head_dim, generator=generator).to(device)
                for length in (queries, keys, keys)
            )
            got = attend_at_end(q.to(dtype), k.to(dtype), v.to(dtype), scale, bias=True)
            expected = attend_at_end(q, k, v, scale, bias=False)
            why = _disagreement(got, expected, tolerance, "an explicit mask's")
            if why is not None:
                return f"{why} ({queries} queries on {keys} keys)"
    except Exception as error:
        return _reason_unless_fatal(error, "PyTorch's causal attention without a mask")
    return None


@torch.inference_mode()
def verify_graphs(
    graphs: dict[int, Callable[[], torch.Tensor]],
    eager: Callable[[int], torch.Tensor],
    fill: Callable[[int], None],
    tokens: Callable[[int], list[int]],
    dtype: torch.dtype,
) -> str | None:
    """Replay each bucket's graph and run the same step eagerly on the same inputs; None when every bucket
    gives the same greedy tokens and logits within tolerance, else what differed.

    ``fill(bucket)`` writes planted inputs for that many rows; ``graphs[bucket]()`` replays and returns the
    logits; ``eager(bucket)`` runs the step without the graph; ``tokens(bucket)`` reads the greedy tokens the
    last of them wrote. Both write the same new keys and values into the same slots, so the second
    run sees the state the first saw.
    """
    tolerance = TOLERANCE.get(dtype, 1e-2)
    for bucket, replay in sorted(graphs.items()):
        fill(bucket)
        try:
            expected = eager(bucket).float().clone()
            expected_tokens = tokens(bucket)
            got = replay().float().clone()
            got_tokens = tokens(bucket)
        except Exception as error:
            if is_fatal(error):
                raise SelfCheckFailed(
                    "A CUDA graph of the decoding step broke the GPU during its start-up check "
                    f"({_short(error)}); restart with CUDA_GRAPHS=false."
                ) from error
            return f"replaying the graph for {bucket} rows raised {_short(error)}"
        if got_tokens != expected_tokens:
            same = sum(a == b for a, b in zip(got_tokens, expected_tokens))
            return (
                f"the graph for {bucket} rows chose other tokens than the eager step "
                f"({same} of {bucket} alike)"
            )
        scale = float(expected.abs().max()) or 1.0
        difference = float((got - expected).abs().max())
        if not difference <= tolerance * scale:
            return (
                f"the graph for {bucket} rows gave logits {difference:.3g} away from the eager step's "
                f"(allowed {tolerance * scale:.3g})"
            )
    return None
