"""An engine that asks an OpenAI-compatible chat server (such as ``vllm serve``) instead of a local model.

    stream(request) ──► validate, build the instruction text (inference.prompts)
                    ──► encode the images as data URLs on a worker thread
                    ──► wait for one of ``max_concurrent`` slots (this process only)
                    ──► POST {base_url}/chat/completions with "stream": true
                    ──► Server-Sent Events ──► text pieces

Images travel inside the request as ``data:`` URLs; the server never fetches
anything. The server applies Phi-3's chat template and inserts one
``<|image_N|>`` tag per image itself, so only the instruction text is sent.
Connection failures, 5xx and 429 answers are retried with exponential backoff
until text starts to arrive; after that a failure ends the answer. No torch here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from inference.errors import (
    BUSY_TEXT,
    NOT_READY_TEXT,
    SHUTTING_DOWN_TEXT,
    EngineBusy,
    EngineStopping,
    EngineUnavailable,
    InferenceError,
    InvalidRequest,
    ModelNotFound,
    RequestTimedOut,
    timed_out_text,
)
from inference.prompts import check_image_count, conversation
from inference.text import N_
from inference.types import DEFAULT_MODEL_ID, EngineStats, Priority, Request, Result

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

DEFAULT_MODEL = DEFAULT_MODEL_ID
IMAGE_FORMATS = ("auto", "png", "jpeg")
# With image_format "auto", pictures larger than this go as JPEG (quality 95) rather than PNG.
LARGE_IMAGE_PIXELS = 1_000_000
JPEG_QUALITY = 95
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_EVENT_BYTES = 1 << 20  # one Server-Sent Event line; a longer one means the server is not speaking SSE
ERROR_BODY_CHARS = 2000

# What people see (the wording shared with the local engine is in inference.errors).
UNREACHABLE = N_("The model server is not reachable right now. Please try again in a few minutes.")
CUT_OFF = N_("The connection to the model server was lost in the middle of the answer. Please try again.")
SERVER_FAILED = N_("The model server failed while answering. Please try again.")
UNREADABLE = N_("The model server sent an answer I could not read. Please try again later.")
TOO_LONG = N_(
    "This request is too long for the model server (images and answer must fit its context window). "
    "Try fewer or smaller images."
)
TOO_MANY_FOR_SERVER = N_("The model server accepts fewer images per request. Try fewer images.")
BAD_IMAGE = N_("The model server could not read one of the images. Try a different image.")
TOO_LARGE = N_("The images are too large to send to the model server. Try fewer or smaller images.")
REFUSED = N_("The model server refused this request. Try a different image or question.")
NO_MODEL = N_("The model server does not have the model this bot uses right now. Please try again later.")

_CONTEXT_LENGTH = re.compile(
    r"context (length|window)|maximum model length|max_model_len|too long|maximum context|"
    r"exceeds the (max|maximum)",
    re.IGNORECASE,
)
_IMAGE_LIMIT = re.compile(
    r"at most \d+ image|limit_mm_per_prompt|may be provided|too many image", re.IGNORECASE
)


@dataclass(frozen=True)
class RemoteConfig:
    """Where the model server is and how to talk to it. ``api_key`` never appears in repr()."""

    base_url: str = "http://127.0.0.1:8000/v1"  # the OpenAI-compatible root, ending in /v1
    api_key: str | None = field(default=None, repr=False)
    model: str = DEFAULT_MODEL  # the name the server serves the model under
    max_new_tokens: int = 512
    max_images: int = 4
    request_timeout_s: float = 180.0  # whole request: waiting for a slot, retries, streaming
    connect_timeout_s: float = 10.0  # opening one TCP connection
    retries: int = 3  # extra attempts after a failure before any text arrived
    backoff_s: float = 0.5  # first retry delay; doubles each time (with jitter)
    max_backoff_s: float = 10.0
    max_concurrent: int = 16  # requests this process sends at once; more wait here
    image_format: str = "auto"  # auto | png | jpeg

    def __post_init__(self) -> None:
        url = URL(self.base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(
                f"base_url must be an http:// or https:// address, got {display_url(self.base_url)!r}"
            )
        object.__setattr__(self, "base_url", str(url))
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {', '.join(IMAGE_FORMATS)}")
        if self.max_concurrent < 1 or self.retries < 0 or self.max_new_tokens < 1 or self.max_images < 1:
            raise ValueError("max_concurrent, max_new_tokens and max_images must be >= 1; retries >= 0")


def display_url(url: str) -> str:
    """``url`` without any user name or password in it, safe for messages and logs."""
    try:
        parsed = URL(url)
    except (TypeError, ValueError):
        return "<invalid URL>"
    if parsed.user is None and parsed.password is None:
        return url
    return str(parsed.with_user(None))


def encode_image(image: Image.Image, image_format: str = "auto") -> str:
    """One image as a ``data:`` URL: PNG, or JPEG quality 95 for large photos (``auto``)."""
    fmt = image_format
    if fmt == "auto":
        fmt = "jpeg" if image.width * image.height > LARGE_IMAGE_PIXELS else "png"
    buffer = io.BytesIO()
    if fmt == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buffer, format="PNG")
    return f"data:image/{fmt};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def encode_images(images: tuple[Image.Image, ...], image_format: str = "auto") -> list[str]:
    return [encode_image(image, image_format) for image in images]


class _Retryable(Exception):
    """A failure before any text arrived that another attempt may not repeat."""

    def __init__(self, error: InferenceError, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail
        self.retry_after = retry_after


@dataclass
class _Progress:
    """What one request has received so far."""

    on_position: Callable[[int], None] | None = None
    pieces: int = 0
    time_limit_s: float | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None

    def tell_position(self, position: int) -> None:
        if self.on_position is not None:
            try:
                self.on_position(position)
            except Exception:  # a display callback must never break the request
                log.exception("on_position callback failed")


class RemoteEngine:
    """Implements ``inference.types.Engine`` over an OpenAI-compatible chat-completions server.

    The server keeps its own queue and does not publish it, so ``on_position``
    is only ever called with 0, once the server has accepted the request and
    starts answering. Requests beyond ``max_concurrent`` wait in this process
    (silently) for a free slot; that wait counts towards the request's time limit.
    Closing the stream (or cancelling its reader) closes the HTTP connection,
    which makes vLLM abort the generation.
    """

    def __init__(self, config: RemoteConfig | None = None) -> None:
        self.config = config or RemoteConfig()
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(self.config.max_concurrent)
        # Background work (automatic alt text) may hold at most a quarter of the slots, so the rest are
        # always there for people; the server's own queue decides the order after that.
        self._background_slots = asyncio.Semaphore(max(1, self.config.max_concurrent // 4))
        self._responses: set[aiohttp.ClientResponse] = set()
        self._closing = False
        self.dead_reason: str | None = None  # never set: the server's failures fail one request at a time
        self.on_dead: Callable[[str], None] | None = None

    def __repr__(self) -> str:
        return f"RemoteEngine({display_url(self.config.base_url)!r}, model={self.config.model!r})"

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._session is not None and not self._closing

    @property
    def in_flight(self) -> int:
        """Responses being streamed right now."""
        return len(self._responses)

    async def start(self) -> None:
        """Open the connection pool and check that the server answers and serves the model."""
        if self.ready:
            return
        self._closing = False
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else None
        session = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=self.config.connect_timeout_s, sock_connect=self.config.connect_timeout_s
            ),
            connector=aiohttp.TCPConnector(limit=0),  # the slots bound the connections
            raise_for_status=False,
        )
        try:
            await self._check_server(session)
        except BaseException:
            await session.close()
            raise
        self._session = session
        log.info("Model server %s serves %s", display_url(self.config.base_url), self.config.model)

    async def stop(self) -> None:
        """Fail open requests with a clear message, close their connections and the pool."""
        self._closing = True
        for response in list(self._responses):
            response.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _check_server(self, session: aiohttp.ClientSession) -> None:
        where = display_url(self.config.base_url)
        url = f"{self.config.base_url}/models"
        timeout = aiohttp.ClientTimeout(total=self.config.request_timeout_s)
        for attempt in range(self.config.retries + 1):
            try:
                async with session.get(url, timeout=timeout) as response:
                    status = response.status
                    body = await response.text() if status == 200 else ""
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = f"is not reachable ({_describe(exc)})"
            else:
                if status == 200:
                    self._check_model_list(body, where)
                    return
                if status in (401, 403):
                    raise EngineUnavailable(
                        f"The model server at {where} refused the API key (HTTP {status})."
                    )
                if status == 404:
                    raise EngineUnavailable(
                        f"{where}/models was not found (HTTP 404). The address must be the server's "
                        "OpenAI-compatible root, for example http://127.0.0.1:8000/v1."
                    )
                problem = f"answered HTTP {status}"
                if status not in RETRY_STATUSES:
                    break
            if attempt < self.config.retries:
                delay = self._backoff(attempt)
                log.warning("Model server %s %s; trying again in %.1f s", where, problem, delay)
                await asyncio.sleep(delay)
        raise EngineUnavailable(
            f"The model server at {where} {problem}. Check that it is running and that the address is right."
        )

    def _check_model_list(self, body: str, where: str) -> None:
        try:
            served = [str(entry["id"]) for entry in json.loads(body)["data"]]
        except (ValueError, KeyError, TypeError):
            raise EngineUnavailable(
                f"The server at {where} did not answer like an OpenAI-compatible API (GET /models)."
            ) from None
        if self.config.model not in served:
            listed = ", ".join(served) if served else "no models"
            raise ModelNotFound(
                f"The model server at {where} does not serve {self.config.model!r} (it serves: {listed})."
            )

    # -- requests ------------------------------------------------------------------------------
    async def generate(self, request: Request) -> Result:
        started = time.perf_counter()
        progress = _Progress()
        pieces = [piece async for piece in self._stream(request, progress)]
        tokens = progress.completion_tokens if progress.completion_tokens is not None else progress.pieces
        return Result("".join(pieces).strip(), tokens, time.perf_counter() - started)

    def stats(self) -> EngineStats | None:
        """None: the server keeps the figures (vLLM serves its own metrics)."""
        return None

    def wait_s(self, position: int) -> float | None:
        """The server keeps its own line and does not say how long it is: no estimate."""
        return None

    def stream(
        self,
        request: Request,
        on_position: Callable[[int], None] | None = None,
        on_trimmed: Callable[[int], None] | None = None,
    ) -> AsyncIterator[str]:
        # on_trimmed is never called: the server's tokenizer is not here to count a conversation's
        # tokens, so one too long for the server's context is refused with a clear message instead.
        return self._stream(request, _Progress(on_position))

    def max_new_tokens(self, request: Request) -> int:
        asked = request.max_new_tokens or self.config.max_new_tokens
        return max(1, min(asked, self.config.max_new_tokens))

    async def _stream(self, request: Request, progress: _Progress) -> AsyncIterator[str]:
        if not self.ready:
            raise EngineUnavailable(NOT_READY_TEXT)
        check_image_count(len(request.images), self.config.max_images)
        turns = conversation(
            request.task, len(request.images), request.question, request.history, markdown=request.markdown
        )
        loop = asyncio.get_running_loop()
        time_limit = request.time_limit(self.config.request_timeout_s)
        progress.time_limit_s = time_limit
        deadline = loop.time() + time_limit
        try:
            async with asyncio.timeout_at(deadline):
                urls = await asyncio.to_thread(encode_images, request.images, self.config.image_format)
                background = request.priority is Priority.BACKGROUND
                if background:
                    await self._background_slots.acquire()
                try:
                    await self._slots.acquire()
                except BaseException:
                    if background:
                        self._background_slots.release()
                    raise
        except TimeoutError:
            raise self._timed_out(time_limit) from None
        try:
            body = json.dumps(self._payload(urls, turns, self.max_new_tokens(request))).encode()
            del urls
            attempt = 0
            while True:
                if self._closing:
                    raise EngineStopping(SHUTTING_DOWN_TEXT)
                try:
                    async with contextlib.aclosing(self._attempt(body, deadline, progress)) as pieces:
                        async for piece in pieces:
                            yield piece
                    return
                except _Retryable as failure:
                    if progress.pieces:
                        log.warning("Model server failed mid-answer: %s", failure.detail)
                        raise EngineUnavailable(CUT_OFF) from None
                    if self._closing:
                        raise EngineStopping(SHUTTING_DOWN_TEXT) from None
                    delay = self._backoff(attempt, failure.retry_after)
                    if attempt >= self.config.retries or loop.time() + delay >= deadline:
                        log.warning("Model server request failed, giving up: %s", failure.detail)
                        raise failure.error from None
                    attempt += 1
                    log.warning(
                        "Model server request failed (%s); retry %d of %d in %.2f s",
                        failure.detail,
                        attempt,
                        self.config.retries,
                        delay,
                    )
                    await asyncio.sleep(delay)
        finally:
            self._slots.release()
            if background:
                self._background_slots.release()

    def _payload(
        self, image_urls: list[str], turns: list[tuple[str, str]], max_tokens: int
    ) -> dict[str, Any]:
        """The chat request: the images open the first user message (the server numbers their tags)."""
        first_role, first_text = turns[0]
        content: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": url}} for url in image_urls
        ]
        content.append({"type": "text", "text": first_text})
        messages = [{"role": first_role, "content": content}]
        messages += [{"role": role, "content": text} for role, text in turns[1:]]
        return {
            "model": self.config.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    async def _attempt(self, body: bytes, deadline: float, progress: _Progress) -> AsyncIterator[str]:
        """One POST and its event stream. Raises ``_Retryable`` for failures worth another try."""
        response = await self._open(body, deadline, progress.time_limit_s)
        self._responses.add(response)
        complete = False
        try:
            progress.tell_position(0)
            async for event, data in _server_sent_events(response.content, deadline):
                if data.strip() == "[DONE]":
                    complete = True
                    return
                piece = self._read_chunk(event, data, progress)
                if piece:
                    progress.pieces += 1
                    yield piece
            if progress.finish_reason is not None:  # a server that ends without [DONE]
                complete = True
                return
            raise _Retryable(EngineUnavailable(UNREACHABLE), "the answer stream ended early")
        except aiohttp.ClientError as exc:  # before TimeoutError: aiohttp's own timeouts are both
            if self._closing:
                raise EngineStopping(SHUTTING_DOWN_TEXT) from None
            raise _Retryable(EngineUnavailable(UNREACHABLE), _describe(exc)) from None
        except TimeoutError:
            raise self._timed_out(progress.time_limit_s) from None
        finally:
            self._responses.discard(response)
            if complete:
                response.release()
            else:
                response.close()  # the server sees the connection go and stops generating

    async def _open(self, body: bytes, deadline: float, time_limit_s: float | None) -> aiohttp.ClientResponse:
        session = self._session
        if session is None or self._closing:
            raise EngineStopping(SHUTTING_DOWN_TEXT)
        try:
            async with asyncio.timeout_at(deadline):
                response = await session.post(
                    f"{self.config.base_url}/chat/completions",
                    data=body,
                    headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
                )
                if response.status == 200:
                    return response
                try:
                    detail = (await response.text(errors="replace"))[:ERROR_BODY_CHARS]
                finally:
                    response.release()
        except aiohttp.ClientError as exc:  # also connect timeouts, which are TimeoutErrors too
            if self._closing:
                raise EngineStopping(SHUTTING_DOWN_TEXT) from None
            raise _Retryable(EngineUnavailable(UNREACHABLE), _describe(exc)) from None
        except TimeoutError:
            raise self._timed_out(time_limit_s) from None
        except RuntimeError:  # the session was closed under us
            if self._closing:
                raise EngineStopping(SHUTTING_DOWN_TEXT) from None
            raise
        status, message = response.status, _error_message(detail)
        error = self._http_error(status, message)
        summary = f"HTTP {status}: {message}" if message else f"HTTP {status}"
        if status in RETRY_STATUSES:
            raise _Retryable(error, summary, _retry_after(response.headers.get("Retry-After")))
        log.warning("Model server refused a request: %s", summary)
        raise error

    def _http_error(self, status: int, message: str) -> InferenceError:
        if status == 429:
            return EngineBusy(BUSY_TEXT)
        if status in (400, 413, 422):
            return _bad_request(status, message)
        if status in (401, 403):
            log.error("The model server rejected the API key (HTTP %d)", status)
            return EngineUnavailable(UNREACHABLE)
        if status == 404:
            log.error("The model server does not serve %r: %s", self.config.model, message)
            return ModelNotFound(NO_MODEL)
        return EngineUnavailable(UNREACHABLE)

    def _read_chunk(self, event: str, data: str, progress: _Progress) -> str:
        """The text in one streamed chunk (may be empty); raises for an error event."""
        try:
            chunk = json.loads(data)
        except ValueError:
            log.warning("Unreadable event from the model server: %.200r", data)
            raise EngineUnavailable(UNREADABLE) from None
        if not isinstance(chunk, dict):
            raise EngineUnavailable(UNREADABLE)
        if event == "error" or "error" in chunk or chunk.get("object") == "error":
            raise self._stream_error(chunk.get("error", chunk), progress)
        usage = chunk.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            progress.completion_tokens = usage["completion_tokens"]
        choices = chunk.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            return ""
        choice = choices[0]
        if choice.get("finish_reason"):
            progress.finish_reason = str(choice["finish_reason"])
        delta = choice.get("delta") or {}
        content = delta.get("content") if isinstance(delta, dict) else None
        return content if isinstance(content, str) else ""

    def _stream_error(self, error: Any, progress: _Progress) -> InferenceError:
        if isinstance(error, dict):
            message = str(error.get("message", ""))
            code = error.get("code")
        else:
            message, code = str(error), None
        log.warning("The model server reported an error in the stream (code %s): %.300s", code, message)
        if progress.pieces:
            return EngineUnavailable(CUT_OFF)
        if code in (400, "400") or _CONTEXT_LENGTH.search(message):
            return _bad_request(400, message)
        return EngineUnavailable(SERVER_FAILED)

    def _backoff(self, attempt: int, retry_after: float | None = None) -> float:
        delay = min(self.config.max_backoff_s, self.config.backoff_s * 2**attempt)
        delay *= random.uniform(0.5, 1.0)  # many bot processes must not retry in step
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.config.max_backoff_s))
        return delay

    def _timed_out(self, time_limit_s: float | None = None) -> RequestTimedOut:
        return RequestTimedOut(timed_out_text(time_limit_s or self.config.request_timeout_s))


async def _server_sent_events(
    content: aiohttp.StreamReader, deadline: float
) -> AsyncIterator[tuple[str, str]]:
    """(event type, data) for each Server-Sent Event, whatever the network reads cut it into.

    Blank lines end an event, lines starting with ``:`` are comments (keep-alives),
    ``id:`` and ``retry:`` are ignored. At end of stream a last unterminated event is still given.
    """
    buffer = b""
    event, data_lines = "", []
    at_end = False
    while not at_end:
        async with asyncio.timeout_at(deadline):
            chunk = await content.readany()
        at_end = not chunk
        buffer += chunk
        lines = buffer.split(b"\n")
        buffer = b"" if at_end else lines.pop()
        if len(buffer) > MAX_EVENT_BYTES:
            raise EngineUnavailable(UNREADABLE)
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8", errors="replace")
            if not line:
                if data_lines:
                    yield event or "message", "\n".join(data_lines)
                event, data_lines = "", []
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data_lines.append(value)
            elif name == "event":
                event = value
    if data_lines:
        yield event or "message", "\n".join(data_lines)


def _bad_request(status: int, message: str) -> InvalidRequest:
    if status == 413:
        return InvalidRequest(TOO_LARGE)
    if _IMAGE_LIMIT.search(message):
        return InvalidRequest(TOO_MANY_FOR_SERVER)
    if _CONTEXT_LENGTH.search(message):
        return InvalidRequest(TOO_LONG)
    if "image" in message.lower():
        return InvalidRequest(BAD_IMAGE)
    return InvalidRequest(REFUSED)


def _error_message(body: str) -> str:
    """The ``message`` of an OpenAI-style error body (``{"error": {...}}`` or vLLM's flat form)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.strip()[:300]
    if isinstance(parsed, dict):
        error = parsed.get("error", parsed)
        if isinstance(error, dict):
            return str(error.get("message") or error.get("detail") or "")[:ERROR_BODY_CHARS]
        return str(error)[:ERROR_BODY_CHARS]
    return str(parsed)[:300]


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
