"""LocalEngine: the real runner on the tiny checkpoint, plus controlled runners for the failure paths."""

from __future__ import annotations

import asyncio
import threading

import pytest
from PIL import Image

from inference import (
    EngineBusy,
    EngineConfig,
    EngineUnavailable,
    InvalidRequest,
    LocalEngine,
    OutOfMemory,
    Request,
    RequestTimedOut,
    Result,
    Task,
)
from inference.runner import ModelRunner
from tests.inference.conftest import TINY_CHECKPOINT

IMAGE = Image.new("RGB", (120, 80), (200, 30, 30))


def tiny_config(**overrides) -> EngineConfig:
    settings = {"model_id": str(TINY_CHECKPOINT), "device": "cpu", "max_new_tokens": 8, **overrides}
    return EngineConfig(**settings)


class RecordingRunner(ModelRunner):
    """The real runner, remembering each result (to see where a stopped request ended)."""

    results: list[Result]

    def run(self, request, on_text, stop):
        result = super().run(request, on_text, stop)
        self.results.append(result)
        return result


def recording_factory(config):
    from inference.loading import load

    runner = RecordingRunner(load(config), config)
    runner.results = []
    return runner


class ScriptedRunner:
    """Stands in for the model: emits pieces, can block, fail or wait for its stop event."""

    def __init__(self, config):
        self.config = config
        self.release = threading.Event()
        self.fail_next: Exception | None = None
        self.block = False
        self.stopped = threading.Event()

    def validate(self, request):
        ModelRunner.validate(self, request)

    def run(self, request, on_text, stop):
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        on_text("hello ")
        if self.block:
            while not stop.wait(0.01):
                if self.release.is_set():
                    break
            if stop.is_set():
                self.stopped.set()
        on_text("world")
        return Result("hello world", 2, 0.0)


@pytest.fixture
async def engine():
    engine = LocalEngine(tiny_config(), runner_factory=recording_factory)
    await engine.start()
    yield engine
    await engine.stop()


async def test_stream_and_generate_give_the_same_greedy_answer(engine):
    request = Request(Task.DESCRIBE, (IMAGE,), question="What is it?")
    pieces = [piece async for piece in engine.stream(request)]
    result = await engine.generate(request)
    assert pieces and "".join(pieces).strip() == result.text
    assert result.new_tokens == 8


async def test_compare_runs_with_several_images(engine):
    result = await engine.generate(Request(Task.COMPARE, (IMAGE, IMAGE.rotate(90), IMAGE.resize((40, 300)))))
    assert result.new_tokens > 0


async def test_closing_the_stream_stops_generation_early():
    engine = LocalEngine(tiny_config(max_new_tokens=400), runner_factory=recording_factory)
    await engine.start()
    try:
        stream = engine.stream(Request(Task.DESCRIBE, (IMAGE,)))
        await anext(stream)
        await stream.aclose()
        for _ in range(200):  # the worker notices at its next decoding step
            if engine._runner.results:
                break
            await asyncio.sleep(0.05)
        assert engine._runner.results[0].new_tokens < 400
        assert engine.in_flight == 0
    finally:
        await engine.stop()


async def test_bad_requests_are_refused_before_queueing(engine):
    with pytest.raises(InvalidRequest, match="at least one image"):
        await engine.generate(Request(Task.DESCRIBE, ()))
    with pytest.raises(InvalidRequest, match="Too many images"):
        await engine.generate(Request(Task.COMPARE, (IMAGE,) * 5))
    with pytest.raises(InvalidRequest, match="at least 2 images"):
        await engine.generate(Request(Task.COMPARE, (IMAGE,)))
    assert (await engine.generate(Request(Task.OCR, (IMAGE,)))).new_tokens > 0


async def test_unstarted_engine_says_so():
    with pytest.raises(EngineUnavailable, match="not loaded"):
        await LocalEngine(tiny_config()).generate(Request(Task.DESCRIBE, (IMAGE,)))


async def test_a_model_that_cannot_load_fails_start_clearly():
    engine = LocalEngine(EngineConfig(model_id="./no/such/folder"))
    with pytest.raises(Exception, match="does not exist"):
        await engine.start()
    assert not engine.ready


async def test_one_failure_does_not_break_the_next_request():
    engine = LocalEngine(tiny_config(), runner_factory=ScriptedRunner)
    await engine.start()
    try:
        engine._runner.fail_next = OutOfMemory("The GPU ran out of memory")
        with pytest.raises(OutOfMemory):
            await engine.generate(Request(Task.DESCRIBE, (IMAGE,)))
        engine._runner.fail_next = RuntimeError("boom")
        with pytest.raises(RuntimeError):
            await engine.generate(Request(Task.DESCRIBE, (IMAGE,)))
        assert (await engine.generate(Request(Task.DESCRIBE, (IMAGE,)))).text == "hello world"
        assert engine.in_flight == 0
    finally:
        await engine.stop()


async def test_timeout_stops_the_work():
    engine = LocalEngine(tiny_config(request_timeout_s=0.2), runner_factory=ScriptedRunner)
    await engine.start()
    try:
        engine._runner.block = True
        with pytest.raises(RequestTimedOut, match="longer than"):
            await engine.generate(Request(Task.DESCRIBE, (IMAGE,)))
        assert await asyncio.to_thread(engine._runner.stopped.wait, 5)
    finally:
        await engine.stop()


async def test_full_queue_answers_busy_at_once():
    engine = LocalEngine(tiny_config(max_queued=1), runner_factory=ScriptedRunner)
    await engine.start()
    try:
        engine._runner.block = True
        first = engine.stream(Request(Task.DESCRIBE, (IMAGE,)))
        assert await anext(first) == "hello "
        with pytest.raises(EngineBusy, match="busy"):
            await engine.generate(Request(Task.DESCRIBE, (IMAGE,)))
        engine._runner.release.set()
        assert [p async for p in first] == ["world"]
    finally:
        await engine.stop()


async def test_stop_cancels_in_flight_work():
    engine = LocalEngine(tiny_config(), runner_factory=ScriptedRunner)
    await engine.start()
    engine._runner.block = True
    stream = engine.stream(Request(Task.DESCRIBE, (IMAGE,)))
    await anext(stream)
    await engine.stop()
    assert engine._runner is None
    await stream.aclose()
    with pytest.raises(EngineUnavailable):
        await engine.generate(Request(Task.DESCRIBE, (IMAGE,)))
