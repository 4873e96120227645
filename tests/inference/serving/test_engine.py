"""LocalEngine: the real runner on the tiny checkpoint, plus a scripted runner for the failure paths."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from PIL import Image

from inference import (
    EngineBusy,
    EngineConfig,
    EngineUnavailable,
    LocalEngine,
    ModelNotFound,
    OutOfMemory,
    Priority,
    Request,
    RequestTimedOut,
    Task,
    Turn,
)
from inference.errors import (
    EngineDead,
    EngineStopping,
    ModelFailed,
    NoImage,
    NotReady,
    TooFewImages,
    TooLarge,
    TooManyImages,
)
from inference.loading import load
from inference.serving import engine as engine_module
from inference.serving.engine import MAX_STEP_FAILURES
from tests.fakes import ScriptedRunner
from tests.inference.conftest import TINY, TINY_CHECKPOINT

IMAGE = Image.new("RGB", (120, 80), (200, 30, 30))


def tiny_config(**overrides) -> EngineConfig:
    # float32 on every CPU (DTYPE=auto would be bf16 on one with AMX): answers are compared exactly
    settings = {
        "model_id": str(TINY_CHECKPOINT),
        "device": "cpu",
        "dtype": "float32",
        "quantization": "none",
        "max_new_tokens": 8,
    }
    settings.update(overrides)
    return EngineConfig(**settings)


def fixture_image(name: str) -> Image.Image:
    return Image.open(TINY / "images" / name).convert("RGB")


@pytest.fixture
async def engine():
    engine = LocalEngine(tiny_config())
    await engine.start()
    yield engine
    await engine.stop()


async def until(condition, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def scripted(**overrides) -> LocalEngine:
    engine = LocalEngine(tiny_config(**({"batch_window_ms": 0} | overrides)), runner_factory=ScriptedRunner)
    await engine.start()
    return engine


# -- the real model ------------------------------------------------------------------------------


async def test_stream_and_generate_give_the_same_greedy_answer(engine):
    request = Request(Task.DESCRIBE, (IMAGE,), question="What is it?")
    pieces = [piece async for piece in engine.stream(request)]
    result = await engine.generate(request)
    assert pieces and "".join(pieces).strip() == result.text
    assert result.new_tokens == 8


async def test_the_serving_path_answers_what_plain_generate_answers(engine):
    """Our batched runner and KV cache against transformers' own generate loop on the same prompt."""
    from inference.prompts import build_prompt

    image = fixture_image("landscape_1000x600.png")
    request = Request(Task.DESCRIBE, (image,), question="What is this?")
    served = await engine.generate(request)
    # A model of its own: the engine's attends through its paged cache, which generate does not know.
    loaded = load(engine.config)
    inputs = loaded.processor(text=build_prompt(Task.DESCRIBE, 1, "What is this?"), images=[image])
    new_ids = loaded.model.generate(**inputs, max_new_tokens=8, do_sample=False, eos_token_id=[32000, 32007])
    expected = loaded.processor.decode(new_ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert served.text == expected.strip()


async def test_batched_answers_equal_answers_run_alone():
    engine = LocalEngine(tiny_config(max_new_tokens=10, batch_window_ms=50))
    await engine.start()
    try:
        requests = [
            Request(
                Task.DESCRIBE, (fixture_image("landscape_1000x600.png"),), question="What is this?", user_id=1
            ),
            Request(Task.OCR, (fixture_image("square_336.png"),), user_id=2),
            Request(
                Task.COMPARE,
                (fixture_image("gray_640x480.png"), fixture_image("palette_300x200.png")),
                user_id=3,
            ),
            Request(Task.DESCRIBE, (fixture_image("portrait_400x1500.png"),), user_id=1),
        ]
        alone = [await engine.generate(r) for r in requests]
        together = await asyncio.gather(*(engine.generate(r) for r in requests))
        assert [r.text for r in together] == [r.text for r in alone]
        assert all(r.new_tokens == 10 for r in together)
    finally:
        await engine.stop()


async def test_requests_arriving_mid_answer_join_the_running_batch():
    # The newcomer's prompt goes in 500 tokens at a time while the first answer goes on.
    engine = LocalEngine(tiny_config(max_new_tokens=12, batch_window_ms=0, prefill_chunk_tokens=500))
    await engine.start()
    try:
        first = Request(Task.DESCRIBE, (fixture_image("square_336.png"),), user_id=1)
        second = Request(Task.OCR, (fixture_image("rgba_500x300.png"),), user_id=2)
        alone = [await engine.generate(first), await engine.generate(second)]
        stream = engine.stream(first)
        pieces = [await anext(stream)]  # the first request is decoding now
        joined = asyncio.ensure_future(engine.generate(second))
        pieces += [p async for p in stream]
        assert "".join(pieces).strip() == alone[0].text
        assert (await joined).text == alone[1].text
    finally:
        await engine.stop()


async def test_closing_the_stream_stops_generation_early():
    engine = LocalEngine(tiny_config(max_new_tokens=400))
    await engine.start()
    try:
        stream = engine.stream(Request(Task.DESCRIBE, (IMAGE,)))
        await anext(stream)
        await stream.aclose()
        await until(lambda: not engine.scheduler.has_work() and not engine._runner.running_ids)
        assert engine.in_flight == 0
    finally:
        await engine.stop()


async def test_bad_requests_are_refused_before_queueing(engine):
    with pytest.raises(NoImage):
        await engine.generate(Request(Task.DESCRIBE, ()))
    with pytest.raises(TooManyImages):
        await engine.generate(Request(Task.COMPARE, (IMAGE,) * 5))
    with pytest.raises(TooFewImages):
        await engine.generate(Request(Task.COMPARE, (IMAGE,)))
    assert (await engine.generate(Request(Task.OCR, (IMAGE,)))).new_tokens > 0


async def test_unstarted_engine_says_so():
    with pytest.raises(NotReady):
        await LocalEngine(tiny_config()).generate(Request(Task.DESCRIBE, (IMAGE,)))


async def test_a_model_that_cannot_load_fails_start_clearly():
    engine = LocalEngine(EngineConfig(model_id="./no/such/folder"))
    with pytest.raises(ModelNotFound, match="does not exist"):
        await engine.start()
    assert not engine.ready


# -- scripted runner: queueing, fairness, failures -------------------------------------------------


class WindowClock:
    """Stands in for the engine's ``time`` module: records the batch windows the model thread waits."""

    def __init__(self) -> None:
        self.windows: list[float] = []
        self.perf_counter = time.perf_counter

    def sleep(self, seconds: float) -> None:
        self.windows.append(seconds)


async def test_a_lone_request_starts_without_waiting_the_batch_window(monkeypatch):
    clock = WindowClock()
    monkeypatch.setattr(engine_module, "time", clock)
    engine = await scripted(batch_window_ms=50)
    try:
        assert (await engine.generate(Request(Task.DESCRIBE, (IMAGE,)))).text == "tok2 tok1 tok0"
        assert clock.windows == []
    finally:
        await engine.stop()


async def test_a_request_waits_the_window_for_others_still_being_prepared(monkeypatch):
    clock = WindowClock()
    monkeypatch.setattr(engine_module, "time", clock)
    monkeypatch.setattr(engine_module, "PREP_THREADS", 2)  # the two requests are prepared side by side
    engine = await scripted(batch_window_ms=50)
    runner = engine._runner
    released = threading.Event()
    prepare = runner.prepare

    def slow_for_the_second(request):
        if request.user_id == 2:
            released.wait(10)
        return prepare(request)

    monkeypatch.setattr(runner, "prepare", slow_for_the_second)
    try:
        second = asyncio.create_task(engine.generate(Request(Task.DESCRIBE, (IMAGE,), user_id=2)))
        await until(lambda: engine._preparing == 1)
        first = await engine.generate(Request(Task.DESCRIBE, (IMAGE,), user_id=1))
        assert first.text == "tok2 tok1 tok0" and clock.windows == [0.05]
        released.set()
        assert (await second).text == "tok2 tok1 tok0"
    finally:
        released.set()
        await engine.stop()


async def test_one_failure_does_not_break_the_next_request():
    engine = await scripted()
    try:
        engine._runner.fail_next = OutOfMemory("The GPU ran out of memory")
        with pytest.raises(OutOfMemory):
            await engine.generate(Request(Task.DESCRIBE, (IMAGE,)))
        assert (await engine.generate(Request(Task.DESCRIBE, (IMAGE,)))).text == "tok2 tok1 tok0"
        assert engine.in_flight == 0
    finally:
        await engine.stop()


async def test_timeout_aborts_the_work():
    engine = await scripted(request_timeout_s=0.3)
    engine._runner.step_seconds = 0.002  # 10,000 steps take 20 s
    try:
        with pytest.raises(RequestTimedOut, match="longer than"):
            await engine.generate(Request(Task.DESCRIBE, (IMAGE,), max_new_tokens=10_000))
        await until(lambda: engine._runner.dropped == [1])
    finally:
        await engine.stop()


async def test_the_model_thread_decodes_on_alone_yet_streams_and_takes_newcomers():
    engine = await scripted()
    engine._runner.step_seconds = 0.005  # the long answer takes 15 s
    try:
        long = engine.stream(Request(Task.DESCRIBE, (IMAGE,), max_new_tokens=3_000, user_id=1))
        first = [await anext(long) for _ in range(3)]  # pieces arrive while it runs
        assert first == ["tok2999 ", "tok2998 ", "tok2997 "]
        short = await asyncio.wait_for(engine.generate(Request(Task.DESCRIBE, (IMAGE,), user_id=2)), 5)
        assert short.text == "tok2 tok1 tok0"  # joined the running batch and finished first
        assert engine._runner.rows  # the long answer is still going
        await long.aclose()  # its reader goes away: the work stops at the next step
        await until(lambda: engine._runner.dropped == [1])
        assert engine._runner.steps < 2_000
    finally:
        await engine.stop()


async def test_full_queue_answers_busy_at_once():
    engine = await scripted(max_queued=2, max_batch_size=1)
    runner = engine._runner
    try:
        runner.hold.clear()
        tasks = [asyncio.ensure_future(engine.generate(Request(Task.DESCRIBE, (IMAGE,))))]
        await until(lambda: len(engine.scheduler.running) == 1)
        tasks += [asyncio.ensure_future(engine.generate(Request(Task.DESCRIBE, (IMAGE,)))) for _ in range(2)]
        await until(lambda: engine.scheduler.num_waiting == 2)
        with pytest.raises(EngineBusy):
            await engine.generate(Request(Task.DESCRIBE, (IMAGE,)))
        runner.hold.set()
        assert [r.text for r in await asyncio.gather(*tasks)] == ["tok2 tok1 tok0"] * 3
    finally:
        await engine.stop()


async def test_positions_are_reported_and_users_take_turns():
    engine = await scripted(max_batch_size=1)
    runner = engine._runner
    runner.hold.clear()
    seen: dict[str, list[int]] = {}
    order: list[str] = []

    async def ask(name: str, user: int):
        async for _ in engine.stream(
            Request(Task.DESCRIBE, (IMAGE,), user_id=user, max_new_tokens=1),
            on_position=lambda p: seen.setdefault(name, []).append(p),
        ):
            order.append(name)

    try:
        # Alice sends three at once, then Bob sends one: Bob must not wait behind all of Alice's.
        tasks = [asyncio.ensure_future(ask(f"alice{i}", 1)) for i in range(3)]
        await until(lambda: engine.scheduler.num_waiting + len(engine.scheduler.running) == 3)
        tasks.append(asyncio.ensure_future(ask("bob", 2)))
        await until(lambda: engine.scheduler.num_waiting + len(engine.scheduler.running) == 4)
        runner.hold.set()
        await asyncio.gather(*tasks)
    finally:
        await engine.stop()
    assert order.index("bob") < order.index("alice2")
    # Bob arrives while Alice is being served: he goes ahead of her other two.
    assert order == ["alice0", "bob", "alice1", "alice2"]
    assert seen["bob"] == [1, 0]
    assert seen["alice2"][-4:] == [3, 2, 1, 0]  # pushed back one place by Bob, then forward


async def test_background_work_waits_for_people_and_has_its_own_line():
    engine = await scripted(max_batch_size=1, max_queued=1)
    runner = engine._runner
    runner.hold.clear()
    order: list[str] = []

    async def ask(name: str, user: int, priority: Priority = Priority.PEOPLE):
        request = Request(Task.DESCRIBE, (IMAGE,), user_id=user, max_new_tokens=1, priority=priority)
        async for _ in engine.stream(request):
            order.append(name)

    try:
        tasks = [asyncio.ensure_future(ask("first", 1))]
        await until(lambda: len(engine.scheduler.running) == 1)
        tasks.append(asyncio.ensure_future(ask("alt text", 9, Priority.BACKGROUND)))
        await until(lambda: engine.scheduler.waiting_in(Priority.BACKGROUND) == 1)
        tasks.append(asyncio.ensure_future(ask("person", 2)))  # arrives after the alt text...
        await until(lambda: engine.scheduler.num_waiting == 1)  # ...and the queue of one is not full for it
        with pytest.raises(EngineBusy):
            await ask("one too many", 3)
        runner.hold.set()
        await asyncio.gather(*tasks)
    finally:
        await engine.stop()
    assert order == ["first", "person", "alt text"]


async def test_stop_fails_open_requests_clearly():
    engine = await scripted()
    engine._runner.hold.clear()
    task = asyncio.ensure_future(engine.generate(Request(Task.DESCRIBE, (IMAGE,), max_new_tokens=50)))
    await until(engine.scheduler.has_work)
    engine._runner.hold.set()
    await engine.stop()
    with pytest.raises(EngineStopping):
        await task
    with pytest.raises(EngineUnavailable):
        await engine.generate(Request(Task.DESCRIBE, (IMAGE,)))


# -- failures inside a model step ---------------------------------------------------------------


async def test_a_failed_step_fails_its_requests_plainly_and_the_next_one_works(caplog):
    engine = await scripted()
    try:
        engine._runner.step_errors.append(RuntimeError("index 7 out of range in self (internal detail)"))
        with pytest.raises(ModelFailed) as failed:
            await engine.generate(Request(Task.DESCRIBE, (IMAGE,)))
        assert "internal detail" not in str(failed.value)  # the runner's exception stays in the log
        assert "internal detail" in caplog.text and "Traceback" in caplog.text  # all of it for the owner
        # the model thread, which owns the runner, reset it
        assert [name.startswith("phi3v-model") for name in engine._runner.reset_threads] == [True]
        assert engine.ready
        assert (await engine.generate(Request(Task.DESCRIBE, (IMAGE,)))).text == "tok2 tok1 tok0"
    finally:
        await engine.stop()


async def test_repeated_step_failures_make_the_engine_dead_and_say_so_once(caplog):
    engine = await scripted()
    deaths: list[str] = []
    engine.on_dead = deaths.append
    try:
        for _ in range(MAX_STEP_FAILURES):
            engine._runner.step_errors.append(RuntimeError("the GPU fell off the bus"))
            with pytest.raises(ModelFailed):
                await engine.generate(Request(Task.DESCRIBE, (IMAGE,)))
        assert not engine.ready
        assert len(deaths) == 1 and "in a row" in deaths[0]
        with pytest.raises(EngineDead) as refused:
            await engine.generate(Request(Task.DESCRIBE, (IMAGE,)))
        assert refused.value.reason == deaths[0]
        errors = [r for r in caplog.records if r.levelname == "ERROR" and "unavailable" in r.getMessage()]
        assert len(errors) == 1
    finally:
        await engine.stop()


async def test_one_success_resets_the_count_of_failed_steps():
    engine = await scripted()
    try:
        for _ in range(2 * MAX_STEP_FAILURES):
            engine._runner.step_errors.append(RuntimeError("flaky"))
            with pytest.raises(ModelFailed):
                await engine.generate(Request(Task.DESCRIBE, (IMAGE,)))
            await engine.generate(Request(Task.DESCRIBE, (IMAGE,)))
        assert engine.ready
    finally:
        await engine.stop()


async def test_a_cuda_error_makes_the_engine_dead_at_once_and_fails_those_waiting():
    engine = await scripted(max_batch_size=1)
    runner = engine._runner
    deaths: list[str] = []
    engine.on_dead = deaths.append
    try:
        runner.hold.clear()
        running = asyncio.ensure_future(engine.generate(Request(Task.DESCRIBE, (IMAGE,), user_id=1)))
        await until(lambda: len(engine.scheduler.running) == 1)
        waiting = asyncio.ensure_future(engine.generate(Request(Task.DESCRIBE, (IMAGE,), user_id=2)))
        await until(lambda: engine.scheduler.num_waiting == 1)
        runner.step_errors.append(RuntimeError("CUDA error: an illegal memory access was encountered"))
        runner.hold.set()
        with pytest.raises(ModelFailed):
            await running
        with pytest.raises(EngineDead):
            await waiting
        assert len(deaths) == 1 and "unrecoverable" in deaths[0]
    finally:
        await engine.stop()


async def test_stopping_announces_no_new_places_in_line():
    engine = await scripted(max_batch_size=1)
    runner = engine._runner
    seen: list[tuple[int, int]] = []
    runner.hold.clear()
    tasks = [asyncio.ensure_future(_collect(engine, user, seen)) for user in range(1, 5)]
    await until(lambda: engine.scheduler.num_waiting == 3)
    before = list(seen)
    stopping = asyncio.ensure_future(engine.stop())
    await until(lambda: engine.scheduler.num_waiting == 0)  # the line aborted while the model is still held
    runner.hold.set()
    await stopping
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(result, EngineStopping) for result in results)
    assert seen == before  # aborting the line announces no new places (#1, #2) to those being stopped


