"""The paged runner (issue 9): the same answers as the growing-cache runner and as ``model.generate``,
whatever joins, leaves or is prefilled in chunks, and nobody's cache moved when that happens.

Each comparison records, for every request, its greedy tokens and the logits they came from (an
``lm_head`` hook), and compares logits within float32 tolerances and tokens exactly.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import defaultdict

import pytest
import torch
from PIL import Image

from inference import paged_cache, phi3v
from inference.loading import LoadedModel, load
from inference.paged_cache import PagedStorage
from inference.paged_runner import CacheDoesNotFit, PagedRunner
from inference.runner import ModelRunner, Prepared
from inference.types import EngineConfig, Request, Task
from tests.inference.conftest import TINY_CHECKPOINT
from tests.inference.phi3v.test_modeling_phi3v import random_model, tiny_config
from tests.inference.test_runner import OutOfMemoryAt

NEW_TOKENS = 12


def tiny(**overrides) -> EngineConfig:
    settings = dict(
        model_id=str(TINY_CHECKPOINT), device="cpu", attn_implementation="sdpa", max_new_tokens=NEW_TOKENS
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


def paged(**overrides) -> PagedRunner:
    config = tiny(**overrides)
    return PagedRunner(load(config), config)


def growing() -> ModelRunner:
    config = tiny()
    return ModelRunner(load(config), config)


def alone(runner_factory, request: Request) -> Recorder:
    recorder = Recorder(runner_factory())
    recorder.step([(1, recorder.runner.prepare(request))])
    recorder.finish()
    return recorder


def test_one_request_equals_the_growing_cache_and_generate(requests):
    reference = alone(growing, requests[0])
    for chunk in (4096, 500, 97):  # in one piece, and in 4 and 20 chunks
        same_answers(
            alone(lambda chunk=chunk: paged(prefill_chunk_tokens=chunk), requests[0]), 1, reference, 1
        )
    loaded = load(tiny())
    prepared = reference.runner.prepare(requests[0])
    generated = loaded.model.generate(
        input_ids=prepared.input_ids[None],
        pixel_values=prepared.pixel_values,
        image_sizes=prepared.image_sizes,
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
    )[0, prepared.prompt_tokens :].tolist()
    assert reference.tokens[1][: len(generated)] == generated


def test_a_batch_equals_each_request_alone(requests):
    together = Recorder(paged(prefill_chunk_tokens=1500))
    # Requests of one rope regime, as the scheduler batches them: two short prompts, or two long ones.
    for batch in (requests[:2], requests[2:]):
        together = Recorder(paged(prefill_chunk_tokens=1500))
        together.step([(i + 1, together.runner.prepare(r)) for i, r in enumerate(batch)])
        together.finish()
        for i, request in enumerate(batch):
            same_answers(together, i + 1, alone(growing, request), 1)


def test_joining_mid_answer_is_prefilled_in_chunks_while_the_running_answer_goes_on(requests):
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
        same_answers(recorder, rid, alone(growing, request), 1)


def test_leaving_mid_answer_changes_nothing_for_the_others(requests):
    recorder = Recorder(paged())
    runner = recorder.runner
    recorder.step([(1, runner.prepare(requests[0])), (2, runner.prepare(requests[1]))])
    for _ in range(3):
        recorder.step()
    free = runner.pool.free_blocks
    recorder.step(abort=[1])
    assert runner.running_ids == [2] and runner.pool.free_blocks > free  # its blocks came back
    recorder.finish()
    same_answers(recorder, 2, alone(growing, requests[1]), 1)
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


def test_three_layers_and_four_crops_equal_the_growing_cache(requests):
    config = tiny_config(
        num_hidden_layers=3, attn_implementation="sdpa", original_max_position_embeddings=4096
    )
    engine_config = tiny(prefill_chunk_tokens=200)
    reference = Recorder(ModelRunner(random_loaded(config, 4, seed=5), engine_config))
    under_test = Recorder(PagedRunner(random_loaded(config, 4, seed=5), engine_config))
    for recorder in (reference, under_test):
        runner = recorder.runner
        recorder.step([(1, runner.prepare(requests[1]))])
        while 1 not in recorder.emitted[-1]:
            recorder.step()
        recorder.step()
        recorder.step([(2, runner.prepare(requests[2]))])
        recorder.finish()
    assert len(set(reference.tokens[1])) > 1  # a model that says something, not one token over and over
    same_answers(under_test, 1, reference, 1)
    same_answers(under_test, 2, reference, 2)


# -- LongRoPE: the tiny config switches from short to long factors past 64 positions ---------------


def text_prompt(length: int, seed: int, new_tokens: int) -> Prepared:
    ids = torch.randint(3, 500, (length,), generator=torch.Generator().manual_seed(seed))
    return Prepared(input_ids=ids, pixel_values=None, image_sizes=None, max_new_tokens=new_tokens)


def generate(model, prepared: Prepared) -> tuple[list[int], torch.Tensor]:
    """transformers' own greedy loop: the tokens and the logits of each."""
    out = model.generate(
        input_ids=prepared.input_ids[None],
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
    runner = PagedRunner(random_loaded(config, 16, seed=7), engine_config)
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
        runner = PagedRunner(
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
    with OutOfMemoryAt(runner.loaded.model.model, "embed_with_images"):
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


def test_a_cache_too_large_for_the_gpu_ends_the_start_with_the_budget_that_fits(monkeypatch):
    loaded = load(tiny())
    config = tiny(token_budget=98_304, max_batch_size=32)
    per_token = 2 * 2 * 4 * 16 * 4  # K and V, 2 layers, 4 KV heads of 16, float32: 1 KiB
    monkeypatch.setattr(
        "inference.paged_runner.free_device_memory", lambda _device: 2 * 1024**3 + 40 * 1024**2
    )
    with pytest.raises(CacheDoesNotFit) as error:
        PagedRunner(loaded, config)
    fits = (40 * 1024**2 // per_token - 33 * 256) // 256 * 256  # 32 partial blocks and the scratch block
    assert str(error.value) == (
        "The KV cache for TOKEN_BUDGET=98304 and MAX_BATCH_SIZE=32 needs 0.1 GiB, but 2.0 GiB of GPU memory "
        "is free after the weights"
        f" (2 GiB of it is kept for activations): set TOKEN_BUDGET to at most {fits}."
    )
    assert fits == 32_512
    monkeypatch.setattr("inference.paged_runner.free_device_memory", lambda _device: 2 * 1024**3)
    with pytest.raises(CacheDoesNotFit, match="use QUANTIZATION=4bit, a smaller NUM_CROPS or a larger GPU"):
        PagedRunner(loaded, config)


def test_the_allocation_failing_ends_the_start_with_one_line(monkeypatch):
    def full(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(PagedStorage, "__init__", full)
    monkeypatch.setattr("inference.paged_runner.free_device_memory", lambda _device: None)
    with pytest.raises(CacheDoesNotFit, match="set TOKEN_BUDGET|use QUANTIZATION"):
        PagedRunner(load(tiny()), tiny())


def gather_kernel(*args):
    return paged_cache._gather_decode(*args)


def fused_as_plain(q, keys, values, batch, scale):
    return paged_cache._by_rows(q, keys, values, dataclasses.replace(batch, kernel="plain"), scale)


def failing_kernel(*args):
    raise RuntimeError("FlashAttention only supports Ampere GPUs or newer.")


def wrong_kernel(*args):
    return paged_cache._gather_decode(*args) + 1


@pytest.mark.parametrize(
    "fused, triton, chosen, problems",
    [
        (fused_as_plain, gather_kernel, "fused", []),
        (
            failing_kernel,
            gather_kernel,
            "triton",
            [
                "fused paged attention kernel failed its start-up check "
                "(RuntimeError: FlashAttention only supports Ampere GPUs or newer.)"
            ],
        ),
        (
            failing_kernel,
            wrong_kernel,
            "plain",
            [
                "fused",
                "triton paged attention kernel failed its start-up check "
                "(it differs from the plain kernel by 1)",
            ],
        ),
    ],
)
def test_a_kernel_is_used_only_if_it_passes_its_start_up_check(
    monkeypatch, caplog, fused, triton, chosen, problems
):
    """Stand-ins for the CUDA kernels, on the CPU: ones that agree, raise, or are wrong."""
    from inference.runner import make_runner

    loaded = load(tiny())
    assert type(make_runner(loaded, tiny(kv_cache="auto"))) is ModelRunner  # a CPU: no in-place kernel
    assert make_runner(loaded, tiny(kv_cache="paged")).kernel == "plain"  # asked for: the plain kernel
    monkeypatch.setattr(paged_cache, "kernel_runs_here", lambda kernel, device, dtype: True)
    monkeypatch.setattr(paged_cache, "_fused", fused)
    monkeypatch.setattr(paged_cache, "_triton_decode", triton)
    monkeypatch.setattr(paged_cache, "_REPORTED", set())
    paged_cache.kernel_problem.cache_clear()
    try:
        auto = make_runner(loaded, tiny(kv_cache="auto"))
        forced = make_runner(loaded, tiny(kv_cache="paged"))
        assert type(auto) is (ModelRunner if chosen == "plain" else PagedRunner)
        assert forced.kernel == chosen
        recorder = Recorder(forced)  # and it answers like the growing cache
        recorder.step([(1, forced.prepare(Request(Task.DESCRIBE, (image(90, 60, 1),))))])
        recorder.finish()
    finally:
        paged_cache.kernel_problem.cache_clear()
    reference = alone(growing, Request(Task.DESCRIBE, (image(90, 60, 1),)))
    same_answers(recorder, 1, reference, 1)
    warnings = [r.getMessage() for r in caplog.records if "start-up check" in r.getMessage()]
    assert len(warnings) == len(problems)  # each said once, with its reason
    for warning, problem in zip(warnings, problems):
        assert problem in warning


def test_the_owner_sees_how_the_model_attends():
    from inference.engine import LocalEngine

    engine = LocalEngine(tiny(kv_cache="paged"))
    engine._runner = paged()
    assert engine.stats().hardware == "cpu, float32, paged KV cache, plain attention kernel"
