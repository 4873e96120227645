"""What runs on the model thread: decoding steps back to back until the event loop is needed, and the end of
a batch whose step failed. The engine (``engine.py``) hands this to its one model thread and reads back the
events; only that thread touches the runner's model.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from inference.decoding import Event
from inference.errors import ModelFailed
from inference.serving.runner_protocol import Runner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepFailure:
    summary: str  # for the log only
    fatal: bool  # the device cannot be used any more


def run_steps(
    runner: Runner,
    admit: list,
    aborted: list[int],
    needs_driver: threading.Event,
    send: Callable[[list[Event]], object],
) -> tuple[list[Event], StepFailure | None]:
    """On the model thread: :func:`decode_steps`, or, when a step raises, the end of its batch.

    The model thread owns the runner, so it also resets it: every request in the failed step ends with a
    plain message, and the traceback goes to the log.
    """
    try:
        return decode_steps(runner, admit, aborted, needs_driver, send), None
    except Exception as exc:
        log.exception("A model step failed")
        victims = list(dict.fromkeys([*runner.running_ids, *(rid for rid, _ in admit)]))
        runner.reset()
        fatal = runner.is_fatal(exc)
        events = [Event(rid, finished=True, error=ModelFailed()) for rid in victims]
        return events, StepFailure(f"{type(exc).__name__}: {exc}"[:300], fatal)


def decode_steps(
    runner: Runner,
    admit: list,
    aborted: list[int],
    needs_driver: threading.Event,
    send: Callable[[list[Event]], object],
) -> list[Event]:
    """One step, then more decoding steps for as long as nothing needs the driver; returns the last step's
    events (each earlier step's go to ``send`` as they come).

    The driver is needed when a request arrives or is aborted (``needs_driver``) or one finishes (its place
    goes to the next in line). Until then the model thread does not wait for the event loop between steps:
    on a machine where a step is bound by the CPU launching kernels, that wait cost a single user ~20% of its
    speed.
    """
    events = runner.step(admit, aborted)
    while runner.running_ids and not needs_driver.is_set() and not any(event.finished for event in events):
        send(events)
        events = runner.step([], [])
    return events
