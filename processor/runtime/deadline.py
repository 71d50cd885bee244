"""A per-record deadline for handlers (`handler_timeout`).

A handler that hangs would stop the stage's loop: it would neither poll (and after
`max.poll.interval.ms` librdkafka would take its partitions away) nor commit. With a
deadline, every handler call runs on a helper thread and the loop waits for it at most
`handler_timeout` seconds. A call that outruns it raises `HandlerTimeout`, a
`RetryableError`: the record is retried with backoff, then dead-lettered
(`retries-exhausted`) by the stage's retry policy, and the loop goes on polling.

Python cannot stop a thread, so a handler that outran its deadline keeps its thread
until it returns, if ever. Meanwhile the health state says so (`/healthz` answers 503,
naming the record), so an orchestrator restarts the process; and after
`MAX_ABANDONED` such threads `hung` is set and the stage stops (`StageFailed`) rather
than leak more.

The helper thread is a daemon thread of our own (not a `ThreadPoolExecutor`, whose
threads the interpreter joins at exit: one stuck handler would then keep the process
from ever exiting). Handing a record to it costs a few tens of microseconds, which is
why the deadline is off unless configured.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import cast

from processor.core.artifact import Artifact
from processor.core.errors import RetryableError
from processor.core.handlers import Handler, Outcome
from processor.ops.health import HealthState

logger = logging.getLogger(__name__)

MAX_ABANDONED = 4
"""Handler threads stuck past their deadline that a stage tolerates before it stops."""


class HandlerTimeout(RetryableError):
    """The handler did not return within the stage's `handler_timeout`."""


class _Call:
    __slots__ = ("artifact", "done", "error", "result")

    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact
        self.done = threading.Event()
        self.result: Outcome = None
        self.error: BaseException | None = None


class DeadlineHandler:
    """`handler` run on a helper thread, waited for at most `timeout` seconds a record."""

    def __init__(self, handler: Handler, timeout: float, health: HealthState,
                 stage: str) -> None:
        self.handler = handler
        self.timeout = timeout
        self.health = health
        self.stage = stage
        self.abandoned = 0
        self.hung: str | None = None
        """Set when `MAX_ABANDONED` calls are stuck: why the stage must stop."""
        self._queue: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._start_worker()

    def _start_worker(self) -> None:
        self._queue = queue.SimpleQueue()
        thread = threading.Thread(target=self._work, args=(self._queue,), daemon=True,
                                  name=f"handler-{self.stage}")
        thread.start()

    def _work(self, calls: queue.SimpleQueue[_Call]) -> None:
        handler = self.handler
        while True:
            call = calls.get()
            try:
                call.result = handler(call.artifact)
            except BaseException as exc:  # handed to the stage's loop
                call.error = exc
            finally:
                call.done.set()

    def __call__(self, artifact: Artifact) -> Outcome:
        call = _Call(artifact)
        self._queue.put(call)
        if not call.done.wait(self.timeout):
            self._abandon(call)
            raise HandlerTimeout(
                f"handler did not return within {self.timeout:g}s (handler_timeout)")
        if call.error is not None:
            raise call.error
        return call.result

    def _abandon(self, call: _Call) -> None:
        """The worker thread is stuck in `call`: leave it, start another one."""
        self.abandoned += 1
        argument: object = call.artifact
        if isinstance(argument, list):  # a batch handler's call (`ThreadDeadlines`)
            what = (f"a batch of {len(argument)} artifacts from {argument[0].id}" if argument
                    else "an empty batch")
        else:
            what = f"artifact {call.artifact.id}"
        logger.error("stage %s: handler stuck on %s for more than %gs; its thread is "
                     "abandoned (%d so far) and the record retried or dead-lettered",
                     self.stage, what, self.timeout, self.abandoned)
        self.health.handler_stuck(what, self.timeout)
        watcher = threading.Thread(target=self._watch, args=(call, what), daemon=True,
                                   name=f"handler-watch-{self.stage}")
        watcher.start()
        if self.abandoned >= MAX_ABANDONED:
            self.hung = (f"{self.abandoned} handler calls stuck past the {self.timeout:g}s "
                         "deadline (handler_timeout); restart the process")
        self._start_worker()

    def _watch(self, call: _Call, what: str) -> None:
        """Clear the unhealthy mark if the stuck call ever returns."""
        call.done.wait()
        logger.warning("stage %s: the handler stuck on %s returned at last", self.stage, what)
        self.health.handler_unstuck(what)


def with_deadline(handler: Handler, timeout: float | None, health: HealthState,
                  stage: str) -> Callable[[Artifact], Outcome]:
    """`handler` itself without a timeout, else wrapped in a `DeadlineHandler`."""
    if timeout is None:
        return handler
    return DeadlineHandler(handler, timeout, health, stage)


class ThreadDeadlines:
    """`handler_timeout` for handlers called from several threads (`handler_mode:
    threads`, and a synchronous batch handler with its retry threads): each calling
    thread gets a `DeadlineHandler` of its own, so that the deadline never makes calls
    wait for each other. `hung` is set once `MAX_ABANDONED` calls are stuck in all."""

    def __init__(self, handler: Callable[..., object], timeout: float,
                 health: HealthState, stage: str) -> None:
        self.handler = handler
        self.timeout = timeout
        self.health = health
        self.stage = stage
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[DeadlineHandler] = []

    def __call__(self, argument: object) -> object:
        deadline: DeadlineHandler | None = getattr(self._local, "deadline", None)
        if deadline is None:
            # A batch handler takes a list of artifacts: the deadline passes it on as is.
            deadline = DeadlineHandler(cast(Handler, self.handler), self.timeout,
                                       self.health, self.stage)
            self._local.deadline = deadline
            with self._lock:
                self._all.append(deadline)
        return deadline(cast(Artifact, argument))

    @property
    def hung(self) -> str | None:
        with self._lock:
            stuck = sum(d.abandoned for d in self._all)
        if stuck >= MAX_ABANDONED:
            return (f"{stuck} handler calls stuck past the {self.timeout:g}s deadline "
                    "(handler_timeout); restart the process")
        return None
