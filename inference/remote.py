"""An engine that asks an OpenAI-compatible chat server (such as ``vllm serve``) through the official
``openai`` client: streaming, retries with back-off and ``Retry-After``, typed errors, ``models.list()``.

What stays ours: the slots (``max_concurrent`` per process, a quarter for background work), the
images as ``data:`` URLs (the server fetches nothing and inserts Phi-3's ``<|image_N|>`` tags itself),
one more try when an answer stream breaks before any text, and the client's errors as
:mod:`inference.errors`. No torch here.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import openai
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam
from yarl import URL

from inference import errors
from inference.images import DATA_URL_FORMATS, data_url
from inference.prompts import check_image_count, conversation
from inference.types import (
    DEFAULT_MODEL_ID,
    EngineStats,
    Place,
    PlacesHeld,
    Priority,
    Request,
    Result,
    group_share,
)

if TYPE_CHECKING:
    from openai import AsyncStream
    from PIL import Image

log = logging.getLogger(__name__)

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
    max_queued: int = 32  # requests that may wait for one of those (each class); more are refused as busy
    image_format: str = "auto"  # auto | png | jpeg

    def __post_init__(self) -> None:
        url = URL(self.base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(
                f"base_url must be an http:// or https:// address, got {display_url(self.base_url)!r}"
            )
        object.__setattr__(self, "base_url", str(url))
        if self.image_format not in DATA_URL_FORMATS:
            raise ValueError(f"image_format must be one of {', '.join(DATA_URL_FORMATS)}")
        if self.max_concurrent < 1 or self.retries < 0 or self.max_new_tokens < 1 or self.max_images < 1:
            raise ValueError("max_concurrent, max_new_tokens and max_images must be >= 1; retries >= 0")
        if self.max_queued < 0:
            raise ValueError("max_queued must be >= 0")


def display_url(url: str) -> str:
    """``url`` without any user name or password in it, safe for messages and logs."""
    try:
        parsed = URL(url)
    except (TypeError, ValueError):
        return "<invalid URL>"
    if parsed.user is None and parsed.password is None:
        return url
    return str(parsed.with_user(None))


def encode_images(images: tuple[Image.Image, ...], image_format: str) -> list[str]:
    return [data_url(image, image_format) for image in images]


class _BrokenBeforeText(Exception):
    """The answer stream broke before any text arrived: another attempt may succeed."""


@dataclass
class _Progress:
    """What one request has received so far."""

    on_position: Callable[[int], None] | None = None
    pieces: int = 0
    completion_tokens: int | None = None

    def tell_position(self, position: int) -> None:
        try:
            if self.on_position is not None:
                self.on_position(position)
        except Exception:  # a display callback must never break the request
            log.exception("on_position callback failed")


class RemoteEngine:
    """Implements ``inference.types.Engine`` over an OpenAI-compatible chat-completions server.

    The server keeps its own queue and does not publish it: ``on_position`` is called once, with 0,
    when the server has accepted the request. Requests beyond ``max_concurrent`` wait here, within
    their time limit, and at most ``max_queued`` of each class wait (places held before the pictures
    arrive included), at most half of them for one server: one more is refused as busy, as the local engine
    refuses it. Closing the stream
    (or cancelling its reader) closes the HTTP connection, and
    vLLM stops generating.
    """

    def __init__(self, config: RemoteConfig | None = None) -> None:
        self.config = config or RemoteConfig()
        self._client: openai.AsyncOpenAI | None = None
        self._slots = asyncio.Semaphore(self.config.max_concurrent)
        # Background work (automatic alt text) holds at most a quarter of the slots: the rest stay for people.
        self._background_slots = asyncio.Semaphore(max(1, self.config.max_concurrent // 4))
        self._streams: set[AsyncStream[ChatCompletionChunk]] = set()
        self._places = PlacesHeld()  # requests not yet holding a slot: the line
        self._closing = False
        self.dead_reason: str | None = None  # never set: the server's failures fail one request at a time
        self.on_dead: Callable[[str], None] | None = None
        # Without a key, no Authorization header at all (a local vLLM needs none).
        self._headers = None if self.config.api_key else {"Authorization": openai.omit}

    def __repr__(self) -> str:
        return f"RemoteEngine({display_url(self.config.base_url)!r}, model={self.config.model!r})"

    @property
    def ready(self) -> bool:
        return self._client is not None and not self._closing

    @property
    def in_flight(self) -> int:
        """Answers being streamed right now."""
        return len(self._streams)

    def stats(self) -> EngineStats | None:
        """None: the server keeps the figures (vLLM serves its own metrics)."""
        return None

    def wait_s(self, position: int) -> float | None:
        """The server keeps its own line and does not say how long it is: no estimate."""
        return None

    def max_new_tokens(self, request: Request) -> int:
        return max(1, min(request.max_new_tokens or self.config.max_new_tokens, self.config.max_new_tokens))

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
        """End open answers (their readers get ``errors.EngineStopping``) and close the client."""
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
            problem = f"refused the API key (HTTP {exc.status_code})"
        except openai.NotFoundError:
            raise errors.EngineUnavailable(
                f"{where}/models was not found (HTTP 404). The address must be the server's "
                "OpenAI-compatible root, for example http://127.0.0.1:8000/v1."
            ) from None
        except openai.APIStatusError as exc:
            problem = f"answered HTTP {exc.status_code}"
        except openai.APIConnectionError as exc:
            problem = f"is not reachable ({_describe(exc.__cause__ or exc)})"
        except (openai.OpenAIError, ValueError, TypeError, AttributeError):
            problem = "did not answer like an OpenAI-compatible API (GET /models)"
        else:
            if self.config.model in served:
                return
            raise errors.ModelNotFound(
                f"The model server at {where} does not serve {self.config.model!r} "
                f"(it serves: {', '.join(served) or 'no models'})."
            )
        raise errors.EngineUnavailable(
            f"The model server at {where} {problem}. Check that it is running and that the address is right."
        )

    @property
    def picture_crops(self) -> int | None:
        """None: the server picks its own crops."""
        return None

    def hold_place(self, priority: Priority = Priority.PEOPLE, group_id: int | None = None) -> Place:
        self._check_serving()
        line = self._places
        if line.count(priority) >= self.config.max_queued or (
            group_id is not None and line.count_for(priority, group_id) >= group_share(self.config.max_queued)
        ):
            raise errors.EngineBusy()
        return line.take(priority, group_id)

    def _check_serving(self) -> None:
        if self._client is None or self._closing:
            raise errors.EngineStopping() if self._closing else errors.NotReady()

    async def generate(self, request: Request, *, place: Place | None = None) -> Result:
        started = time.perf_counter()
        progress = _Progress()
        text = "".join([piece async for piece in self._stream(request, progress, place)]).strip()
        tokens = progress.completion_tokens if progress.completion_tokens is not None else progress.pieces
        return Result(text, tokens, time.perf_counter() - started)

    def stream(
        self,
        request: Request,
        on_position: Callable[[int], None] | None = None,
        on_trimmed: Callable[[int], None] | None = None,
        *,
        place: Place | None = None,
    ) -> AsyncIterator[str]:
        # on_trimmed is never called: the server's tokenizer is not here to count a conversation's
        # tokens, so one too long for the server's context is refused (errors.ServerRefused) instead.
        return self._stream(request, _Progress(on_position), place)

    async def _stream(self, request: Request, progress: _Progress, place: Place | None) -> AsyncIterator[str]:
        self._check_serving()
        client = self._client
        assert client is not None  # checked just above
        check_image_count(len(request.images), self.config.max_images, request.task)
        turns = conversation(
            request.task,
            len(request.images),
            request.question,
            request.history,
            markdown=request.markdown,
            media=request.media,
            labels=request.labels,
            language=request.language,
        )
        time_limit = request.time_limit(self.config.request_timeout_s)
        deadline = asyncio.get_running_loop().time() + time_limit
        # Each await has its own deadline: one around the yields would cancel whatever the reader
        # happens to be awaiting between two pieces.
        slots = (
            [self._background_slots, self._slots]
            if request.priority is Priority.BACKGROUND
            else [self._slots]
        )
        held: list[asyncio.Semaphore] = []
        if place is None:
            place = self.hold_place(request.priority, request.group_id)
        try:
            with place:  # in line until a slot is had
                async with asyncio.timeout_at(deadline):
                    urls = await asyncio.to_thread(encode_images, request.images, self.config.image_format)
                    for slot in slots:
                        await slot.acquire()
                        held.append(slot)
            messages = _messages(urls, turns)
            del urls
            for attempt in range(self.config.retries + 1):
                try:
                    async for piece in self._attempt(client, messages, request, deadline, progress):
                        yield piece
                    return
                except _BrokenBeforeText as failure:
                    log.warning("The model server's answer broke before any text (%s)", failure)
                    if attempt == self.config.retries:
                        raise errors.ServerUnreachable(str(failure)) from None
        except TimeoutError:
            raise errors.RequestTimedOut(time_limit) from None
        finally:
            for slot in held:
                slot.release()

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
                for choice in chunk.choices[:1]:
                    finished = finished or choice.finish_reason is not None
                    if choice.delta.content:
                        progress.pieces += 1
                        yield choice.delta.content
            if not finished:
                raise self._broken("the answer stream ended early", progress)
        except openai.OpenAIError as exc:
            raise self._failure(exc, progress) from None
        except Exception:  # stop() closed the response under the reader
            if self._closing:
                raise errors.EngineStopping() from None
            raise
        finally:
            self._streams.discard(stream)
            await stream.close()  # if still open, the server sees the connection go and stops

    def _broken(self, detail: str, progress: _Progress) -> Exception:
        """The answer stream broke: tried again before any text, cut off after."""
        if self._closing:
            return errors.EngineStopping()
        return errors.AnswerCutOff(detail) if progress.pieces else _BrokenBeforeText(detail)

    def _failure(self, exc: openai.OpenAIError, progress: _Progress) -> Exception:
        """The client's error (after its own retries) as one of ours."""
        message = str(getattr(exc, "message", exc))
        if self._closing:
            return errors.EngineStopping()
        if isinstance(exc, openai.APIConnectionError):
            return self._broken(_describe(exc.__cause__) if exc.__cause__ else message, progress)
        if not isinstance(exc, openai.APIStatusError):  # an error event in the answer stream
            code = getattr(exc, "code", None)
            log.warning("The model server reported an error in the stream (code %s): %.300s", code, message)
            if progress.pieces:
                return errors.AnswerCutOff(message)
            if code in (400, "400") or _CONTEXT_LENGTH.search(message):
                return errors.ServerRefused(_refusal(400, message), message)
            return errors.ServerFailed(message)
        status = exc.status_code
        log.warning("The model server answered HTTP %d: %.300s", status, message)
        if status == 429:
            return errors.EngineBusy(f"the model server answered HTTP 429: {message}")
        if status in (400, 413, 422):
            return errors.ServerRefused(_refusal(status, message), message)
        if status == 404:
            return errors.ModelNotFound(f"the model server does not serve {self.config.model!r}")
        return errors.ServerUnreachable(f"HTTP {status}: {message}")  # 401/403 (a refused key) too


def _messages(image_urls: list[str], turns: list[tuple[str, str]]) -> list[ChatCompletionMessageParam]:
    """The chat: the images open the first user message (the server numbers their tags)."""
    first_role, first_text = turns[0]
    content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": url}} for url in image_urls]
    content.append({"type": "text", "text": first_text})
    messages: list[dict[str, Any]] = [{"role": first_role, "content": content}]
    messages += [{"role": role, "content": text} for role, text in turns[1:]]
    return messages  # type: ignore[return-value]  # the client's TypedDicts, built from plain dicts


def _refusal(status: int, message: str) -> errors.Refusal:
    if status == 413:
        return errors.Refusal.TOO_LARGE
    if _IMAGE_LIMIT.search(message):
        return errors.Refusal.TOO_MANY_IMAGES
    if _CONTEXT_LENGTH.search(message):
        return errors.Refusal.TOO_LONG
    return errors.Refusal.BAD_IMAGE if "image" in message.lower() else errors.Refusal.OTHER


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
