"""An engine that asks an OpenAI-compatible chat server (such as ``vllm serve``) instead of a local model.

    stream(request) ──► validate, build the instruction text (inference.prompts)
                    ──► encode the images as data URLs on a worker thread
                    ──► wait for one of ``max_concurrent`` slots (this process only)
                    ──► the official ``openai`` client: chat.completions.create(stream=True)
                    ──► text pieces

Images travel inside the request as ``data:`` URLs; the server never fetches anything. The server
applies Phi-3's chat template and inserts one ``<|image_N|>`` tag per image itself, so only the
instruction text is sent. The client retries connection failures, 408/409/429 and 5xx answers
(``retries`` times, with back-off and the server's ``Retry-After``); a stream that breaks before
any text is tried again here, one that breaks after ends the answer. What stays ours: the slots,
the image encoding and turning the client's errors into :mod:`inference.errors`. No torch here.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import openai
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam
from yarl import URL

from inference.errors import (
    AnswerCutOff,
    EngineBusy,
    EngineStopping,
    EngineUnavailable,
    InferenceError,
    ModelNotFound,
    NotReady,
    Refusal,
    RequestTimedOut,
    ServerFailed,
    ServerRefused,
    ServerUnreachable,
)
from inference.prompts import check_image_count, conversation
from inference.types import DEFAULT_MODEL_ID, EngineStats, Priority, Request, Result

if TYPE_CHECKING:
    from openai import AsyncStream
    from PIL import Image

log = logging.getLogger(__name__)

IMAGE_FORMATS = ("auto", "png", "jpeg")
# With image_format "auto", pictures larger than this go as JPEG (quality 95) rather than PNG.
LARGE_IMAGE_PIXELS = 1_000_000
JPEG_QUALITY = 95

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
    model: str = DEFAULT_MODEL_ID  # the name the server serves the model under
    max_new_tokens: int = 512
    max_images: int = 4
    request_timeout_s: float = 180.0  # whole request: waiting for a slot, retries, streaming
    connect_timeout_s: float = 10.0  # opening one TCP connection
    retries: int = 3  # extra attempts after a failure before any text arrived
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


class _BrokenBeforeText(Exception):
    """The answer stream broke before any text arrived: another attempt may succeed."""


@dataclass
class _Progress:
    """What one request has received so far."""

    on_position: Callable[[int], None] | None = None
    pieces: int = 0
    completion_tokens: int | None = None

    def tell_position(self, position: int) -> None:
        if self.on_position is not None:
            try:
                self.on_position(position)
            except Exception:  # a display callback must never break the request
                log.exception("on_position callback failed")


class RemoteEngine:
    """Implements ``inference.types.Engine`` over an OpenAI-compatible chat-completions server.

    The server keeps its own queue and does not publish it, so ``on_position`` is only ever called
    with 0, once the server has accepted the request. Requests beyond ``max_concurrent`` wait in
    this process for a free slot; that wait counts towards the request's time limit. Closing the
    stream (or cancelling its reader) closes the HTTP connection, which makes vLLM stop generating.
    """

    def __init__(self, config: RemoteConfig | None = None) -> None:
        self.config = config or RemoteConfig()
        self._client: openai.AsyncOpenAI | None = None
        self._slots = asyncio.Semaphore(self.config.max_concurrent)
        # Background work (automatic alt text) may hold at most a quarter of the slots, so the rest are
        # always there for people; the server's own queue decides the order after that.
        self._background_slots = asyncio.Semaphore(max(1, self.config.max_concurrent // 4))
        self._streams: set[AsyncStream[ChatCompletionChunk]] = set()
        self._closing = False
        self.dead_reason: str | None = None  # never set: the server's failures fail one request at a time
        self.on_dead: Callable[[str], None] | None = None

    def __repr__(self) -> str:
        return f"RemoteEngine({display_url(self.config.base_url)!r}, model={self.config.model!r})"

    @property
    def _headers(self) -> dict[str, Any] | None:
        """Without a key, no Authorization header at all (a local vLLM needs none)."""
        return None if self.config.api_key else {"Authorization": openai.omit}

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._client is not None and not self._closing

    @property
    def in_flight(self) -> int:
        """Answers being streamed right now."""
        return len(self._streams)

    async def start(self) -> None:
        """Open the client and check that the server answers and serves the model."""
        if self.ready:
            return
        self._closing = False
        client = openai.AsyncOpenAI(
            api_key=self.config.api_key or "unused",  # never read from OPENAI_API_KEY: that key is OpenAI's
            base_url=self.config.base_url,
            max_retries=self.config.retries,
            timeout=openai.Timeout(self.config.request_timeout_s, connect=self.config.connect_timeout_s),
        )
        try:
            await self._check_server(client)
        except BaseException:
            await client.close()
            raise
        self._client = client
        log.info("Model server %s serves %s", display_url(self.config.base_url), self.config.model)

    async def stop(self) -> None:
        """End open answers (their readers get ``EngineStopping``) and close the client."""
        self._closing = True
        for stream in list(self._streams):
            await stream.close()
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def _check_server(self, client: openai.AsyncOpenAI) -> None:
        where = display_url(self.config.base_url)
        try:
            served = [model.id async for model in client.models.list(extra_headers=self._headers)]
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise EngineUnavailable(
                f"The model server at {where} refused the API key (HTTP {exc.status_code})."
            ) from None
        except openai.NotFoundError:
            raise EngineUnavailable(
                f"{where}/models was not found (HTTP 404). The address must be the server's "
                "OpenAI-compatible root, for example http://127.0.0.1:8000/v1."
            ) from None
        except openai.APIStatusError as exc:
            problem = f"answered HTTP {exc.status_code}"
        except openai.APIConnectionError as exc:
            problem = f"is not reachable ({_describe(exc.__cause__ or exc)})"
        except (openai.OpenAIError, ValueError, TypeError, AttributeError):
            raise EngineUnavailable(
                f"The server at {where} did not answer like an OpenAI-compatible API (GET /models)."
            ) from None
        else:
            if self.config.model not in served:
                listed = ", ".join(served) if served else "no models"
                raise ModelNotFound(
                    f"The model server at {where} does not serve {self.config.model!r} (it serves: {listed})."
                )
            return
        raise EngineUnavailable(
            f"The model server at {where} {problem}. Check that it is running and that the address is right."
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
        # tokens, so one too long for the server's context is refused (ServerRefused) instead.
        return self._stream(request, _Progress(on_position))

    def max_new_tokens(self, request: Request) -> int:
        asked = request.max_new_tokens or self.config.max_new_tokens
        return max(1, min(asked, self.config.max_new_tokens))

    async def _stream(self, request: Request, progress: _Progress) -> AsyncIterator[str]:
        client = self._client
        if client is None:
            raise NotReady()
        if self._closing:
            raise EngineStopping()
        check_image_count(len(request.images), self.config.max_images)
        turns = conversation(
            request.task, len(request.images), request.question, request.history, markdown=request.markdown
        )
        time_limit = request.time_limit(self.config.request_timeout_s)
        deadline = asyncio.get_running_loop().time() + time_limit
        # Each await below has its own deadline: a timeout around the yields would cancel whatever
        # the reader happens to be awaiting between two pieces.
        background = request.priority is Priority.BACKGROUND
        try:
            async with asyncio.timeout_at(deadline):
                urls = await asyncio.to_thread(encode_images, request.images, self.config.image_format)
                if background:
                    await self._background_slots.acquire()
                try:
                    await self._slots.acquire()
                except BaseException:
                    if background:
                        self._background_slots.release()
                    raise
        except TimeoutError:
            raise RequestTimedOut(time_limit) from None
        try:
            messages = _messages(urls, turns)
            del urls
            for attempt in range(self.config.retries + 1):
                try:
                    async for piece in self._attempt(client, messages, request, deadline, progress):
                        yield piece
                    return
                except _BrokenBeforeText as failure:
                    if attempt == self.config.retries:
                        log.warning("The model server's answer broke before any text, giving up: %s", failure)
                        raise ServerUnreachable(str(failure)) from None
                    log.warning("The model server's answer broke before any text (%s); trying again", failure)
                except TimeoutError:
                    raise RequestTimedOut(time_limit) from None
        finally:
            self._slots.release()
            if background:
                self._background_slots.release()

    async def _attempt(
        self,
        client: openai.AsyncOpenAI,
        messages: list[ChatCompletionMessageParam],
        request: Request,
        deadline: float,
        progress: _Progress,
    ) -> AsyncIterator[str]:
        """One request and its answer stream."""
        try:
            async with asyncio.timeout_at(deadline):
                stream = await client.chat.completions.create(
                    model=self.config.model,
                    messages=messages,
                    max_tokens=self.max_new_tokens(request),
                    temperature=0,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_headers=self._headers,
                )
        except openai.OpenAIError as exc:
            raise self._failure(exc, progress) from None
        self._streams.add(stream)
        finished = False
        try:
            progress.tell_position(0)
            chunks = aiter(stream)
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                if chunk.usage is not None:
                    progress.completion_tokens = chunk.usage.completion_tokens
                choice = chunk.choices[0] if chunk.choices else None
                if choice is None:
                    continue
                finished = finished or choice.finish_reason is not None
                if choice.delta.content:
                    progress.pieces += 1
                    yield choice.delta.content
            if not finished:
                raise self._broken("the answer stream ended early", progress)
        except openai.APIConnectionError as exc:
            raise self._broken(_describe(exc.__cause__ or exc), progress) from None
        except openai.OpenAIError as exc:  # an error event in the stream
            raise self._failure(exc, progress) from None
        except Exception as exc:  # the response closed under the reader by stop()
            if self._closing and not isinstance(exc, TimeoutError):
                raise EngineStopping() from None
            raise
        finally:
            self._streams.discard(stream)
            await stream.close()  # if still open, the server sees the connection go and stops

    def _broken(self, detail: str, progress: _Progress) -> Exception:
        if self._closing:
            return EngineStopping()
        if progress.pieces:
            log.warning("The model server's answer broke off: %s", detail)
            return AnswerCutOff(detail)
        return _BrokenBeforeText(detail)

    def _failure(self, exc: openai.OpenAIError, progress: _Progress) -> InferenceError:
        """The client's error (after its own retries) as one of ours."""
        if self._closing:
            return EngineStopping()
        message = str(getattr(exc, "message", exc))
        if isinstance(exc, openai.APIConnectionError):
            return ServerUnreachable(_describe(exc.__cause__ or exc))
        if not isinstance(exc, openai.APIStatusError):  # an error event in the answer stream
            code = getattr(exc, "code", None)
            log.warning("The model server reported an error in the stream (code %s): %.300s", code, message)
            if progress.pieces:
                return AnswerCutOff(message)
            if code in (400, "400") or _CONTEXT_LENGTH.search(message):
                return ServerRefused(_refusal(400, message), message)
            return ServerFailed(message)
        status = exc.status_code
        if status == 429:
            return EngineBusy(f"the model server answered HTTP 429: {message}")
        if status in (400, 413, 422):
            log.warning("The model server refused a request: HTTP %d: %.300s", status, message)
            return ServerRefused(_refusal(status, message), message)
        if status in (401, 403):
            log.error("The model server rejected the API key (HTTP %d)", status)
            return ServerUnreachable(f"the API key was refused (HTTP {status})")
        if status == 404:
            log.error("The model server does not serve %r: %s", self.config.model, message)
            return ModelNotFound(f"the model server does not serve {self.config.model!r}")
        log.warning("The model server failed: HTTP %d: %.300s", status, message)
        return ServerUnreachable(f"HTTP {status}: {message}")


def _messages(image_urls: list[str], turns: list[tuple[str, str]]) -> list[ChatCompletionMessageParam]:
    """The chat: the images open the first user message (the server numbers their tags)."""
    first_role, first_text = turns[0]
    content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": url}} for url in image_urls]
    content.append({"type": "text", "text": first_text})
    messages: list[dict[str, Any]] = [{"role": first_role, "content": content}]
    messages += [{"role": role, "content": text} for role, text in turns[1:]]
    return messages  # type: ignore[return-value]  # the client's TypedDicts, built from plain dicts


def _refusal(status: int, message: str) -> Refusal:
    if status == 413:
        return Refusal.TOO_LARGE
    if _IMAGE_LIMIT.search(message):
        return Refusal.TOO_MANY_IMAGES
    if _CONTEXT_LENGTH.search(message):
        return Refusal.TOO_LONG
    if "image" in message.lower():
        return Refusal.BAD_IMAGE
    return Refusal.OTHER


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
