"""The jobs in progress, by id, so that a Stop button, a deleted message or shutdown can end them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from bot.text import Text


class RunningJobs:
    """Jobs in progress by id (the asking message's, or the interaction's), so they can be stopped.

    Stopping cancels the job's task; the engine aborts the answer at its next step and the job
    shows the text it was stopped with (:func:`stoppable`).
    """

    def __init__(self) -> None:
        self._tasks: dict[int, asyncio.Task] = {}
        self._stop_texts: dict[int, str | Text] = {}

    @contextmanager
    def track(self, job_id: int) -> Iterator[None]:
        task = asyncio.current_task()
        if task is not None:
            self._tasks[job_id] = task
        try:
            yield
        finally:
            self._tasks.pop(job_id, None)
            self._stop_texts.pop(job_id, None)

    def stop(self, job_id: int, text: str | Text) -> bool:
        """Stop a running job, which then shows ``text``; False if it is not running (any more)."""
        task = self._tasks.get(job_id)
        if task is None or job_id in self._stop_texts:
            return task is not None
        self._stop_texts[job_id] = text
        task.cancel()
        return True

    def stop_text(self, job_id: int) -> str | Text | None:
        return self._stop_texts.get(job_id)
