"""The runner: the same answers as transformers' own greedy ``generate`` on the same weights, whatever
joins, leaves or is prefilled in chunks, and nobody's cache moved when that happens; its start-up
(kernel choice, cache sizing, checked CUDA graphs) and its failures.

Each comparison records, for every request, its greedy tokens and the logits they came from (an
``lm_head`` hook), and compares logits within float32 tolerances and tokens exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections import defaultdict

import pytest
import torch
from PIL import Image
from torch.nn.attention.bias import causal_upper_left
from transformers.models.phi3.modeling_phi3 import Phi3Attention, Phi3RMSNorm

from inference import phi3v
from inference.decoding import IncrementalDecoder
from inference.kernels import attention_backends, fused_attention, norms
from inference.kernels.attention_backends import PLAIN, FusedBackend, TritonBackend
from inference.kernels.fused_attention import FusedRopeAttention
from inference.kernels.norms import FusedRMSNorm
from inference.kernels.paged_cache import PagedStorage
from inference.loading import LoadedModel, load
from inference.prepare import Prepared
from inference.serving import cache_size
from inference.serving import startup as startup_module
from inference.serving.cache_size import CacheDoesNotFit
from inference.serving.runner import ModelRunner
from inference.serving.startup import CALIBRATION_STEPS, start_runner
from inference.types import EngineConfig, Request, Task, Turn
from tests.inference.conftest import OFFICIAL, TINY_CHECKPOINT
from tests.inference.phi3v.test_modeling_phi3v import random_model, tiny_config

NEW_TOKENS = 12


def tiny(**overrides) -> EngineConfig:
    settings = dict(  # float32 weights on every CPU: the comparisons are exact to 1e-4
        model_id=str(TINY_CHECKPOINT),
        device="cpu",
        dtype="float32",
        quantization="none",
        attn_implementation="sdpa",
        max_new_tokens=NEW_TOKENS,
    )
    return EngineConfig(**(settings | overrides))


class Recorder:
    """Drives a runner and keeps, per request, the tokens it got and the logits behind them."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self.tokens: dict[int, list[int]] = defaultdict(list)
        self.logits: dict[int, list[torch.Tensor]] = defaultdict(list)
        self.emitted: list[list[int]] = []  # which requests got a token, step by step
        self._rows: list[torch.Tensor] = []
        runner.loaded.model.lm_head.register_forward_hook(
            lambda _m, _i, out: self._rows.extend(out.reshape(-1, out.shape[-1]))
        )

    def step(self, admit=(), abort=()) -> list:
        self._rows = []
        events = self.runner.step(list(admit), list(abort))
        self.emitted.append([event.request_id for event in events if event.error is None])
        for event, row in zip([e for e in events if e.error is None], self._rows):
            self.tokens[event.request_id].append(int(row.argmax()))
            self.logits[event.request_id].append(row.clone())
        return events

    def finish(self) -> None:
        while self.runner.running_ids:
            self.step()


def same_answers(a: Recorder, a_id: int, b: Recorder, b_id: int) -> None:
    assert a.tokens[a_id] == b.tokens[b_id], f"request {a_id}"
    torch.testing.assert_close(torch.stack(a.logits[a_id]), torch.stack(b.logits[b_id]), atol=1e-4, rtol=1e-4)


def image(width: int, height: int, seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(height, width, 3, generator=g) * 255).to(torch.uint8).numpy(), "RGB")


@pytest.fixture(scope="module")
def requests():
    return [
        Request(Task.DESCRIBE, (image(90, 60, 1),), question="What is this?"),
        Request(Task.OCR, (image(300, 500, 2),)),
        # Past LongRoPE's switch (4,096 positions): 4,944 and 4,850 tokens.
        Request(Task.COMPARE, (image(200, 120, 3), image(64, 64, 4))),
        Request(Task.COMPARE, (image(120, 200, 5), image(90, 60, 6)), question="Which is brighter?"),
    ]


def paged(**overrides) -> ModelRunner:
    """The runner on the tiny checkpoint, writing every token up to its limit (as the reference does)."""
    config = tiny(**overrides)
    runner = start_runner(load(config), config)
    runner.stop_ids = set()
    return runner


class Generated:
    """transformers' own greedy ``generate`` on the tiny checkpoint: the reference every answer must equal."""

    def __init__(self) -> None:
        self.loaded = load(tiny())
        self.answers: dict[int, tuple[list[int], torch.Tensor]] = {}

    def answer(self, request: Request) -> Recorder:
        """A recorder-shaped answer (request id 1) with the tokens and logits ``generate`` gives."""
        key = id(request)
        if key not in self.answers:
            from inference.prepare import Preparer

            prepared = Preparer(self.loaded.processor, tiny(), token_budget=1 << 20).prepare(request)
            self.answers[key] = generate(self.loaded.model, prepared)
        tokens, logits = self.answers[key]
        recorder = Recorder.__new__(Recorder)
        recorder.tokens = {1: tokens}
        recorder.logits = {1: list(logits)}
        return recorder


@pytest.fixture(scope="module")
def reference() -> Generated:
    return Generated()


def alone(runner: ModelRunner, request: Request) -> Recorder:
    recorder = Recorder(runner)
    recorder.step([(1, recorder.runner.prepare(request))])
    recorder.finish()
    return recorder