async def _collect(engine: LocalEngine, user: int, seen: list[tuple[int, int]]) -> None:
    request = Request(Task.DESCRIBE, (IMAGE,), user_id=user, max_new_tokens=50)
    async for _ in engine.stream(request, on_position=lambda p: seen.append((user, p))):
        pass


# -- the scheduler's refusals, as people see them ------------------------------------------------


async def test_a_prompt_larger_than_the_token_budget_is_refused_as_too_large():
    engine = await scripted(token_budget=5)  # the scripted prompt is 10 tokens
    try:
        with pytest.raises(TooLarge) as refused:
            await engine.generate(Request(Task.DESCRIBE, (IMAGE,)))
        assert refused.value.tokens > refused.value.capacity == 5
        assert engine.in_flight == 0
    finally:
        await engine.stop()


async def test_a_line_whose_places_are_taken_while_requests_are_prepared_answers_busy():
    # The first to ask takes the one place while it is still being prepared; the second is refused at once.
    engine = await scripted(max_queued=1, max_batch_size=1)
    runner = engine._runner
    runner.hold.clear()
    try:
        running = asyncio.ensure_future(engine.generate(Request(Task.DESCRIBE, (IMAGE,), user_id=1)))
        await until(lambda: len(engine.scheduler.running) == 1)
        racing = [
            asyncio.ensure_future(engine.generate(Request(Task.DESCRIBE, (IMAGE,), user_id=user)))
            for user in (2, 3)
        ]
        await until(lambda: sum(task.done() for task in racing) == 1)
        [refused] = [task for task in racing if task.done()]
        with pytest.raises(EngineBusy):
            refused.result()
        runner.hold.set()
        await running
        [waiting] = [task for task in racing if task is not refused]
        assert (await waiting).text == "tok2 tok1 tok0"
    finally:
        runner.hold.set()
        await engine.stop()


