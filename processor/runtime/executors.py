"""Where concurrent handler calls run: an event loop thread, or a pool of threads.

A *call* is one or more `Entry` objects: one record for a per-record handler, a batch
for a batch handler. An executor runs the call, retries the records that ended with
`RetryableError` (with the stage's backoff, while their slots stay taken: a record
waiting for its retry counts toward `max_concurrency`), stores each record's outcome
and attempts on its entry, and then puts the call's entries on the `completed` queue,
which the stage thread reads. The stage thread alone decides what the outcomes mean.

* `AsyncExecutor`: `async def` handlers, as tasks on an asyncio event loop that runs in
  a thread of its own. `handler_timeout` bounds each call (`asyncio.timeout`); a call
  that outruns it ends with `HandlerTimeout`, a `RetryableError`.
* `InlineExecutor`: a synchronous batch handler, in the stage's thread; the records
  that asked for a retry wait out their backoff on a thread.
* `ThreadExecutor`: blocking handlers (`handler_mode: threads`) on threads of its
  own. A running thread cannot be stopped: with `handler_timeout` each thread hands its
  call to a helper thread of its own and waits at most that long
  (`runtime/deadline.py`, `ThreadDeadlines`; the stuck helper is abandoned, the record
  retried or dead-lettered); `drain_timeout` bounds how long a revocation or a
  shutdown waits for a call. The threads
  are daemon threads, hand-written rather than a `ThreadPoolExecutor`, whose threads the
  interpreter joins at exit: one handler stuck in a blocking call would then keep the
  process from ever exiting (`runtime/deadline.py` makes the same choice).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from time import perf_counter
from typing import Any, cast

from processor.core.artifact import Artifact
from processor.core.errors import RetryableError
from processor.core.handlers import BatchOutcome
from processor.core.options import RetryPolicy
from processor.runtime.deadline import HandlerTimeout
from processor.runtime.inflight import Entry
from processor.runtime.retry import RetryLog

logger = logging.getLogger(__name__)

Completed = queue.SimpleQueue[list[Entry]]

LOOP_START_TIMEOUT = 10.0
"""Seconds the event loop thread gets to start."""


def _results(result: object, n: int, batch: bool) -> Sequence[BatchOutcome]:
    """The per-record outcomes of one call's result."""
    if not batch:
        return (cast(BatchOutcome, result),)
    if not isinstance(result, list | tuple) or len(result) != n:
        got = f"{len(result)} outcomes" if isinstance(result, list | tuple) else (
            type(result).__name__)
        return [TypeError(f"a batch handler must return a list of {n} outcomes, one per "
                          f"artifact; it returned {got}")] * n
    return cast(Sequence[BatchOutcome], result)


def _settle(todo: list[Entry], results: Sequence[BatchOutcome], attempt: int,
            policy: RetryPolicy, log: RetryLog | None = None) -> list[Entry]:
    """Store the outcomes of attempt `attempt`; returns the entries to try again (each
    retry noted in `log`)."""
    again: list[Entry] = []
    for entry, outcome in zip(todo, results, strict=True):
        entry.attempts = attempt
        if isinstance(outcome, RetryableError) and attempt < policy.max_attempts:
            again.append(entry)
            if log is not None:
                log.note(f"{entry.tp}@{entry.msg.offset()}", attempt, policy.max_attempts,
                         policy.backoff(attempt), outcome)
        else:
            entry.outcome = outcome
    return again


class Executor(ABC):
    """Runs calls and reports them on `completed`."""

    def __init__(self, handler: Callable[..., Any], batch: bool, policy: RetryPolicy,
                 completed: Completed) -> None:
        self.handler = handler
        self.batch = batch
        self.policy = policy
        self.completed = completed
        self.retry_log: RetryLog | None = None
        """Where retries are noted (set by the stage's concurrent loop)."""

    def _argument(self, todo: list[Entry]) -> object:
        if self.batch:
            return [cast(Artifact, e.artifact) for e in todo]
        return todo[0].artifact

    @abstractmethod
    def submit(self, calls: list[list[Entry]]) -> None:
        """Start `calls`; each one's entries arrive on `completed` when it is over."""

    @abstractmethod
    def cancel(self, entries: Sequence[Entry]) -> None:
        """Cancel the calls of `entries` where that is possible (their results are
        ignored in any case)."""

    @abstractmethod
    def close(self) -> None:
        """Cancel what still runs and release the loop or the threads."""


