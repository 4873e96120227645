"""The owner's view of the running bot: Prometheus metrics (``METRICS_PORT``) and ``/status``'s figures.

The only module that imports prometheus-client. What it counts comes from two places: every reply's end
(:class:`bot.reply.Replies` tells it: the task, the final state, time to first text, the whole time,
Discord retries) and the engine's own totals (``engine.stats()``, read when scraped).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from bot.reply import JobRecord
from inference import EngineStats

log = logging.getLogger(__name__)

PREFIX = "phi3v_bot"
# Seconds: from the acknowledgement to the first text, and to the final answer.
FIRST_TEXT_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120)
ANSWER_BUCKETS = (1, 2, 3, 5, 8, 13, 20, 30, 45, 60, 90, 120, 180, 300)
RATE_WINDOW_S = 300.0  # /status shows answers and tokens per second over this long


def _monotonic() -> float:
    return time.monotonic()


@dataclass(frozen=True)
class Rates:
    answers_per_min: float
    tokens_per_s: float
    window_s: float


class EngineCollector(Collector):
    """Reads the engine's figures at each scrape (the engine keeps plain numbers, not metrics)."""

    def __init__(self, stats: Callable[[], EngineStats | None]) -> None:
        self.stats = stats

    def collect(self) -> Iterable:
        stats = self.stats()
        if stats is None:  # an engine without figures (the remote backend counts on its server)
            return
        figures = (
            (GaugeMetricFamily, "queue_length", "Requests waiting for the model", stats.waiting),
            (GaugeMetricFamily, "batch_size", "Requests being answered together now", stats.running),
            (GaugeMetricFamily, "engine_dead", "1 when the engine gave up on the model", int(stats.dead)),
            (CounterMetricFamily, "tokens_generated", "Tokens generated", stats.tokens_generated),
            (
                CounterMetricFamily,
                "out_of_memory",
                "Requests failed for lack of GPU memory",
                stats.out_of_memory,
            ),
            (CounterMetricFamily, "engine_step_failures", "Model steps that raised", stats.step_failures),
            (
                CounterMetricFamily,
                "prompt_tokens_reused",
                "Prompt tokens taken from kept KV-cache blocks instead of computed",
                stats.prompt_tokens_reused,
            ),
        )
        for family, name, description, value in figures:
            yield family(f"{PREFIX}_{name}", description, value=value)


class Metrics:
    """Counters and histograms in their own registry (so several bots in one process never collide)."""

    def __init__(
        self, engine_stats: Callable[[], EngineStats | None], *, clock: Callable[[], float] = _monotonic
    ) -> None:
        self.clock = clock
        self.started_at = clock()
        self.engine_stats = engine_stats
        self.registry = CollectorRegistry()
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Requests by task and final state",
            ["task", "outcome"],
            registry=self.registry,
        )
        self.first_text = Histogram(
            f"{PREFIX}_time_to_first_text_seconds",
            "From the acknowledgement to the first text of the answer",
            buckets=FIRST_TEXT_BUCKETS,
            registry=self.registry,
        )
        self.answer_time = Histogram(
            f"{PREFIX}_answer_seconds",
            "From the acknowledgement to the whole answer shown",
            buckets=ANSWER_BUCKETS,
            registry=self.registry,
        )
        self.discord_retries = Counter(
            f"{PREFIX}_discord_retries",
            "Discord calls tried again after a 429 or 5xx",
            registry=self.registry,
        )
        self.previews_skipped = Counter(
            f"{PREFIX}_previews_skipped",
            "Live previews of answers left out because Discord's edit limit for the channel was spent",
            registry=self.registry,
        )
        self.registry.register(EngineCollector(engine_stats))
        self._answers = 0
        # (time, answers so far, tokens so far), taken at each reply's end, for the rates /status shows
        self._samples: collections.deque[tuple[float, int, int]] = collections.deque(maxlen=10_000)
        self._server: WSGIServer | None = None

    def reply_closed(self, reply: JobRecord) -> None:
        outcome = reply.outcome.value if reply.outcome is not None else "lost"
        self.requests.labels(task=reply.task or "unknown", outcome=outcome).inc()
        if reply.discord_retries:
            self.discord_retries.inc(reply.discord_retries)
        if reply.previews_skipped:
            self.previews_skipped.inc(reply.previews_skipped)
        if outcome == "answer":
            self._answers += 1
            if reply.first_text_at is not None:
                self.first_text.observe(max(reply.first_text_at - reply.started_at, 0.0))
            if reply.finished_at is not None:
                self.answer_time.observe(max(reply.finished_at - reply.started_at, 0.0))
        self._sample()

    def _sample(self) -> None:
        stats = self.engine_stats()
        tokens = stats.tokens_generated if stats is not None else 0
        self._samples.append((self.clock(), self._answers, tokens))

    def rates(self) -> Rates:
        """Answers per minute and tokens per second over the last few minutes (or since the start)."""
        now = self.clock()
        stats = self.engine_stats()
        tokens_now = stats.tokens_generated if stats is not None else 0
        since = now - RATE_WINDOW_S
        before = [sample for sample in self._samples if sample[0] < since]
        if self.started_at >= since:
            start, answers_then, tokens_then = self.started_at, 0, 0
        elif before:
            start, answers_then, tokens_then = since, before[-1][1], before[-1][2]
        else:
            start, answers_then, tokens_then = since, 0, 0
        window = max(now - start, 1e-9)
        return Rates(
            answers_per_min=(self._answers - answers_then) * 60 / window,
            tokens_per_s=(tokens_now - tokens_then) / window,
            window_s=window,
        )

    def uptime_s(self) -> float:
        return self.clock() - self.started_at

    def serve(self, port: int, host: str) -> int:
        """Serve /metrics over HTTP on ``host:port`` (a thread of prometheus-client's); returns the port."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        port = server.server_address[1]
        log.info("Serving Prometheus metrics on http://%s:%d/metrics", host, port)
        return port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