async def test_a_place_held_before_the_request_counts_as_waiting_until_it_is_queued():
    engine = await scripted(max_queued=1, max_batch_size=1)
    runner = engine._runner
    runner.hold.clear()
    try:
        running = asyncio.ensure_future(engine.generate(Request(Task.DESCRIBE, (IMAGE,), user_id=1)))
        await until(lambda: len(engine.scheduler.running) == 1)
        place = engine.hold_place()  # as the bot does before it downloads the pictures
        with pytest.raises(EngineBusy):  # nobody else gets in, with or without a place of their own
            engine.hold_place()
        with pytest.raises(EngineBusy):
            await engine.generate(Request(Task.DESCRIBE, (IMAGE,), user_id=3))
        waiting = asyncio.ensure_future(
            engine.generate(Request(Task.DESCRIBE, (IMAGE,), user_id=2), place=place)
        )
        await until(lambda: engine.scheduler.num_waiting == 1)
        assert not place.held  # queued: the scheduler counts it now, and the place was given back once
        with pytest.raises(EngineBusy):
            engine.hold_place()
        runner.hold.set()
        assert [(await running).text, (await waiting).text] == ["tok2 tok1 tok0"] * 2
        with engine.hold_place():  # a place given back without being used frees the line too
            pass
        with engine.hold_place(), pytest.raises(EngineBusy):
            engine.hold_place()
    finally:
        runner.hold.set()
        await engine.stop()