class AsyncExecutor(Executor):
    """`async def` handlers as tasks on an event loop in a thread of its own."""

    def __init__(self, handler: Callable[..., Any], batch: bool, policy: RetryPolicy,
                 completed: Completed, timeout: float | None, name: str) -> None:
        super().__init__(handler, batch, policy, completed)
        self.timeout = timeout
        self.loop = asyncio.new_event_loop()
        self._finished: list[Entry] = []
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True,
                                        name=f"{name}-handlers")
        self._thread.start()
        if not ready.wait(LOOP_START_TIMEOUT):
            raise RuntimeError("the handlers' event loop did not start")

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def submit(self, calls: list[list[Entry]]) -> None:
        self.loop.call_soon_threadsafe(self._start, calls)

    def _start(self, calls: list[list[Entry]]) -> None:
        # The entries hold their tasks (asyncio keeps only weak references to them): a
        # task lives as long as its record is in flight, or until it is cancelled.
        create_task = self.loop.create_task
        if self.batch or self.timeout is not None:
            for entries in calls:
                task = create_task(self._call(entries))
                for entry in entries:
                    entry.handle = task
        else:
            for entries in calls:
                entries[0].handle = create_task(self._one(entries))

    async def _one(self, entries: list[Entry]) -> None:
        """One record, no deadline: the common case, with the fewest frames."""
        entry = entries[0]
        t0 = perf_counter()
        try:
            entry.outcome = await self.handler(entry.artifact)
        except RetryableError as exc:
            if self.policy.max_attempts > 1:
                delay = self.policy.backoff(1)
                if self.retry_log is not None:
                    self.retry_log.note(f"{entry.tp}@{entry.msg.offset()}", 1,
                                        self.policy.max_attempts, delay, exc)
                await asyncio.sleep(delay)
                await self._call(entries, attempt=2, started=t0)
                return
            entry.outcome = exc
        except BaseException as exc:  # CancelledError too: the stage decides (it aborts)
            entry.outcome = exc
        entry.elapsed = perf_counter() - t0
        entry.attempts = 1
        if not self._finished:
            self.loop.call_soon(self._report)
        self._finished.append(entry)

    async def _attempt(self, todo: list[Entry]) -> Sequence[BatchOutcome]:
        try:
            awaitable = cast(Awaitable[object], self.handler(self._argument(todo)))
            if self.timeout is None:
                result = await awaitable
            else:
                try:
                    async with asyncio.timeout(self.timeout):
                        result = await awaitable
                except TimeoutError:
                    result = HandlerTimeout(f"the handler did not return within "
                                            f"{self.timeout}s")
                    return [result] * len(todo)
        except BaseException as exc:  # CancelledError too: the stage decides (it aborts)
            return [exc] * len(todo)
        return _results(result, len(todo), self.batch)

    async def _call(self, entries: list[Entry], attempt: int = 1,
                    started: float | None = None) -> None:
        t0 = perf_counter() if started is None else started
        todo = entries
        while True:
            todo = _settle(todo, await self._attempt(todo), attempt, self.policy,
                           self.retry_log)
            if not todo:
                break
            await asyncio.sleep(self.policy.backoff(attempt))
            attempt += 1
        elapsed = perf_counter() - t0
        for entry in entries:
            entry.elapsed = elapsed
        # Calls finishing in one turn of the event loop reach the stage as one item.
        if not self._finished:
            self.loop.call_soon(self._report)
        self._finished.extend(entries)

    def _report(self) -> None:
        finished, self._finished = self._finished, []
        self.completed.put(finished)

    def cancel(self, entries: Sequence[Entry]) -> None:
        tasks = {id(e.handle): e.handle for e in entries
                 if isinstance(e.handle, asyncio.Task)}
        if tasks:
            # A closed loop (RuntimeError) runs nothing any more.
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._cancel, list(tasks.values()))

    @staticmethod
    def _cancel(tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()

    def close(self) -> None:
        if self.loop.is_closed():
            return

        def stop() -> None:
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.call_soon(self.loop.stop)  # after the cancelled tasks' last step

        try:
            self.loop.call_soon_threadsafe(stop)
        except RuntimeError:  # closed meanwhile
            return
        self._thread.join(LOOP_START_TIMEOUT)


class ThreadExecutor(Executor):
    """Blocking handlers on `threads` daemon threads, started as calls need them."""

    def __init__(self, handler: Callable[..., Any], batch: bool, policy: RetryPolicy,
                 completed: Completed, threads: int, name: str) -> None:
        super().__init__(handler, batch, policy, completed)
        self.name = name
        self.most = threads
        self._queue: queue.SimpleQueue[tuple[list[Entry], Callable[[], None]] | None] = (
            queue.SimpleQueue())
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._backlog = 0
        """Calls queued and not taken by a thread yet."""
        self._lock = threading.Lock()

    def _attempt(self, todo: list[Entry]) -> Sequence[BatchOutcome]:
        try:
            result = self.handler(self._argument(todo))
        except BaseException as exc:  # SystemExit too: the stage decides (it aborts)
            return [exc] * len(todo)
        return _results(result, len(todo), self.batch)

    def _call(self, entries: list[Entry], todo: list[Entry] | None = None,
              attempt: int = 1) -> None:
        """Attempt `todo` (default: all `entries`) from attempt number `attempt` on,
        with the backoff before each retry, then report `entries`."""
        todo = entries if todo is None else todo
        t0 = perf_counter()
        while True:
            if attempt > 1:
                time.sleep(self.policy.backoff(attempt - 1))  # on this call's thread
            todo = _settle(todo, self._attempt(todo), attempt, self.policy, self.retry_log)
            if not todo:
                break
            attempt += 1
        elapsed = perf_counter() - t0
        for entry in entries:
            entry.elapsed = max(entry.elapsed, elapsed)
        self.completed.put(entries)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            entries, call = item
            with self._lock:
                self._idle -= 1
                self._backlog -= 1
            if not all(e.cancelled for e in entries):  # a cancelled call never starts
                try:
                    call()
                except BaseException:
                    logger.exception("stage %s: a handler thread failed", self.name)
            with self._lock:
                self._idle += 1

    def submit(self, calls: list[list[Entry]]) -> None:
        for entries in calls:
            self._put(entries, functools.partial(self._call, entries))

    def _put(self, entries: list[Entry], call: Callable[[], None]) -> None:
        with self._lock:
            self._backlog += 1
            if self._backlog > self._idle and len(self._threads) < self.most:
                thread = threading.Thread(target=self._work, daemon=True,
                                          name=f"{self.name}-handler-{len(self._threads)}")
                self._threads.append(thread)
                self._idle += 1
                thread.start()
        self._queue.put((entries, call))

    def cancel(self, entries: Sequence[Entry]) -> None:
        """Nothing to do: a call whose entries are all cancelled is skipped when a thread
        takes it, and one already running cannot be stopped."""

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)  # each thread ends after the call it runs, if any


class InlineExecutor(ThreadExecutor):
    """A synchronous batch handler: each batch is handled in the stage's own thread when
    it is handed over (a CPU-bound handler gains nothing from another thread, and loses
    the hand-over); only the records that raised `RetryableError` go to a thread, which
    waits out the backoff and tries them again."""

    def submit(self, calls: list[list[Entry]]) -> None:
        finished: list[Entry] = []
        for entries in calls:
            t0 = perf_counter()
            again = _settle(entries, self._attempt(entries), 1, self.policy,
                            self.retry_log)
            elapsed = perf_counter() - t0
            for entry in entries:
                entry.elapsed = elapsed
            if again:
                self._put(entries, functools.partial(self._call, entries, again, 2))
            else:
                finished.extend(entries)
        if finished:
            self.completed.put(finished)

