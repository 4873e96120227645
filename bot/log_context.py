"""The request id on every log line of a request: set once when a job starts, read by a logging filter.

asyncio copies the context into every task a job starts (the error handler's too), so whatever a request
logs carries its id: ``i<interaction id>`` for slash commands and menus, ``m<message id>`` for prefix
commands, ``-`` outside any request.
"""

from __future__ import annotations

import contextvars
import logging

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def set_request_id(request_id: str) -> None:
    REQUEST_ID.set(request_id)


class RequestIdFilter(logging.Filter):
    """Adds ``%(request)s`` to every record (for the log format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request = REQUEST_ID.get()
        return True