def test_one_request_equals_generate_in_one_piece_or_in_chunks(requests, reference):
    expected = reference.answer(requests[0])
    assert len(expected.tokens[1]) == NEW_TOKENS and len(set(expected.tokens[1])) > 1
    for chunk in (4096, 500, 97):  # in one piece, and in 4 and 20 chunks
        same_answers(alone(paged(prefill_chunk_tokens=chunk), requests[0]), 1, expected, 1)


def test_a_batch_equals_each_request_alone(requests, reference):
    together = Recorder(paged(prefill_chunk_tokens=1500))
    # Requests of one rope regime, as the scheduler batches them: two short prompts, or two long ones.
    for batch in (requests[:2], requests[2:]):
        together = Recorder(paged(prefill_chunk_tokens=1500))
        together.step([(i + 1, together.runner.prepare(r)) for i, r in enumerate(batch)])
        together.finish()
        for i, request in enumerate(batch):
            same_answers(together, i + 1, reference.answer(request), 1)


def test_joining_mid_answer_is_prefilled_in_chunks_while_the_running_answer_goes_on(requests, reference):
    recorder = Recorder(paged(prefill_chunk_tokens=700))
    runner = recorder.runner
    recorder.step([(1, runner.prepare(requests[0]))])  # 1,943 tokens: prefilled in three chunks
    recorder.step()
    recorder.step()
    assert recorder.emitted[-1] == [1]  # its first token
    recorder.step()
    second = runner.prepare(requests[1])
    recorder.step([(2, second)])
    chunks = -(-second.prompt_tokens // 700)
    for _ in range(chunks - 1):
        recorder.step()
    # Request 1 got a token at every step while request 2's prompt went in, 700 tokens at a time.
    assert recorder.emitted[-chunks:] == [[1]] * (chunks - 1) + [[1, 2]]
    recorder.finish()
    for rid, request in ((1, requests[0]), (2, requests[1])):
        same_answers(recorder, rid, reference.answer(request), 1)


def test_on_a_cpu_a_newcomers_prompt_holds_up_a_running_answer_only_a_few_seconds_a_pass(requests, reference):
    from inference.serving.runner import ANSWER_PAUSE_S

    recorder = Recorder(paged(prefill_chunk_tokens=4096))
    runner = recorder.runner
    assert runner.pace is not None  # the CPU's pace, measured at the start
    runner.pace = dataclasses.replace(runner.pace, prompt_token_s=ANSWER_PAUSE_S / 300)  # 300 tokens in 3 s
    recorder.step([(1, runner.prepare(requests[0]))])  # alone: its whole prompt in one pass
    assert recorder.emitted[-1] == [1]
    second = runner.prepare(requests[1])
    recorder.step([(2, second)])
    passes = -(-second.prompt_tokens // 300)
    for _ in range(passes - 1):
        recorder.step()
    # Request 1 got a token at every pass while request 2's prompt went in, 300 tokens at a time.
    assert passes > 1 and recorder.emitted[-passes:] == [[1]] * (passes - 1) + [[1, 2]]
    assert runner.prompt_tokens_per_pass(answering=False) == 4096
    recorder.finish()
    for rid, request in ((1, requests[0]), (2, requests[1])):
        same_answers(recorder, rid, reference.answer(request), 1)  # small passes change no answer


def test_leaving_mid_answer_changes_nothing_for_the_others(requests, reference):
    recorder = Recorder(paged())
    runner = recorder.runner
    recorder.step([(1, runner.prepare(requests[0])), (2, runner.prepare(requests[1]))])
    for _ in range(3):
        recorder.step()
    free = runner.pool.free_blocks
    recorder.step(abort=[1])
    assert runner.running_ids == [2] and runner.pool.free_blocks > free  # its blocks came back
    recorder.finish()
    same_answers(recorder, 2, reference.answer(requests[1]), 1)
    assert runner.pool.free_blocks == runner.pool.num_blocks  # everything returned at the end


def test_a_join_or_a_leave_moves_nothing_of_the_running_request(requests):
    runner = paged(prefill_chunk_tokens=800)
    storage = [t.data_ptr() for t in runner.storage.keys + runner.storage.values]
    runner.step([(1, runner.prepare(requests[0]))], [])
    while runner.rows[1].prefilling:
        runner.step([], [])
    row = runner.rows[1]
    table, written = row.table, row.next_position

    def contents():
        blocks = torch.tensor(table)
        return [
            layer[blocks].flatten(0, 1)[:written].clone()
            for layer in runner.storage.keys + runner.storage.values
        ]

    before = contents()
    runner.step([(2, runner.prepare(requests[1])), (3, runner.prepare(requests[0]))], [])  # join
    runner.step([], [2])  # leave
    runner.step([], [])
    assert runner.rows[1].table == table
    for old, new in zip(before, contents()):
        assert torch.equal(old, new)  # bit for bit where it was
    assert [t.data_ptr() for t in runner.storage.keys + runner.storage.values] == storage


def test_a_decoding_step_reads_its_inputs_from_fixed_addresses(requests):
    runner = paged(prefill_chunk_tokens=4096)  # each prompt in one piece
    seen = []
    runner.loaded.model.register_forward_pre_hook(
        lambda _m, _a, kwargs: seen.append(kwargs), with_kwargs=True
    )
    runner.step([(1, runner.prepare(requests[0]))], [])
    runner.step([], [])
    runner.step([(2, runner.prepare(requests[1]))], [])
    runner.step([], [])
    runner.step([], [])
    decoding = [kwargs for kwargs in seen if "input_ids" in kwargs]
    assert len(decoding) == 3
    buffers = runner.decode_inputs
    for kwargs in decoding:
        batch = kwargs["paged_batch"]
        assert kwargs["input_ids"].data_ptr() == buffers.ids.data_ptr()
        assert kwargs["position_ids"].data_ptr() == buffers.positions.data_ptr()
        for name in ("slots", "lengths", "cu_seq_q", "cu_seq_k", "block_table"):
            assert getattr(batch, name).data_ptr() == getattr(buffers, name).data_ptr(), name
    assert [owner for owner, _ in buffers.table_owners] == [1, 2]


def test_every_prompt_token_is_prefilled_once_and_images_are_encoded_once(requests):
    runner = paged(prefill_chunk_tokens=300)
    tower = runner.loaded.model.model.vision_embed_tokens
    calls = []
    tower.register_forward_hook(lambda *_: calls.append(1))
    prepared = runner.prepare(requests[2])  # two images
    runner.step([(1, prepared)], [])
    steps = 1
    while runner.rows[1].prefilling:
        runner.step([], [])
        steps += 1
    assert steps == -(-prepared.prompt_tokens // 300)
    assert len(calls) == 1  # both images, once, before the first chunk
    row = runner.rows[1]
    assert row.next_position == prepared.prompt_tokens and row.generated == 1  # its first token is out


# -- Another shape: three layers, 4 crops (Phi-3.5-vision's setting), a random model ---------------


def random_loaded(config: phi3v.Phi3VConfig, num_crops: int, seed: int) -> LoadedModel:
    processor = phi3v.Phi3VProcessor.from_pretrained(TINY_CHECKPOINT, num_crops=num_crops)
    model = random_model(copy.deepcopy(config), seed=seed)  # the paged runner changes its model's config
    return LoadedModel(model, processor, torch.device("cpu"), torch.float32, "sdpa", TINY_CHECKPOINT)


def test_three_layers_and_four_crops_equal_generate(requests):
    config = tiny_config(
        num_hidden_layers=3, attn_implementation="sdpa", original_max_position_embeddings=4096
    )
    engine_config = tiny(prefill_chunk_tokens=200)
    runner = start_runner(random_loaded(config, 4, seed=5), engine_config)
    runner.stop_ids = set()
    recorder = Recorder(runner)
    recorder.step([(1, runner.prepare(requests[1]))])
    while 1 not in recorder.emitted[-1]:
        recorder.step()
    recorder.step()
    recorder.step([(2, runner.prepare(requests[2]))])  # joins while the first answers
    recorder.finish()
    reference = random_loaded(config, 4, seed=5)
    for rid, request in ((1, requests[1]), (2, requests[2])):
        tokens, logits = generate(reference.model, runner.prepare(request))
        assert len(set(tokens)) > 1  # a model that says something, not one token over and over
        assert recorder.tokens[rid] == tokens
        torch.testing.assert_close(torch.stack(recorder.logits[rid]), logits, atol=1e-4, rtol=1e-4)


# -- LongRoPE: the tiny config switches from short to long factors past 64 positions ---------------


def text_prompt(length: int, seed: int, new_tokens: int) -> Prepared:
    ids = torch.randint(3, 500, (length,), generator=torch.Generator().manual_seed(seed))
    return Prepared(input_ids=ids, pixel_values=None, image_sizes=None, max_new_tokens=new_tokens)


def generate(model, prepared: Prepared) -> tuple[list[int], torch.Tensor]:
    """transformers' own greedy loop: the tokens and the logits of each (every token up to the limit)."""
    out = model.generate(
        input_ids=prepared.input_ids[None],
        pixel_values=prepared.pixel_values,
        image_sizes=prepared.image_sizes,
        max_new_tokens=prepared.max_new_tokens,
        min_new_tokens=prepared.max_new_tokens,
        do_sample=False,
        eos_token_id=[32000],
        pad_token_id=32000,
        output_logits=True,
        return_dict_in_generate=True,
    )
    return out.sequences[0, prepared.prompt_tokens :].tolist(), torch.cat(out.logits)


@pytest.mark.parametrize(
    "length, new_tokens",
    # short all along; crossing the switch while answering; long from the start
    [(40, 10), (60, 10), (100, 6)],
)
def test_chunks_keep_longrope_exact(length, new_tokens):
    config = tiny_config(attn_implementation="sdpa")
    prepared = text_prompt(length, seed=length, new_tokens=new_tokens)
    tokens, logits = generate(random_model(copy.deepcopy(config), seed=7), prepared)
    engine_config = tiny(prefill_chunk_tokens=25, max_new_tokens=new_tokens)
    runner = start_runner(random_loaded(config, 16, seed=7), engine_config)
    runner.stop_ids = set()  # the reference is made to write every token too
    recorder = Recorder(runner)
    recorder.step([(1, prepared)])
    recorder.finish()
    assert recorder.tokens[1] == tokens
    torch.testing.assert_close(torch.stack(recorder.logits[1]), logits, atol=1e-4, rtol=1e-4)


def test_without_the_long_factors_a_chunked_long_prompt_would_answer_differently():
    """The check above can fail: chunks of a long prompt told nothing use short factors and differ."""
    config = tiny_config(attn_implementation="sdpa")
    prepared = text_prompt(100, seed=100, new_tokens=1)
    answers = []
    for long_rope in (True, False):
        runner = start_runner(
            random_loaded(config, 16, seed=7), tiny(prefill_chunk_tokens=25, max_new_tokens=1)
        )
        recorder = Recorder(runner)
        runner._join(1, prepared)
        runner.rows[1] = dataclasses.replace(runner.rows[1], long_rope=long_rope)
        recorder.finish()
        answers.append(recorder.logits[1][0])
    assert not torch.allclose(answers[0], answers[1], atol=1e-3)


# -- Memory -------------------------------------------------------------------------------------


def test_oom_in_a_prefill_fails_only_the_newcomer(requests):
    runner = paged(prefill_chunk_tokens=600)
    runner.step([(1, runner.prepare(requests[0]))], [])
    while runner.rows[1].prefilling:
        runner.step([], [])
    free = runner.pool.free_blocks
    with OutOfMemoryAt(runner.pictures, "prompt_embeds"):
        events = runner.step([(2, runner.prepare(requests[1]))], [])
    assert [(e.request_id, type(e.error).__name__) for e in events] == [(2, "OutOfMemory")]
    assert runner.running_ids == [1] and runner.pool.free_blocks == free
    assert [e.request_id for e in runner.step([], [])] == [1]  # the running answer goes on


def test_oom_while_only_decoding_fails_the_batch_and_frees_every_block(requests):
    runner = paged()
    runner.step([(1, runner.prepare(requests[0]))], [])
    with OutOfMemoryAt(runner.loaded.model, "forward"):
        events = runner.step([], [])
    assert [(e.request_id, type(e.error).__name__) for e in events] == [(1, "OutOfMemory")]
    assert runner.running_ids == [] and runner.pool.free_blocks == runner.pool.num_blocks


@pytest.fixture
def blocks_of_256(monkeypatch):
    """The sizing arithmetic below is written in blocks of 256 tokens (a GPU's size); the CPU's are 16."""
    for module in ("inference.serving.runner", "inference.serving.startup"):
        monkeypatch.setattr(f"{module}.block_tokens_for", lambda device_type: 256)


def test_token_budget_auto_on_the_cpu_takes_half_the_free_ram_capped(monkeypatch, caplog, blocks_of_256):
    per_token = 2 * 2 * 4 * 16 * 4  # K and V, 2 layers, 4 KV heads of 16, float32: 1 KiB
    monkeypatch.setattr("inference.serving.startup.available_ram", lambda: 20 * 1024**2)
    with caplog.at_level(logging.INFO, logger="inference.serving.startup"):
        runner = start_runner(load(tiny()), tiny(max_batch_size=8))
    # 10 MiB: 40 blocks of 256 KiB, less the scratch block
    assert runner.token_budget == (10 * 1024**2 // (256 * per_token) - 1) * 256 == 9984
    assert runner.pool.num_blocks == 39 and runner.storage.keys[0].shape[0] == 40
    assert runner.preparer.token_budget == 9984  # conversations are trimmed to the same budget
    full = 2509 + cache_size.PROMPT_TEXT_TOKENS + NEW_TOKENS  # 16 crops and the longest answer
    assert runner.full_request_tokens == full and runner.people == 9984 // 2560 == 3  # whole blocks each
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("KV cache")]
    assert line.startswith(
        "KV cache: 9984 tokens (TOKEN_BUDGET=auto), 0.0 GiB allocated once in 40 blocks of 256; "
        "room for 3 people at once with an image at 16 crops and a 12-token answer each (MAX_BATCH_SIZE=8)"
    )
    monkeypatch.setattr("inference.serving.startup.available_ram", lambda: 64 * 1024**3)
    assert start_runner(load(tiny()), tiny()).token_budget == cache_size.CPU_TOKEN_CAP  # a large machine


def test_a_machine_that_cannot_hold_one_request_stops_the_start_with_one_line(monkeypatch, blocks_of_256):
    monkeypatch.setattr("inference.serving.startup.available_ram", lambda: 4 * 1024**2)
    with pytest.raises(CacheDoesNotFit) as error:
        start_runner(load(tiny()), tiny())
    assert str(error.value).startswith("The KV cache has room for 1792 tokens in half the free RAM (0.0 GiB)")
    assert str(error.value).endswith(
        "use QUANTIZATION=4bit, a smaller NUM_CROPS or MAX_NEW_TOKENS, or a larger GPU."
    )


def test_an_explicit_token_budget_is_kept_and_the_engine_schedules_within_it(blocks_of_256):
    from inference.serving.engine import LocalEngine

    runner = start_runner(load(tiny()), tiny(token_budget=5000))
    assert runner.token_budget == 5000 and runner.blocks_per_row == runner.pool.num_blocks == 20

    async def started() -> LocalEngine:
        engine = LocalEngine(tiny(token_budget=None), runner_factory=lambda config: runner)
        await engine.start()
        return engine

    import asyncio

    engine = asyncio.run(started())
    assert engine.scheduler.token_budget == 5000
    asyncio.run(engine.stop())


class FakeGpuMemory:
    """A GPU's memory as the runner reads it, so the warm-up and the sizing run here on the CPU."""

    def __init__(self, total: int, in_use: int, activations: int) -> None:
        self.total, self.in_use, self.activations = total, in_use, activations
        self.measured = 0

    def free_and_total(self) -> tuple[int, int]:
        return self.total - self.in_use, self.total

    def start_peak(self) -> int:
        self.measured += 1
        return self.in_use

    def peak(self) -> int:
        return self.in_use + self.activations


def test_token_budget_auto_on_a_gpu_warms_up_then_takes_the_fraction_left(
    monkeypatch, caplog, requests, reference, blocks_of_256
):
    gib = 1024**3
    memory = FakeGpuMemory(total=int(0.5 * gib), in_use=int(0.1 * gib), activations=int(0.05 * gib))
    monkeypatch.setattr("inference.serving.startup.gpu_memory_of", lambda device: memory)
    tower_calls = []
    loaded = load(tiny())
    loaded.model.model.vision_embed_tokens.register_forward_hook(lambda *_: tower_calls.append(1))
    with caplog.at_level(logging.INFO, logger="inference.serving.startup"):
        runner = start_runner(loaded, tiny(max_images=4))
    runner.stop_ids = set()
    assert memory.measured == 1 and len(tower_calls) == 1  # four images at 16 crops, through the tower once
    per_token = 2 * 2 * 4 * 16 * 4
    usable = 0.9 * memory.total - memory.in_use - memory.activations
    assert runner.token_budget == (int(usable // (256 * per_token)) - 1) * 256
    warm_up = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Warm-up")]
    assert warm_up == [
        "Warm-up: 4 images at 16 crops and a 2048-token prefill chunk peaked at 0.05 GiB of activations"
    ]
    assert runner.storage.keys[0].shape[0] == runner.token_budget // 256 + 1  # the warm-up's cache is gone
    same_answers(alone(runner, requests[0]), 1, reference.answer(requests[0]), 1)

    memory.total = int(0.15 * gib)  # 0.9 of it is less than what is in use: not one request fits
    with pytest.raises(
        CacheDoesNotFit, match="GPU_MEMORY_FRACTION=0.9 of the GPU's 0.1 GiB, after the .* GiB in use"
    ):
        start_runner(load(tiny()), tiny(max_images=4))


def test_the_allocation_failing_ends_the_start_with_one_line(monkeypatch):
    def full(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(PagedStorage, "__init__", full)
    with pytest.raises(CacheDoesNotFit, match="set TOKEN_BUDGET|use QUANTIZATION"):
        start_runner(load(tiny()), tiny(token_budget=4096))


# -- Start-up self-checks: stand-ins for the CUDA kernels and graphs, on the CPU -------------------


def fused_as_plain(q, keys, values, batch, scale):
    return PLAIN.attend(q, keys, values, dataclasses.replace(batch, backend=PLAIN), scale)


def gather_decode(*args):
    return attention_backends.gather_decode(*args)


def failing_kernel(*args):
    raise RuntimeError("FlashAttention only supports Ampere GPUs or newer.")


def breaking_kernel(*args):
    raise RuntimeError("CUDA error: an illegal memory access was encountered")


def drops_a_key(q, keys, values, table, lengths, longest, batch, scale):
    """Almost right: rows of a few hundred keys lose their newest one (a check of short rows misses it)."""
    shorter = lengths - ((lengths > 100) & (lengths < 1000)).int()
    return attention_backends.gather_decode(q, keys, values, table, shorter, longest, batch, scale)


def wrong_kernel(*args):
    return attention_backends.gather_decode(*args) + 1


TIMES_MS = {"fused": 1.0, "triton": 2.0, "plain": 5.0}


@pytest.fixture
def planted_kernels(monkeypatch):
    """Every kernel 'exists' here; each one's time is planted (a CPU's timings of stand-ins mean nothing)."""
    for backend in (FusedBackend, TritonBackend):
        monkeypatch.setattr(backend, "runs_here", lambda self, device, dtype: True)
    last_run = []
    original = attention_backends._Planted.run

    def run(self, name, backend):
        last_run[:] = [backend.name]
        return original(self, name, backend)

    def time_ms(call, device):
        call()
        return TIMES_MS[last_run[0]]

    monkeypatch.setattr(attention_backends._Planted, "run", run)
    monkeypatch.setattr(attention_backends, "time_ms", time_ms)

    def plant(fused, triton):
        monkeypatch.setattr(FusedBackend, "attend", lambda self, *args: fused(*args))
        monkeypatch.setattr(TritonBackend, "decode", lambda self, *args: triton(*args))

    return plant


@pytest.mark.parametrize(
    "fused, triton, chosen, refused",
    [
        (fused_as_plain, gather_decode, "fused", {}),
        (
            failing_kernel,
            gather_decode,
            "triton",
            {"fused": "RuntimeError: FlashAttention only supports Ampere"},
        ),
        (fused_as_plain, drops_a_key, "fused", {"triton": "values differ from the plain kernel's"}),
        (failing_kernel, wrong_kernel, "plain", {"fused": "RuntimeError", "triton": "values differ"}),
    ],
)
def test_the_fastest_kernel_that_agrees_with_the_plain_one_is_chosen(
    planted_kernels, caplog, requests, reference, fused, triton, chosen, refused
):
    planted_kernels(fused, triton)
    with caplog.at_level(logging.INFO, logger="inference"):
        runner = paged()
    assert runner.attention.name == chosen
    assert set(runner.attention_choice.refused) == set(refused)
    for kernel, why in refused.items():
        assert why in runner.attention_choice.refused[kernel]
        [warning] = [
            r for r in caplog.records if f"The {kernel} paged attention kernel failed" in r.getMessage()
        ]
        assert warning.levelname == "WARNING" and why in warning.getMessage()
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Attention kernel:")]
    assert line.startswith(f"Attention kernel: {chosen}, ") and f"{chosen} {TIMES_MS[chosen]:.2f} ms" in line
    assert f"{chosen} attention kernel ({TIMES_MS[chosen]:.2f} ms)" in runner.attention_text
    same_answers(alone(runner, requests[0]), 1, reference.answer(requests[0]), 1)  # and it answers right


def test_a_kernel_that_breaks_the_device_ends_the_start(planted_kernels):
    from inference.kernels.checks import SelfCheckFailed

    planted_kernels(breaking_kernel, gather_decode)
    with pytest.raises(
        SelfCheckFailed, match="The fused attention kernel broke the GPU during its start-up check"
    ):
        paged()


def test_the_runner_uses_the_fused_norm_after_its_check(caplog, requests, reference):
    with caplog.at_level(logging.INFO, logger="inference.serving.startup"):
        runner = paged()
    assert runner.fused_norms
    assert all(type(m) is FusedRMSNorm for m in runner.loaded.model.modules() if isinstance(m, Phi3RMSNorm))
    assert any(r.getMessage().startswith("RMSNorm: fused") for r in caplog.records)
    same_answers(alone(runner, requests[0]), 1, reference.answer(requests[0]), 1)


def test_a_prompts_later_chunks_attend_without_a_mask_after_the_check(caplog):
    with caplog.at_level(logging.INFO, logger="inference.serving.startup"):
        runner = paged()
    assert runner.causal_bias
    assert any(
        r.getMessage().startswith(
            "A prompt's later chunks: PyTorch's causal attention without a mask (checked on"
        )
        for r in caplog.records
    )


def test_later_chunks_build_their_mask_when_attention_without_one_fails_its_check(
    monkeypatch, caplog, requests, reference
):
    """Aligned to the keys' start instead of their end, every later chunk would see the wrong keys."""
    monkeypatch.setattr(attention_backends, "causal_lower_right", causal_upper_left)
    with caplog.at_level(logging.INFO, logger="inference.serving.startup"):
        runner = paged(prefill_chunk_tokens=97)
    assert not runner.causal_bias
    [warning] = [
        r for r in caplog.records if r.getMessage().startswith("A prompt's later chunks: attention th")
    ]
    assert warning.levelname == "WARNING" and "values differ from an explicit mask's" in warning.getMessage()
    same_answers(alone(runner, requests[0]), 1, reference.answer(requests[0]), 1)


def test_a_fused_norm_that_fails_its_check_leaves_transformers_own(monkeypatch, caplog, requests, reference):
    def epsilon_too_large(self, hidden):
        return self.weight * torch.nn.functional.rms_norm(hidden, self.weight.shape, eps=0.1)

    monkeypatch.setattr(norms.FusedRMSNorm, "forward", epsilon_too_large)
    with caplog.at_level(logging.INFO, logger="inference.serving.startup"):
        runner = paged()
    assert not runner.fused_norms
    assert all(type(m) is Phi3RMSNorm for m in runner.loaded.model.modules() if isinstance(m, Phi3RMSNorm))
    [warning] = [r for r in caplog.records if r.getMessage().startswith("RMSNorm: transformers' own")]
    assert (
        warning.levelname == "WARNING" and "values differ from transformers' RMSNorm" in warning.getMessage()
    )
    same_answers(alone(runner, requests[0]), 1, reference.answer(requests[0]), 1)


def test_fused_norms_off_means_no_check_and_transformers_norms(monkeypatch):
    monkeypatch.setattr(startup_module, "check_fused_norm", lambda *args: pytest.fail("checked"))
    runner = paged(fused_norms=False)
    assert not runner.fused_norms
    assert all(type(m) is Phi3RMSNorm for m in runner.loaded.model.modules() if isinstance(m, Phi3RMSNorm))


def test_the_runner_uses_the_fused_rope_where_triton_runs_after_its_check(monkeypatch, requests, reference):
    from tests.inference.kernels.test_fused_rope import rope_in_torch

    monkeypatch.setattr(startup_module, "triton_runs_here", lambda device: True)
    monkeypatch.setattr(fused_attention, "rope_and_write", rope_in_torch)
    runner = paged()
    assert runner.fused_rope and "fused RMSNorm and rotary (checked)" in runner.attention_text
    assert all(type(layer.self_attn) is FusedRopeAttention for layer in runner.loaded.model.model.layers)
    same_answers(alone(runner, requests[0]), 1, reference.answer(requests[0]), 1)


def test_a_fused_rope_that_fails_its_check_leaves_transformers_attention(monkeypatch, caplog):
    from tests.inference.kernels.test_fused_rope import sine_backwards

    monkeypatch.setattr(startup_module, "triton_runs_here", lambda device: True)
    monkeypatch.setattr(fused_attention, "rope_and_write", sine_backwards)
    with caplog.at_level(logging.INFO, logger="inference.serving.startup"):
        runner = paged()
    assert not runner.fused_rope and "fused RMSNorm (checked)" in runner.attention_text
    assert all(type(layer.self_attn) is Phi3Attention for layer in runner.loaded.model.model.layers)
    [warning] = [r for r in caplog.records if r.getMessage().startswith("Rotary embedding and KV write: tra")]
    assert warning.levelname == "WARNING" and "queries: " in warning.getMessage()


@pytest.mark.parametrize("why", ["no Triton here", "turned off"])
def test_without_triton_or_turned_off_the_rope_is_not_checked(monkeypatch, why):
    monkeypatch.setattr(startup_module, "check_fused_rope", lambda *args, **kwargs: pytest.fail("checked"))
    if why == "turned off":
        monkeypatch.setattr(startup_module, "triton_runs_here", lambda device: True)
    runner = paged(fused_rope=why != "turned off")
    assert not runner.fused_rope
    assert all(type(layer.self_attn) is Phi3Attention for layer in runner.loaded.model.model.layers)


def test_the_check_uses_the_models_window_and_long_rows(planted_kernels):
    """A kernel that ignores the sliding window is refused when the model has one shorter than the rows."""

    def no_window(q, keys, values, table, lengths, longest, batch, scale):
        return attention_backends.gather_decode(
            q, keys, values, table, lengths, longest, dataclasses.replace(batch, sliding_window=None), scale
        )

    planted_kernels(fused_as_plain, no_window)
    loaded = load(tiny())
    loaded.model.config.sliding_window = 2048  # shorter than the check's rows of 2,600 and 4,400 keys
    runner = start_runner(loaded, tiny())
    assert "values differ" in runner.attention_choice.refused["triton"]
    assert runner.attention.name == "fused"


class PlantedGraphs:
    """Stand-ins for captured CUDA graphs: each bucket's 'replay' runs the eager step, then (if asked)
    shifts the logits or raises, as a graph captured wrongly would."""

    def __init__(self, shift: float = 0.0, error: Exception | None = None) -> None:
        self.shift, self.error, self.replays = shift, error, 0

    def capture(self, step, max_rows: int):
        from inference.serving.decode_step import buckets_up_to

        def replay_for(bucket):
            def replay():
                self.replays += 1
                if self.error is not None:
                    raise self.error
                lengths = step.inputs.lengths[:bucket].tolist()
                logits = step._forward(bucket, lengths)
                return logits + self.shift * torch.arange(logits.shape[-1], dtype=logits.dtype)

            return replay

        step.buckets = buckets_up_to(max_rows)
        step.graphs = {bucket: replay_for(bucket) for bucket in step.buckets}
        return None


@pytest.fixture
def planted_graphs(monkeypatch):
    from inference.serving.decode_step import DecodeStep

    def plant(graphs: PlantedGraphs) -> None:
        monkeypatch.setattr(DecodeStep, "can_capture", lambda self: True)
        monkeypatch.setattr(DecodeStep, "capture", lambda self, max_rows: graphs.capture(self, max_rows))

    return plant


def test_graphs_that_replay_like_eager_steps_are_kept(planted_graphs, caplog, requests, reference):
    graphs = PlantedGraphs()
    planted_graphs(graphs)
    with caplog.at_level(logging.INFO, logger="inference.serving.startup"):
        runner = paged(max_batch_size=4)
    assert runner.graphs_checked and sorted(runner.decode_step.graphs) == [1, 2, 4]
    # Each bucket checked once; then, on this CPU, the start's own timing steps of one row (a warm-up and
    # CALIBRATION_STEPS) replay the graph for 1.
    assert graphs.replays == 3 + 1 + CALIBRATION_STEPS
    assert any(
        "every batch bucket (1, 2, 4) replayed like an eager step" in r.getMessage() for r in caplog.records
    )
    assert runner.attention_text.endswith("CUDA graphs (checked)")
    same_answers(alone(runner, requests[0]), 1, reference.answer(requests[0]), 1)


@pytest.mark.parametrize(
    "graphs, why",
    [
        (PlantedGraphs(shift=0.01), "the graph for 1 rows gave logits"),
        (
            PlantedGraphs(error=ValueError("captured the wrong stream")),
            "replaying the graph for 1 rows raised",
        ),
    ],
)
def test_graphs_that_differ_from_eager_steps_are_dropped_with_one_error(
    planted_graphs, caplog, requests, reference, graphs, why
):
    planted_graphs(graphs)
    with caplog.at_level(logging.INFO, logger="inference.serving.startup"):
        runner = paged(max_batch_size=4)
    assert not runner.graphs_checked and runner.decode_step.graphs == {}
    assert runner.attention_text.endswith("CUDA graphs off (they failed their start-up check)")
    [error] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert error.getMessage().startswith(
        "CUDA graphs failed their start-up check and are off; decoding steps run"
    )
    assert why in error.getMessage()
    same_answers(
        alone(runner, requests[0]), 1, reference.answer(requests[0]), 1
    )  # eager steps, right answers


def test_graphs_that_choose_other_tokens_are_dropped(planted_graphs, caplog):
    graphs = PlantedGraphs(shift=10.0)  # so large that the greedy token moves too
    planted_graphs(graphs)

    original = graphs.capture

    def capture(step, max_rows):
        original(step, max_rows)
        for bucket, replay in list(step.graphs.items()):

            def moved(replay=replay, bucket=bucket):
                logits = replay()
                step.inputs.tokens[:bucket].copy_(logits.argmax(-1))
                return logits

            step.graphs[bucket] = moved

    graphs.capture = capture
    with caplog.at_level(logging.ERROR, logger="inference.serving.startup"):
        runner = paged(max_batch_size=2)
    assert runner.decode_step.graphs == {}
    assert "chose other tokens than the eager step" in caplog.text


def test_a_graph_that_breaks_the_device_ends_the_start(planted_graphs):
    from inference.kernels.checks import SelfCheckFailed

    planted_graphs(PlantedGraphs(error=RuntimeError("CUDA error: device-side assert triggered")))
    with pytest.raises(SelfCheckFailed, match="restart with CUDA_GRAPHS=false"):
        paged(max_batch_size=2)


def test_the_owner_sees_how_the_model_attends():
    from inference.serving.engine import LocalEngine

    engine = LocalEngine(tiny())
    engine._runner = paged(token_budget=4096)
    assert engine.stats().hardware == (
        "cpu, float32, paged KV cache of 4096 tokens (room for 1), plain attention kernel, "
        "fused RMSNorm (checked)"
    )


# -- Streaming text and conversations -------------------------------------------------------------

TEXTS = [
    "Hello world!\nThis is a test: ünïcödé 日本語 😀.\n\n  Indented line\nend",
    "a\n\n\n b\n  c  \n\td\n",
    "```\ncode\n    x = 1\n```",
]


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_pieces_add_up_to_the_full_decode(text):
    tokenizer = phi3v.Phi3VProcessor.from_pretrained(OFFICIAL).tokenizer
    ids = tokenizer(text, add_special_tokens=False).input_ids
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(token) for token in ids] + [decoder.push(None, final=True)]
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True) == text
    assert "\ufffd" not in "".join(pieces)


def test_streamed_pieces_of_random_tokens_add_up_to_the_full_decode():
    # Any ids, byte-fallback pieces of multi-byte characters and long lines included.
    tokenizer = phi3v.Phi3VProcessor.from_pretrained(OFFICIAL).tokenizer
    special = set(tokenizer.all_special_ids) | set(range(32000, len(tokenizer)))
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        ids = [i for i in torch.randint(0, 32000, (300,), generator=generator).tolist() if i not in special]
        decoder = IncrementalDecoder(tokenizer)
        pieces = [decoder.push(token) for token in ids] + [decoder.push(None, final=True)]
        assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)


def test_a_conversation_too_long_for_the_budget_leaves_out_its_oldest_follow_ups():
    image = Image.new("RGB", (90, 60), (10, 200, 10))
    history = (Turn(None, "first answer " * 20),) + tuple(
        Turn(f"question {n}?", f"answer {n} " * 40) for n in range(1, 6)
    )
    request = Request(Task.DESCRIBE, (image,), "last question?", history=history, max_new_tokens=16)
    loaded = load(tiny(max_new_tokens=16))
    whole = start_runner(loaded, tiny(max_new_tokens=16, token_budget=24_576)).prepare(request)
    assert whole.left_out == 0

    budget = whole.prompt_tokens + 16 - 200  # room for all but about two follow-up exchanges
    trimmed = start_runner(loaded, tiny(max_new_tokens=16, token_budget=budget)).prepare(request)
    assert trimmed.left_out >= 1
    assert trimmed.prompt_tokens + trimmed.max_new_tokens <= budget
    image_token = phi3v.IMAGE_TOKEN_ID
    text = loaded.processor.tokenizer.decode(trimmed.input_ids[trimmed.input_ids != image_token])
    assert "first answer" in text and "last question?" in text  # the first exchange and the new question stay
    assert "question 1?" not in text and "question 5?" in text  # the oldest follow-ups go first
    # The images are never left out: the same image tokens as the whole conversation.
    assert int((trimmed.input_ids == image_token).sum()) == int((whole.input_ids == image_token).sum()) > 0


class OutOfMemoryAt:
    """Makes one call fail the way CUDA does when the GPU is full."""

    def __init__(self, target, name: str):
        self.target, self.name, self.original = target, name, getattr(target, name)

    def __enter__(self):
        def fail(*args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory")

        setattr(self.target, self.name, fail)

    def __exit__(self, *exc):
        setattr(self.target, self.name, self.original)


def test_a_runner_is_built_from_decisions_alone_and_answers_as_the_started_one():
    """The hot path without the start-up: no check, measurement or step runs in the constructor."""
    from inference.kernels.attention_backends import BackendChoice
    from inference.serving.runner import Decisions

    request = Request(Task.DESCRIBE, (image(90, 60, 1),), question="What is this?", max_new_tokens=6)
    started = start_runner(load(tiny()), tiny(token_budget=8192))
    decisions = Decisions(
        BackendChoice(PLAIN), fused_norms=False, fused_rope=False, causal_bias=True, token_budget=8192
    )
    built = ModelRunner(load(tiny()), tiny(token_budget=8192), decisions)
    assert built.pace is None and built.rows == {} and not built.graphs_checked
    tokens = alone(built, request).tokens[1]
    assert len(tokens) == 6 and tokens == alone(started, request).tokens[1]
