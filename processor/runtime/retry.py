"""The retry holder: the records of a partition held back behind one waiting for its retry.

When a handler raises `RetryableError`, its record must be tried again later, and the
records after it in its partition must wait: per-partition order is kept. The stage
pauses the partition (the consumer keeps polling, so the member stays in its group) and
hands the record to the `RetryHolder`. Records of that partition which the consumer had
fetched already are appended behind it. When the retry is due the stage takes the whole
run back (`due()`), handles its first record again and then the rest.

The holder is bookkeeping only: it neither pauses, resumes nor handles records (the
stage does). Its `held` mapping is read directly by the stage's hot loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from processor.backends.abstract import Message, TopicPartition
from processor.core.options import RetryPolicy

logger = logging.getLogger(__name__)

RETRY_LOG_EVERY = 10.0
"""Seconds between two retry lines of one stage: a flood of retries (a dependency down)
is one line per interval, with the count of those it stands for."""


class RetryLog:
    """Retries logged at WARNING, on every handler path: the first at once, then at most
    one line per `every` seconds, which counts the retries since the last line. Thread-safe
    (threaded handlers retry on their own threads)."""

    def __init__(self, stage: str, every: float = RETRY_LOG_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stage = stage
        self.every = every
        self.clock = clock
        self._lock = threading.Lock()
        self._next = 0.0
        self._unlogged = 0

    def note(self, where: object, attempt: int, max_attempts: int, delay: float,
             error: BaseException) -> None:
        """Attempt `attempt` (of `max_attempts`) at the record `where` raised `error`; the
        next one follows in `delay` seconds."""
        with self._lock:
            now = self.clock()
            if now < self._next:
                self._unlogged += 1
                return
            more, self._unlogged = self._unlogged, 0
            self._next = now + self.every
        logger.warning("stage %s: retrying %s in %.3fs (attempt %d of %d failed: %s)%s",
                       self.stage, where, delay, attempt, max_attempts, error,
                       f"; {more} more retries since the last such line" if more else "")


class Held:
    """The held records of one partition: the first waits for attempt `attempt + 1`."""

    __slots__ = ("attempt", "records", "retry_at")

    def __init__(self, records: deque[Message], attempt: int, retry_at: float) -> None:
        self.records = records
        self.attempt = attempt
        """How many attempts at the first record failed so far."""
        self.retry_at = retry_at
        """When (on the stage's clock) the next attempt is due."""


class RetryHolder:
    """Partitions whose next record waits for a retry, with the records behind it."""

    def __init__(self, policy: RetryPolicy, clock: Callable[[], float]) -> None:
        self.policy = policy
        self.clock = clock
        self.held: dict[TopicPartition, Held] = {}

    def __len__(self) -> int:
        return len(self.held)

    def __bool__(self) -> bool:
        return bool(self.held)

    def __contains__(self, tp: object) -> bool:
        return tp in self.held

    def exhausted(self, attempt: int) -> bool:
        """Whether `attempt` failed attempts are all the policy allows."""
        return attempt >= self.policy.max_attempts

    def hold(self, tp: TopicPartition, msg: Message, attempt: int) -> float:
        """Hold `msg`, whose attempt number `attempt` just failed (the records of `tp`
        that follow are appended to `held[tp].records`); returns the seconds until its
        retry is due."""
        delay = self.policy.backoff(attempt)
        self.held[tp] = Held(deque([msg]), attempt, self.clock() + delay)
        return delay

    def due(self) -> list[tuple[TopicPartition, Held]]:
        """Take out the partitions whose retry is due, with their held records."""
        now = self.clock()
        ready = [(tp, held) for tp, held in self.held.items() if held.retry_at <= now]
        for tp, _ in ready:
            del self.held[tp]
        return ready

    def first_offsets(self) -> dict[TopicPartition, int]:
        """The offset of the first held record of every holding partition."""
        return {tp: held.records[0].offset() for tp, held in self.held.items() if held.records}

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop what is held for `partitions` (they were revoked or lost)."""
        for tp in partitions:
            self.held.pop(tp, None)

    def clear(self) -> list[TopicPartition]:
        """Drop everything held; returns the partitions that were holding."""
        partitions = list(self.held)
        self.held.clear()
        return partitions
