"""`memory_limit`: a worker whose resident memory grows past it stops cleanly.

A handler that leaks (keeps references to every record it saw, say) grows its process
until the kernel's OOM killer ends it with SIGKILL: no final commit, and at-least-once
re-reads everything since the last one. `MemoryGuard` watches the worker's resident set
size once a second instead, and when it passes the limit it logs the fact and stops the
stage as a signal would: outputs flushed, offsets committed, clients closed. The worker
then exits with `MEMORY_EXIT`, and the runner's parent process starts a new one in its
place (`processor.runtime.runner`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

MEMORY_EXIT = 75
"""Exit code of a worker stopped by its memory limit (EX_TEMPFAIL: try again)."""

CHECK_INTERVAL = 1.0
"""Seconds between two readings of the resident set size."""

_PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_mib() -> float:
    """This process's resident set size in MiB (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE / (1 << 20)


class MemoryGuard:
    """Calls `stop()` once when the process's resident memory passes `limit_mib`."""

    def __init__(self, limit_mib: int, stop: Callable[[], None], worker: int = 0,
                 interval: float = CHECK_INTERVAL) -> None:
        self.limit_mib = limit_mib
        self.worker = worker
        self.tripped = False
        self._stop = stop
        self._interval = interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-guard", daemon=True)

    def start(self) -> MemoryGuard:
        self._thread.start()
        return self

    def close(self) -> None:
        self._done.set()

    def _run(self) -> None:
        while not self._done.wait(self._interval):
            used = resident_mib()
            if used > self.limit_mib:
                self.tripped = True
                logger.warning(
                    "worker %d: resident memory %.0f MiB is over the limit of %d MiB "
                    "(memory_limit); stopping it cleanly, to be restarted",
                    self.worker, used, self.limit_mib)
                self._stop()
                return
