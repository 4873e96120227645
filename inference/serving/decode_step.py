"""The runner's decoding step at fixed addresses, replayed from CUDA graphs where it can.

    answering rows ──► DecodeInputs.fill: each row's token, position, slot and length written in place
                       into buffers allocated once; rows past the batch, up to its bucket, are padding
                       that reads and writes only a scratch block no request ever holds
                   ──► the language model on the bucket's rows, greedy argmax included: the CUDA graph
                       captured for that bucket replayed, or the same code run eagerly
                   ──► tokens[:rows] to the host: one small copy per step

A decoding step of the real model launches about a thousand kernels, and at small batches the CPU
launching them, not the GPU, sets the pace (bench/RESULTS.md). A CUDA graph replays them all with
one launch. It needs every tensor the step touches at a fixed address and every shape fixed, hence
the buffers and the buckets. Graphs are captured at start-up, once the cache exists, for each bucket
(1, 2, 4, 8, 16, 24, 32 and multiples of 32, up to ``MAX_BATCH_SIZE``), all in one memory pool.

Where graphs cannot be used (no CUDA, ``CUDA_GRAPHS=false``, an attention kernel that reads lengths
on the host, a failed capture, logged once with the reason) the step runs eagerly, unpadded. Captured
graphs are used only after :meth:`DecodeStep.verify` has replayed each against an eager step.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from inference.kernels.checks import TOLERANCE, SelfCheckFailed, is_fatal, short
from inference.kernels.paged_cache import GIB, AttentionBackend, PagedBatch, PagedStorage, block_table_tensor

log = logging.getLogger(__name__)

WARMUP_STEPS = 2  # eager runs on a side stream before each capture, as CUDA graph capture needs


def buckets_up_to(max_rows: int) -> tuple[int, ...]:
    """1, 2, 4, 8, 16, 24, 32, then multiples of 32, capped by (and always including) ``max_rows``."""
    sizes = {1, 2, 4, 8, 16, 24, 32, *range(64, max_rows + 1, 32), max_rows}
    return tuple(sorted(size for size in sizes if size <= max_rows))


@dataclass(frozen=True)
class DecodeRow:
    """What one answering row feeds a decoding step."""

    owner: int  # its request id (the block table is rewritten only when owners or tables change)
    token: int  # the token it decodes
    position: int  # that token's position: also the keys the row has before this step
    slot: int  # the cache slot its new key and value go to
    table: tuple[int, ...]  # its blocks


class DecodeInputs:
    """Every tensor a decoding step reads or writes, allocated once for ``max_rows`` rows."""

    def __init__(
        self, max_rows: int, blocks_per_row: int, scratch_block: int, block_tokens: int, device
    ) -> None:
        self.scratch_slot = scratch_block * block_tokens
        self.scratch_block = scratch_block
        self.ids = torch.zeros(1, max_rows, dtype=torch.long, device=device)
        self.positions = torch.zeros(1, max_rows, dtype=torch.long, device=device)
        self.slots = torch.zeros(max_rows, dtype=torch.long, device=device)
        self.lengths = torch.ones(max_rows, dtype=torch.int32, device=device)
        self.cu_seq_q = torch.arange(max_rows + 1, dtype=torch.int32, device=device)  # one query per row
        self.cu_seq_k = torch.zeros(max_rows + 1, dtype=torch.int32, device=device)
        self.block_table = torch.full(
            (max_rows, blocks_per_row), scratch_block, dtype=torch.int32, device=device
        )
        self.tokens = torch.zeros(max_rows, dtype=torch.long, device=device)  # the step's output
        self.table_owners: tuple | None = None  # whose blocks the table holds, row by row, and which

    def tensors(self) -> list[torch.Tensor]:
        return [
            self.ids,
            self.positions,
            self.slots,
            self.lengths,
            self.cu_seq_q,
            self.cu_seq_k,
            self.block_table,
            self.tokens,
        ]

    def fill(self, rows: Sequence[DecodeRow], bucket: int) -> list[int]:
        """Write ``rows`` into the buffers, padded up to ``bucket`` rows; returns each row's key count."""
        padding = bucket - len(rows)
        owners = tuple((row.owner, row.table) for row in rows) + (None,) * padding
        if owners != self.table_owners:  # the batch changed: rewrite the block table in place
            tables = [row.table for row in rows] + [()] * padding
            table = block_table_tensor(tables, self.block_table.shape[1], fill=self.scratch_block)
            self.block_table[:bucket].copy_(table, non_blocking=True)
            self.table_owners = owners
        # A padding row decodes token 0 at position 0 into the scratch slot and sees only that key.
        lengths = [row.position + 1 for row in rows] + [1] * padding
        host = torch.tensor(
            [
                [row.token for row in rows] + [0] * padding,
                [row.position for row in rows] + [0] * padding,
                [row.slot for row in rows] + [self.scratch_slot] * padding,
                lengths,
                list(itertools.accumulate(lengths)),
            ],
            dtype=torch.long,
        )
        self.ids[0, :bucket].copy_(host[0], non_blocking=True)
        self.positions[0, :bucket].copy_(host[1], non_blocking=True)
        self.slots[:bucket].copy_(host[2], non_blocking=True)
        self.lengths[:bucket].copy_(host[3], non_blocking=True)
        self.cu_seq_k[1 : bucket + 1].copy_(host[4], non_blocking=True)
        return lengths


