"""Ending the process promptly, even while a worker thread is still downloading or loading the model."""

from __future__ import annotations

import os
import sys
import threading


def exit_process(code: int) -> None:
    """Exit with ``code``. If a worker thread is still busy (Ctrl-C during a download or a load), do not
    wait for it: Python would otherwise join it at exit, for as long as the download runs. An interrupted
    Hugging Face download resumes at the next start."""
    sys.stdout.flush()
    sys.stderr.flush()
    main = threading.main_thread()
    if any(
        thread.is_alive() and not thread.daemon and thread is not main for thread in threading.enumerate()
    ):
        os._exit(code)
    sys.exit(code)
