"""Bounding librdkafka calls that take no timeout, and flushing in slices.

confluent-kafka's synchronous `Consumer.commit()` and `Consumer.close()` accept no
timeout: with the group coordinator gone they wait for it for ever (seen at shutdown,
when a stage and its broker are stopped together). Two ways exist to bound them:

* an asynchronous commit, waiting for its `on_commit` callback with a deadline. That
  callback is only served by `Consumer.poll()`/`consume()`, and polling at that point
  fetches records and runs rebalance callbacks in the middle of the stage's commit or
  shutdown; `close()` has no asynchronous form at all;
* the blocking call on a helper thread, the caller waiting for it with a deadline. The
  librdkafka handle is thread-safe and the caller's thread stays in Python code while it
  waits, so signal handlers run (a second SIGTERM can force the exit).

`call_within` does the second. On a timeout it raises `BrokerUnavailable` and leaves the
call to finish (or not) on its daemon thread: a commit that lands late only commits
offsets whose outputs were already acknowledged.

`flush_within` calls `Producer.flush` in short slices, for the same reason: between two
slices Python runs signal handlers (librdkafka's flush, like any call into C, holds the
main thread until it returns).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from processor.core.errors import BrokerUnavailable

T = TypeVar("T")

FLUSH_SLICE = 0.2
"""Longest single `flush()` call, in seconds."""


class CallTimedOut(BrokerUnavailable):
    """A bounded call did not return in time; it goes on in the background, and `done`
    is set when it ends."""

    def __init__(self, message: str, done: threading.Event) -> None:
        super().__init__(message)
        self.done = done


def call_within(what: str, call: Callable[[], T], timeout: float) -> T:
    """The result of `call()`, run on a helper thread; `CallTimedOut` when it has not
    returned within `timeout` seconds. An exception of `call` is raised here."""
    outcome: list[T] = []
    failure: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # handed to the waiting caller
            failure.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=run, name=f"kafka-{what}", daemon=True)
    thread.start()
    if not done.wait(max(0.0, timeout)):
        raise CallTimedOut(
            f"{what}: no answer from the broker within {max(0.0, timeout):.1f}s; given up",
            done)
    if failure:
        raise failure[0]
    return outcome[0]


class _Flushable(Protocol):
    def flush(self, timeout: float) -> int: ...


def flush_within(client: _Flushable, timeout: float) -> int:
    """`client.flush()` for at most `timeout` seconds, in slices; returns how many
    records are still queued."""
    end = time.monotonic() + max(0.0, timeout)
    while True:
        left = end - time.monotonic()
        remaining = client.flush(max(0.0, min(FLUSH_SLICE, left)))
        if remaining == 0 or left <= FLUSH_SLICE:
            return remaining