async def test_background_places_have_a_line_of_their_own():
    engine = await scripted(max_queued=1)
    try:
        background, person = engine.hold_place(Priority.BACKGROUND), engine.hold_place(Priority.PEOPLE)
        with pytest.raises(EngineBusy):
            engine.hold_place(Priority.PEOPLE)
        background.release()
        person.release()
    finally:
        await engine.stop()


async def test_a_place_is_refused_by_an_engine_that_is_not_serving():
    engine = LocalEngine(tiny_config(), runner_factory=ScriptedRunner)
    with pytest.raises(NotReady):
        engine.hold_place()


async def test_a_reader_that_leaves_while_waiting_is_dropped_and_the_line_moves_up():
    engine = await scripted(max_batch_size=1)
    runner = engine._runner
    runner.hold.clear()
    seen: dict[int, list[int]] = {2: [], 3: []}
    try:
        first = asyncio.ensure_future(engine.generate(Request(Task.DESCRIBE, (IMAGE,), user_id=1)))
        await until(lambda: len(engine.scheduler.running) == 1)
        streams = {
            user: engine.stream(Request(Task.DESCRIBE, (IMAGE,), user_id=user), on_position=seen[user].append)
            for user in (2, 3)
        }
        readers = {user: asyncio.ensure_future(anext(stream)) for user, stream in streams.items()}
        await until(lambda: engine.scheduler.num_waiting == 2)
        assert seen == {2: [1], 3: [2]}
        readers[2].cancel()  # person 2 gives up while in line
        await asyncio.gather(readers[2], return_exceptions=True)
        await streams[2].aclose()
        await until(lambda: engine.scheduler.num_waiting == 1)
        assert seen[3] == [2, 1]  # moved up at once
        runner.hold.set()
        await first
        assert await readers[3] == "tok2 "
        await streams[3].aclose()
        assert engine.in_flight == 0
        assert runner.dropped == []  # person 2 never reached the model
    finally:
        runner.hold.set()
        await engine.stop()


