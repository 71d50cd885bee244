"""Knowing, without sleeping, that a thread is blocked inside a `Buffer`.

`watch(buffer)` swaps the buffer's two conditions (readers wait on `not_empty`, writers on
`not_full`) for `Watched` ones over the same lock. A `Watched` condition sets its `waiting`
event whenever a thread starts to wait on it. The event is set while the waiter still
holds the lock, so by the time another thread gets the lock (to read, write or close) the
waiter is registered and is woken by that thread's notify.
"""

from __future__ import annotations

import threading

from processor.inproc.buffer import Buffer


class Watched(threading.Condition):
    """A condition that says when a thread starts waiting on it."""

    def __init__(self, lock: threading.Lock) -> None:
        super().__init__(lock)
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return super().wait(timeout)


def watch(buffer: Buffer) -> tuple[Watched, Watched]:
    """Watch a buffer's readers and writers: returns (not_empty, not_full)."""
    not_empty, not_full = Watched(buffer._lock), Watched(buffer._lock)
    buffer._not_empty, buffer._not_full = not_empty, not_full
    return not_empty, not_full
