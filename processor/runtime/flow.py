"""Backpressure: a stage pauses its partitions while too much output is unacknowledged.

When the producer holds `max_in_flight` records or more that the broker has not
acknowledged (plus, with a concurrent handler, the records in its calls), or the stage
has produced `max_in_flight_bytes` bytes or more since its last commit (records of
32 KB would otherwise fill librdkafka's own queue long before the record count), every
assigned partition is paused (except those a retry holds paused
already); when both fall to half their limits they resume. The consumer keeps polling while
paused, so the member stays in its group, and memory stays bounded however large the
backlog of the input topic is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Sequence

from processor.backends.abstract import Consumer, Producer, TopicPartition
from processor.ops.logs import lifecycle
from processor.ops.metrics import PAUSE_BACKPRESSURE

logger = logging.getLogger(__name__)


class Backpressure:
    """The partitions a stage paused because its output is not acknowledged fast enough."""

    def __init__(self, stage: str, consumer: Consumer, producer: Producer, limit: int,
                 extra: Callable[[], int] | None = None, byte_limit: int | None = None,
                 unacknowledged_bytes: Callable[[], int] | None = None) -> None:
        self.stage = stage
        self.byte_limit = byte_limit
        self.unacknowledged_bytes = unacknowledged_bytes
        """Bytes produced and not yet known to be acknowledged (since the last commit)."""
        self.extra = extra
        """Records in flight in handler calls, counted with the unacknowledged output."""
        self.consumer = consumer
        self.producer = producer
        self.limit = limit
        self.active = False
        self.paused: set[TopicPartition] = set()

    def check(self, assigned: Collection[TopicPartition],
              held: Collection[TopicPartition]) -> bool:
        """Pause or resume as the producer's unacknowledged output demands (`held`
        partitions are paused for a retry and left alone); whether anything changed."""
        outstanding = self.producer.outstanding()
        if self.extra is not None:
            outstanding += self.extra()
        size = 0
        if self.unacknowledged_bytes is not None:
            size = self.unacknowledged_bytes()
        byte_limit = self.byte_limit
        if not self.active:
            if outstanding < self.limit and (byte_limit is None or size < byte_limit):
                return False
            self.active = True
            self.paused = {tp for tp in assigned if tp not in held}
            if self.paused:
                self.consumer.pause(sorted(self.paused))
                lifecycle(logger, "pause", partitions=self.paused, stage=self.stage,
                          reason=PAUSE_BACKPRESSURE, unacknowledged=outstanding,
                          unacknowledged_bytes=size)
            self.producer.poll(0)
            return True
        self.producer.poll(0)
        if outstanding > self.limit // 2 or (byte_limit is not None
                                             and size > byte_limit // 2):
            return False
        resume = sorted(tp for tp in self.paused if tp in assigned and tp not in held)
        self.active = False
        self.paused = set()
        if resume:
            self.consumer.resume(resume)
            lifecycle(logger, "resume", partitions=resume, stage=self.stage,
                      reason=PAUSE_BACKPRESSURE)
        return True

    def keep_paused(self, tp: TopicPartition) -> bool:
        """A partition paused for another reason is free again: while backpressure is
        on it stays paused and resumes with the others (True); otherwise False."""
        if self.active:
            self.paused.add(tp)
        return self.active

    def assigned(self, partitions: Sequence[TopicPartition]) -> None:
        """Partitions assigned while backpressure is on start paused."""
        if self.active and partitions:
            self.paused.update(partitions)
            self.consumer.pause(partitions)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        self.paused.difference_update(partitions)

    def count(self, assigned: Collection[TopicPartition]) -> int:
        """How many assigned partitions backpressure holds paused."""
        return sum(1 for tp in self.paused if tp in assigned)