class DecodeStep:
    """Runs decoding steps of the paged runner: from a captured graph when there is one for the bucket."""

    def __init__(
        self,
        model,
        storage: PagedStorage,
        inputs: DecodeInputs,
        backend: AttentionBackend,
        sliding_window: int | None,
        max_keys: int,
    ) -> None:
        self.model, self.storage, self.inputs = model, storage, inputs
        self.backend, self.sliding_window = backend, sliding_window
        self.max_keys = max_keys  # the most keys a row can have: what a captured step is sized for
        self.buckets: tuple[int, ...] = ()  # set when steps are padded to buckets (graphs, or a test)
        # Per bucket: replays the captured step and returns its logits (where the replays write them).
        self.graphs: dict[int, Callable[[], torch.Tensor]] = {}
        self.logits: torch.Tensor | None = None  # the last step's logits (the benchmarks compare them)

    def bucket_for(self, rows: int) -> int:
        return next((size for size in self.buckets if size >= rows), rows)

    def run(self, rows: Sequence[DecodeRow]) -> list[int]:
        """One greedy token for each row."""
        bucket = self.bucket_for(len(rows))
        lengths = self.inputs.fill(rows, bucket)
        replay = self.graphs.get(bucket)
        if replay is not None:
            self.logits = replay()
        else:
            self._forward(bucket, lengths)
        return self.inputs.tokens[: len(rows)].tolist()

    def _forward(self, bucket: int, lengths: list[int]) -> torch.Tensor:
        inputs = self.inputs
        batch = PagedBatch(
            storage=self.storage,
            slots=inputs.slots[:bucket],
            cu_seq_q=inputs.cu_seq_q[: bucket + 1],
            cu_seq_k=inputs.cu_seq_k[: bucket + 1],
            lengths=inputs.lengths[:bucket],
            block_table=inputs.block_table[:bucket],
            q_lengths=[1] * bucket,
            k_lengths=lengths,
            backend=self.backend,
            sliding_window=self.sliding_window,
        )
        # No long_rope hint: a decoding row of a prompt past LongRoPE's switch is past it itself.
        logits = self.model(
            input_ids=inputs.ids[:, :bucket],
            position_ids=inputs.positions[:, :bucket],
            use_cache=False,
            paged_batch=batch,
        ).logits[0]
        self.logits = logits
        inputs.tokens[:bucket].copy_(logits.argmax(-1))
        return logits

    def can_capture(self) -> bool:
        return self.inputs.ids.device.type == "cuda" and self.backend.graph_safe

    def capture(self, max_rows: int) -> str | None:
        """Capture a graph per bucket, largest first, in one memory pool; None, or why it failed."""
        if not self.backend.graph_safe:
            return f"the {self.backend.name} attention kernel sizes its work on the host"
        device = self.inputs.ids.device
        buckets = buckets_up_to(max_rows)
        started = time.perf_counter()
        try:
            memory_before = torch.cuda.memory_allocated(device)
            pool = torch.cuda.graph_pool_handle()
            for bucket in reversed(buckets):
                self._capture_one(bucket, pool)
            torch.cuda.synchronize(device)
        except Exception as error:  # any failure: decode eagerly, as before
            self.graphs.clear()
            return f"the capture failed ({type(error).__name__}: {error})"[:300]
        self.buckets = buckets
        log.info(
            "CUDA graphs: %d decoding steps captured (batch buckets %s) in %.1f s, %.2f GiB (CUDA_GRAPHS)",
            len(buckets),
            ", ".join(map(str, buckets)),
            time.perf_counter() - started,
            (torch.cuda.memory_allocated(device) - memory_before) / GIB,
        )
        return None

    def _capture_one(self, bucket: int, pool) -> None:
        device = self.inputs.ids.device
        self.inputs.fill([], bucket)  # every row padding: reads and writes only the scratch block
        lengths = [self.max_keys] * bucket  # the host-side sizes a captured step must allow
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._forward(bucket, lengths)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            logits = self._forward(bucket, lengths)

        def replay() -> torch.Tensor:
            graph.replay()
            return logits

        self.graphs[bucket] = replay

    def verify(self, num_blocks: int) -> str | None:
        """Replay every captured bucket against the same step run eagerly (:func:`verify_graphs`), on rows
        planted in blocks ``0 .. num_blocks - 1`` filled with random keys and values; None when all agree.

        No request holds a block yet, and a request's prefill writes every key it later reads, so the
        planted values are never seen by anyone.
        """
        block_tokens = self.storage.block_tokens
        device = self.inputs.ids.device
        planted_blocks = min(num_blocks, max(self.graphs, default=0) + 5)  # the blocks the rows below read
        keys_values = torch.Generator(device=device).manual_seed(0)
        for layer in self.storage.keys + self.storage.values:
            layer[:planted_blocks].normal_(generator=keys_values)
        generator = torch.Generator().manual_seed(0)
        vocab = int(self.model.config.vocab_size)
        planted: dict[int, list[DecodeRow]] = {}

        def fill(bucket: int) -> None:
            rows = []
            for i in range(bucket):
                # Each row's new key goes to its own slot: the offsets within a block differ row by row.
                position = min(block_tokens * (i % 4) + i % block_tokens, self.max_keys - 1)
                table = tuple((i + j) % num_blocks for j in range(position // block_tokens + 1))
                slot = table[-1] * block_tokens + position % block_tokens
                token = int(torch.randint(vocab, (), generator=generator))
                rows.append(DecodeRow(-1 - i, token, position, slot, table))
            planted[bucket] = rows
            self.inputs.fill(rows, bucket)

        def eager(bucket: int) -> torch.Tensor:
            return self._forward(bucket, [row.position + 1 for row in planted[bucket]])

        def tokens(bucket: int) -> list[int]:
            return self.inputs.tokens[:bucket].tolist()

        try:
            return verify_graphs(self.graphs, eager, fill, tokens, self.storage.keys[0].dtype)
        finally:
            self.inputs.table_owners = None  # the next real step rewrites the block table


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
                    f"({short(error)}); restart with CUDA_GRAPHS=false."
                ) from error
            return f"replaying the graph for {bucket} rows raised {short(error)}"
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