async def test_the_engine_keeps_figures_for_the_owner():
    engine = await scripted()
    try:
        await engine.generate(Request(Task.DESCRIBE, (IMAGE,)))
        engine._runner.fail_next = OutOfMemory("The GPU ran out of memory")
        with pytest.raises(OutOfMemory):
            await engine.generate(Request(Task.DESCRIBE, (IMAGE,)))
        stats = engine.stats()
        assert (stats.tokens_generated, stats.answers_finished, stats.out_of_memory) == (3, 1, 1)
        assert (stats.waiting, stats.running, stats.dead) == (0, 0, False)
    finally:
        await engine.stop()


async def test_the_real_engine_reports_its_hardware(engine):
    from inference.serving.cache_size import CPU_TOKEN_CAP

    stats = engine.stats()
    budget = engine._runner.token_budget
    assert budget == engine.scheduler.token_budget and budget <= CPU_TOKEN_CAP
    people = min(budget // 2560, 8)  # 16 crops and an 8-token answer: 10 blocks each
    assert stats.hardware == (
        f"cpu, float32, paged KV cache of {budget} tokens (room for {people}), plain attention kernel, "
        "fused RMSNorm (checked)"
    )
    assert stats.memory_bytes is None


async def test_a_follow_up_batched_with_others_equals_the_follow_up_alone(engine):
    history = (Turn(None, "A red square."), Turn("What colour is the border?", "White."))
    follow_up = Request(
        Task.DESCRIBE, (fixture_image("square_336.png"),), "Is it centred?", history=history, user_id=1
    )
    other = Request(Task.OCR, (fixture_image("rgba_500x300.png"),), user_id=2)
    alone = await engine.generate(follow_up)
    together = await asyncio.gather(engine.generate(other), engine.generate(follow_up))
    assert together[1].text == alone.text
    assert together[1].new_tokens == alone.new_tokens > 0


async def test_the_engine_tells_when_a_conversation_lost_old_follow_ups_to_fit():
    history = (Turn(None, "A red square."),) + tuple(Turn(f"Q{n}?", "word " * 60) for n in range(1, 5))
    request = Request(Task.DESCRIBE, (IMAGE,), "And now?", history=history)
    roomy = LocalEngine(tiny_config())
    await roomy.start()
    try:
        told: list[int] = []
        whole = roomy._runner.prepare(request).prompt_tokens
        async for _ in roomy.stream(request, on_trimmed=told.append):
            pass
        assert told == []  # it fitted
    finally:
        await roomy.stop()
    tight = LocalEngine(tiny_config(token_budget=whole + 8 - 100))
    await tight.start()
    try:
        told = []
        text = "".join([piece async for piece in tight.stream(request, on_trimmed=told.append)])
        assert len(told) == 1 and told[0] >= 1 and text
    finally:
        await tight.stop()


async def test_one_server_cannot_take_the_whole_line():
    engine = await scripted(max_queued=4)
    try:
        busy = [engine.hold_place(group_id=1) for _ in range(2)]
        with pytest.raises(EngineBusy):  # its half is taken
            engine.hold_place(group_id=1)
        others = [engine.hold_place(group_id=2), engine.hold_place(group_id=None)]  # room for the rest
        for place in busy + others:
            place.release()
    finally:
        await engine.stop()
