"""RemoteEngine against a local HTTP server that speaks the OpenAI streaming protocol like ``vllm serve``."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image

from inference import (
    EngineBusy,
    EngineConfig,
    EngineUnavailable,
    InvalidRequest,
    ModelNotFound,
    Priority,
    Request,
    RequestTimedOut,
    Task,
    Turn,
    remote,
)
from inference.errors import (
    AnswerCutOff,
    EngineStopping,
    NotReady,
    Refusal,
    ServerRefused,
    ServerUnreachable,
)
from inference.prompts import instruction, neutralise
from inference.remote import RemoteConfig, RemoteEngine

ROOT = Path(__file__).resolve().parents[2]
MODEL = "microsoft/Phi-3-vision-128k-instruct"
API_KEY = "sk-test-very-secret-key"
ANSWER = ["A small ", "red square ", "on white — ", "très ", "simple 🟥."]
IMAGE = Image.new("RGB", (32, 24), (200, 30, 30))
CONTEXT_ERROR = (
    "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
    "(4488 in the messages, 512 in the completion). Please reduce the length of the messages or completion."
)


# -- the fake model server ---------------------------------------------------------------------
@dataclass
class FakeVllm:
    """``/v1/models`` and a streaming ``/v1/chat/completions``, told what to do request by request.

    ``script`` holds one behaviour per chat request (then the normal answer):
    ``("status", code, body)``, ``("hang",)``, ``("error_event", pieces_before, message, code)``,
    ``("drop", pieces_before)``, ``("slow",)`` (one piece every 20 ms, for a long time).
    """

    models: list[str] = field(default_factory=lambda: [MODEL])
    models_status: int = 200
    answer: list[str] = field(default_factory=lambda: list(ANSWER))
    script: deque = field(default_factory=deque)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    active: int = 0
    most_active: int = 0
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def list_models(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        if self.models_status != 200:
            return web.json_response({"error": {"message": "nope"}}, status=self.models_status)
        return web.json_response(
            {"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]}
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.headers.append(dict(request.headers))
        self.bodies.append(await request.json())
        behaviour = self.script.popleft() if self.script else ("answer",)
        kind = behaviour[0]
        if kind == "status":
            _, status, body = behaviour
            # The client waits as long as a server asks (vLLM sends no delay: the client's back-off applies)
            headers = {"retry-after-ms": "5"} if status in (429, 500, 502, 503) else None
            return web.json_response(body, status=status, headers=headers)
        if kind == "hang":
            await self.release.wait()
            return web.json_response({}, status=500)
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            return await self._stream(request, behaviour)
        finally:
            self.active -= 1

    async def _stream(self, request: web.Request, behaviour: tuple) -> web.StreamResponse:
        kind = behaviour[0]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            await response.write(b": keep-alive comment\n\n")
            await self._event(
                response, {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
            )
            if kind == "slow":
                pieces = [f"tok{i} " for i in range(1000)]
            else:
                pieces = self.answer if kind == "answer" else self.answer[: behaviour[1]]
            for piece in pieces:
                await self._event(response, _delta(piece))
                if kind == "slow":
                    await asyncio.sleep(0.02)
            if kind == "error_event":
                _, _, message, code = behaviour
                error = {"object": "error", "message": message, "type": "BadRequestError", "code": code}
                await self._event(response, {"error": error})
                return response
            if kind == "drop":
                request.transport.close()
                return response
            if kind == "stall":
                await self.release.wait()
                return response
            await self._event(response, {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            usage = {
                "prompt_tokens": 900,
                "completion_tokens": len(pieces),
                "total_tokens": 900 + len(pieces),
            }
            await self._event(response, {"choices": [], "usage": usage})
            await response.write(b"\r\ndata: [DONE]\r\n\r\n")
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        return response

    async def _event(self, response: web.StreamResponse, payload: dict) -> None:
        """One event, written in two halves (often splitting a multi-byte character)."""
        data = f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()
        middle = len(data) // 2
        await response.write(data[:middle])
        await asyncio.sleep(0)
        await response.write(data[middle:])


def _delta(piece: str) -> dict:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}}]}


@pytest.fixture
async def vllm():
    fake = FakeVllm()
    server = TestServer(fake.app(), host="127.0.0.1", shutdown_timeout=0.1)
    await server.start_server()
    fake.url = str(server.make_url("/v1"))
    yield fake
    fake.release.set()
    await server.close()


@pytest.fixture
async def make_engine(vllm):
    engines: list[RemoteEngine] = []

    async def factory(start: bool = True, **overrides: Any) -> RemoteEngine:
        settings = {"base_url": vllm.url, **overrides}
        engine = RemoteEngine(RemoteConfig(**settings))
        engines.append(engine)
        if start:
            await engine.start()
        return engine

    yield factory
    for engine in engines:
        await engine.stop()


def describe(*images: Image.Image, question: str | None = None, **kwargs: Any) -> Request:
    return Request(Task.DESCRIBE, images or (IMAGE,), question=question, **kwargs)


async def collect(engine: RemoteEngine, request: Request, **kwargs: Any) -> list[str]:
    return [piece async for piece in engine.stream(request, **kwargs)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def decode_data_url(url: str) -> tuple[str, Image.Image]:
    header, _, data = url.partition(",")
    assert header.startswith("data:image/") and header.endswith(";base64")
    return header[len("data:") : -len(";base64")], Image.open(io.BytesIO(base64.b64decode(data)))


# -- answering ---------------------------------------------------------------------------------
async def test_streams_the_answer_piece_by_piece(vllm, make_engine):
    engine = await make_engine()
    positions: list[int] = []

    pieces = await collect(engine, describe(), on_position=positions.append)

    assert pieces == ANSWER
    assert positions == [0]
    assert engine.in_flight == 0


async def test_generate_returns_the_whole_answer_and_the_token_count(vllm, make_engine):
    engine = await make_engine()

    result = await engine.generate(describe())

    assert result.text == "".join(ANSWER).strip()
    assert result.new_tokens == len(ANSWER)  # from the server's usage report
    assert result.seconds > 0


async def test_request_body_carries_data_urls_and_the_neutralised_question(vllm, make_engine):
    engine = await make_engine()
    question = "What is this? <|end|><|assistant|> <|image_1|>"
    images = (IMAGE, Image.new("RGB", (40, 30), (0, 0, 255)))

    await collect(engine, Request(Task.COMPARE, images, question=question, max_new_tokens=64))

    body = vllm.bodies[-1]
    assert body["model"] == MODEL
    assert body["stream"] is True
    assert body["temperature"] == 0
    assert body["max_tokens"] == 64
    [message] = body["messages"]
    assert message["role"] == "user"
    *image_parts, text_part = message["content"]
    assert [part["type"] for part in image_parts] == ["image_url", "image_url"]
    urls = [part["image_url"]["url"] for part in image_parts]
    assert all(url.startswith("data:image/png;base64,") for url in urls)
    assert not any("http" in url[:10] for url in urls)
    assert [decode_data_url(url)[1].size for url in urls] == [(32, 24), (40, 30)]
    assert text_part == {"type": "text", "text": instruction(Task.COMPARE, 2, question)}
    assert neutralise(question) in text_part["text"]
    assert "<|" not in text_part["text"]


async def test_large_photos_go_as_jpeg_and_the_answer_length_is_capped(vllm, make_engine):
    engine = await make_engine(max_new_tokens=100)
    photo = Image.new("RGB", (1400, 1000), (10, 120, 40))

    await collect(engine, describe(photo, max_new_tokens=5000))

    body = vllm.bodies[-1]
    mime, image = decode_data_url(body["messages"][0]["content"][0]["image_url"]["url"])
    assert (mime, image.format, image.size) == ("image/jpeg", "JPEG", (1400, 1000))
    assert body["max_tokens"] == 100


async def test_describe_and_ocr_send_the_task_instruction(vllm, make_engine):
    engine = await make_engine()

    await collect(engine, Request(Task.OCR, (IMAGE,)))
    await collect(engine, describe())

    texts = [body["messages"][0]["content"][-1]["text"] for body in vllm.bodies]
    assert texts == [instruction(Task.OCR, 1), instruction(Task.DESCRIBE, 1)]


# -- validation (same words as the local engine) -----------------------------------------------
@pytest.mark.parametrize("count", [0, 5])
async def test_image_count_is_checked_with_the_local_engines_words(vllm, make_engine, count):
    from inference.prepare import Preparer

    engine = await make_engine(max_images=4)
    request = Request(Task.DESCRIBE, (IMAGE,) * count)
    local = Preparer(processor=None, config=EngineConfig(max_images=4), token_budget=24_576)
    with pytest.raises(InvalidRequest) as expected:
        local.validate(request)

    with pytest.raises(InvalidRequest) as caught:
        await collect(engine, request)

    assert type(caught.value) is type(expected.value)
    assert vars(caught.value) == vars(expected.value)
    assert vllm.bodies == []


async def test_a_stream_before_start_is_refused(make_engine):
    engine = await make_engine(start=False)
    with pytest.raises(NotReady):
        await collect(engine, describe())


# -- failures and retries ----------------------------------------------------------------------
async def test_server_errors_are_retried_then_the_answer_arrives(vllm, make_engine):
    engine = await make_engine(retries=3)
    vllm.script.extend([("status", 503, {"error": {"message": "overloaded"}})] * 2)

    assert "".join(await collect(engine, describe())) == "".join(ANSWER)
    assert len(vllm.bodies) == 3


async def test_retries_exhausted_means_unavailable(vllm, make_engine):
    engine = await make_engine(retries=2)
    vllm.script.extend([("status", 502, "bad gateway")] * 5)

    with pytest.raises(ServerUnreachable, match="HTTP 502"):
        await collect(engine, describe())

    assert len(vllm.bodies) == 3


async def test_a_connection_dropped_before_any_text_is_retried(vllm, make_engine):
    engine = await make_engine(retries=1)
    vllm.script.append(("drop", 0))

    assert await collect(engine, describe()) == ANSWER
    assert len(vllm.bodies) == 2


async def test_too_many_requests_means_busy(vllm, make_engine):
    engine = await make_engine(retries=1)
    vllm.script.extend([("status", 429, {"error": {"message": "slow down"}})] * 2)

    with pytest.raises(EngineBusy):
        await collect(engine, describe())

    assert len(vllm.bodies) == 2


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": {"message": CONTEXT_ERROR, "type": "BadRequestError", "code": 400}}, Refusal.TOO_LONG),
        (
            {"object": "error", "message": "At most 2 image(s) may be provided in one prompt.", "code": 400},
            Refusal.TOO_MANY_IMAGES,
        ),
        ({"error": {"message": "cannot identify image file", "code": 400}}, Refusal.BAD_IMAGE),
        ("not json at all", Refusal.OTHER),
    ],
)
async def test_bad_requests_are_explained_in_plain_words_and_not_retried(vllm, make_engine, body, expected):
    engine = await make_engine(retries=3)
    vllm.script.append(("status", 400, body))

    with pytest.raises(ServerRefused) as caught:
        await collect(engine, describe())

    assert caught.value.reason is expected
    assert len(vllm.bodies) == 1


async def test_a_model_the_server_no_longer_serves(vllm, make_engine):
    engine = await make_engine()
    vllm.script.append(("status", 404, {"error": {"message": "The model `x` does not exist."}}))

    with pytest.raises(ModelNotFound):
        await collect(engine, describe())


async def test_a_server_that_never_answers_times_out(vllm, make_engine):
    engine = await make_engine(request_timeout_s=0.3)
    vllm.script.append(("hang",))
    started = time.perf_counter()

    with pytest.raises(RequestTimedOut) as caught:
        await collect(engine, describe())

    assert caught.value.seconds == 0.3
    assert time.perf_counter() - started < 1


async def test_a_stream_that_stalls_times_out(vllm, make_engine):
    engine = await make_engine(request_timeout_s=0.3)
    vllm.script.append(("stall", 2))
    pieces: list[str] = []

    with pytest.raises(RequestTimedOut):
        async for piece in engine.stream(describe()):
            pieces.append(piece)

    assert pieces == ANSWER[:2]
    await asyncio.wait_for(vllm.disconnected.wait(), 1)


@pytest.mark.parametrize(
    "failure, shown",
    [(("error_event", 2, "CUDA error: device-side assert", 500), 2), (("drop", 3), 3)],
    ids=["error event", "connection lost"],
)
async def test_a_failure_mid_answer_ends_it_without_a_retry(vllm, make_engine, failure, shown):
    engine = await make_engine(retries=3)
    vllm.script.append(failure)
    pieces: list[str] = []

    with pytest.raises(AnswerCutOff):
        async for piece in engine.stream(describe()):
            pieces.append(piece)

    assert pieces == ANSWER[:shown]
    assert len(vllm.bodies) == 1


async def test_an_error_event_before_any_text_is_explained(vllm, make_engine):
    engine = await make_engine()
    message = "Prompt length of 9000 is longer than the maximum model length of 4096."
    vllm.script.append(("error_event", 0, message, 400))

    with pytest.raises(ServerRefused) as caught:
        await collect(engine, describe())

    assert caught.value.reason is Refusal.TOO_LONG


# -- stopping early ----------------------------------------------------------------------------
async def test_closing_the_stream_early_closes_the_connection(vllm, make_engine):
    engine = await make_engine()
    vllm.script.append(("slow",))
    stream = engine.stream(describe())

    assert await anext(stream) == "tok0 "
    await stream.aclose()

    await asyncio.wait_for(vllm.disconnected.wait(), 1)
    assert engine.in_flight == 0


async def test_cancelling_the_reader_closes_the_connection(vllm, make_engine):
    engine = await make_engine()
    vllm.script.append(("slow",))
    first = asyncio.Event()

    async def read() -> None:
        async for _ in engine.stream(describe()):
            first.set()

    task = asyncio.create_task(read())
    await asyncio.wait_for(first.wait(), 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await asyncio.wait_for(vllm.disconnected.wait(), 1)


async def test_stop_fails_open_requests_with_a_clear_message(vllm, make_engine):
    engine = await make_engine()
    vllm.script.append(("slow",))
    stream = engine.stream(describe())
    await anext(stream)

    await engine.stop()

    with pytest.raises(EngineStopping):
        async with asyncio.timeout(1):
            async for _ in stream:
                pass


async def test_requests_beyond_max_concurrent_wait_their_turn(vllm, make_engine):
    engine = await make_engine(max_concurrent=2)

    answers = await asyncio.gather(*(collect(engine, describe()) for _ in range(5)))

    assert answers == [ANSWER] * 5
    assert vllm.most_active <= 2


async def test_the_line_for_a_slot_is_bounded_and_a_place_is_had_before_the_pictures(vllm, make_engine):
    engine = await make_engine(max_concurrent=1, max_queued=2)
    vllm.script.append(("hang",))  # the first request holds the one slot until released (then is retried)
    answering = asyncio.ensure_future(collect(engine, describe()))
    while not vllm.bodies:
        await asyncio.sleep(0.01)
    place = engine.hold_place()  # the bot holds one while the pictures download
    waiting = asyncio.ensure_future(collect(engine, describe()))
    await asyncio.sleep(0.05)
    with pytest.raises(EngineBusy):  # one answering, two in line: the third is refused at once
        engine.hold_place()
    with pytest.raises(EngineBusy):
        await collect(engine, describe())
    vllm.release.set()
    answers = await asyncio.gather(answering, waiting, collect(engine, describe(), place=place))
    assert answers == [ANSWER] * 3
    assert not place.held


async def test_one_server_holds_at_most_half_the_line_for_a_slot(make_engine):
    engine = await make_engine(max_queued=4)
    busy = [engine.hold_place(group_id=1) for _ in range(2)]
    with pytest.raises(EngineBusy):
        engine.hold_place(group_id=1)
    other = engine.hold_place(group_id=2)
    for place in [*busy, other]:
        place.release()


# -- start -------------------------------------------------------------------------------------
async def test_start_fails_clearly_when_the_server_is_down():
    address = f"http://127.0.0.1:{free_port()}/v1"
    engine = RemoteEngine(RemoteConfig(base_url=address, retries=1))

    with pytest.raises(EngineUnavailable, match=r"at http://127\.0\.0\.1:\d+/v1 is not reachable"):
        await engine.start()
    assert not engine.ready


async def test_start_fails_clearly_when_the_model_is_not_served(vllm, make_engine):
    vllm.models = ["llava-hf/llava-1.5-7b-hf"]

    with pytest.raises(ModelNotFound) as caught:
        await make_engine()

    assert "'microsoft/Phi-3-vision-128k-instruct'" in str(caught.value)
    assert "llava-hf/llava-1.5-7b-hf" in str(caught.value)


async def test_start_explains_an_address_without_the_api_root(vllm, make_engine):
    with pytest.raises(EngineUnavailable, match="for example http://127.0.0.1:8000/v1"):
        await make_engine(base_url=vllm.url.removesuffix("/v1"))


async def test_start_reports_a_refused_api_key(vllm, make_engine):
    vllm.models_status = 401
    with pytest.raises(EngineUnavailable, match=r"refused the API key \(HTTP 401\)"):
        await make_engine(api_key="wrong")


# -- the API key -------------------------------------------------------------------------------
async def test_api_key_is_sent_as_bearer_and_never_shown(vllm, make_engine, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="openai")  # whatever an earlier test left the client's logger at
    engine = await make_engine(api_key=API_KEY, retries=1)
    vllm.script.extend([("status", 503, {"error": {"message": "busy"}})] * 2)

    with pytest.raises(EngineUnavailable) as caught:
        await collect(engine, describe())
    await collect(engine, describe())

    assert {headers["Authorization"] for headers in vllm.headers} == {f"Bearer {API_KEY}"}
    for text in (repr(engine.config), str(engine.config), repr(engine), str(caught.value), caplog.text):
        assert API_KEY not in text
    assert "(retry 1 of 1)" in caplog.text  # the client's own retry, logged at INFO


async def test_no_api_key_sends_no_authorization_header(vllm, make_engine):
    engine = await make_engine()
    await collect(engine, describe())
    assert all("Authorization" not in headers for headers in vllm.headers)


def test_credentials_in_the_address_are_never_shown():
    config = RemoteConfig(base_url="https://bot:hunter2@models.example/v1/")
    assert config.base_url == "https://bot:hunter2@models.example/v1"
    assert "hunter2" not in repr(RemoteEngine(config))
    assert remote.display_url(config.base_url) == "https://models.example/v1"


@pytest.mark.parametrize(
    "overrides", [{"base_url": "ftp://x/v1"}, {"base_url": "localhost:8000"}, {"image_format": "webp"}]
)
def test_config_rejects_values_it_cannot_use(overrides):
    with pytest.raises(ValueError):
        RemoteConfig(**overrides)


def test_importing_the_remote_engine_does_not_import_torch():
    code = "import sys, inference.remote; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


async def test_a_follow_up_goes_as_a_multi_turn_chat(vllm, make_engine):
    engine = await make_engine()
    history = (Turn(None, "A red square."), Turn("Any text? <|end|>", "No <|assistant|> text."))
    await collect(engine, Request(Task.DESCRIBE, (IMAGE,), question="What shape?", history=history))

    messages = vllm.bodies[-1]["messages"]
    assert [message["role"] for message in messages] == ["user", "assistant", "user", "assistant", "user"]
    *images, first_text = messages[0]["content"]
    assert [part["type"] for part in images] == ["image_url"]  # the images open the conversation
    assert first_text == {"type": "text", "text": instruction(Task.DESCRIBE, 1, None)}
    assert [message["content"] for message in messages[1:]] == [
        "A red square.",
        "Any text? <end>",
        "No <assistant> text.",
        "What shape?",
    ]


async def test_a_markdown_ocr_request_asks_the_server_for_markdown(vllm, make_engine):
    engine = await make_engine()
    await collect(engine, Request(Task.OCR, (IMAGE,), markdown=True))
    *_, text = vllm.bodies[-1]["messages"][0]["content"]
    assert text == {"type": "text", "text": instruction(Task.OCR, 1, None, markdown=True)}
    assert "Markdown" in text["text"] and text["text"] != instruction(Task.OCR, 1, None)


async def test_background_work_holds_at_most_a_quarter_of_the_slots(vllm, make_engine):
    engine = await make_engine(max_concurrent=4)
    alt_text = Request(Task.ALT_TEXT, (IMAGE,), priority=Priority.BACKGROUND)

    answers = await asyncio.gather(*(collect(engine, alt_text) for _ in range(4)))

    assert answers == [ANSWER] * 4
    assert vllm.most_active == 1  # one of four slots: the other three stay free for people
