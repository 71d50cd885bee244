"""The Kafka consumer: a group member on confluent-kafka's `Consumer`.

Consumed records are confluent-kafka `Message` objects handed over as they are (the
abstract `Message` protocol uses their accessor names), so the hot path copies nothing.
Offsets are committed only explicitly and synchronously (`enable.auto.commit` and
`enable.auto.offset.store` are forced off by the broker): a stage commits input offsets
after its outputs were acknowledged, never before.

Rebalance callbacks run inside `consume()`. On assignment the member fetches committed
offsets itself and assigns with explicit start offsets, so `position()` is known at once
and a seek made in `on_assign` takes effect exactly.

A bounded `close(timeout)` runs librdkafka's close (which runs `on_revoke`) on a helper
thread. When it gives up waiting, that close goes on: from then on it starts no callback
of the user's any more, and `wait_callbacks()` tells whether one it had started is still
running, so that the caller does not release what the callback uses under it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import cast

import confluent_kafka as ck
from confluent_kafka import KafkaError, KafkaException

from processor.backends.abstract import (
    AssignCallback,
    Consumer,
    GroupMetadata,
    Message,
    TopicPartition,
)
from processor.backends.kafka.bounded import CallTimedOut, call_within
from processor.backends.kafka.convert import OFFSET_INVALID, from_kafka, to_kafka
from processor.backends.kafka.errors import (
    SETTLING,
    UNKNOWN_TOPIC_CODES,
    ErrorLog,
    denied,
    error_of,
    is_denied,
    raise_kafka,
)
from processor.core.errors import (
    BackendError,
    ConfigError,
    OffsetOutOfRange,
    UnknownTopic,
)

logger = logging.getLogger(__name__)


class KafkaConsumer(Consumer):
    """A consumer-group member. Rebalance callbacks run inside `consume()`."""

    def __init__(self, client: ck.Consumer, auto_offset_reset: str, errors: ErrorLog,
                 strategy: str) -> None:
        self._c = client
        # librdkafka rebalances incrementally when every configured assignor is
        # cooperative (only cooperative-sticky is).
        self._is_cooperative = all(
            name.strip() == "cooperative-sticky" for name in strategy.split(",") if name.strip())
        self._reset = auto_offset_reset
        self._errors = errors
        self._assigned: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        # Where reading starts in partitions nothing was consumed from yet: librdkafka's
        # position() knows only offsets after consumed records.
        self._start: dict[TopicPartition, int] = {}
        self._in_assign = False
        self._revoking_thread: int | None = None  # the thread in a revocation callback
        # Set when close() begins (so that it runs once) and when it has ended (from then
        # on every operation raises; the callbacks close() runs may still commit).
        self._closing = False
        self._closed = False
        self._user: tuple[AssignCallback | None, AssignCallback | None,
                          AssignCallback | None] = (None, None, None)
        # The user's callbacks running now (on the thread of `close` too, after it gave
        # up waiting), and whether it gave up: no callback of the user's starts then.
        self._callbacks = threading.Condition(threading.Lock())
        self._running = 0
        self._abandoned = False

    # -- group membership --

    def subscribe(self, topics: Sequence[str], on_assign: AssignCallback | None = None,
                  on_revoke: AssignCallback | None = None,
                  on_lost: AssignCallback | None = None) -> None:
        if isinstance(topics, str):
            raise TypeError("subscribe() takes a sequence of topic names, not one string")
        if not topics:
            raise ConfigError("subscribe() needs at least one topic")
        self._check_open()
        self._user = (on_assign, on_revoke, on_lost)
        try:
            self._c.subscribe(list(topics), on_assign=self._on_assign,
                              on_revoke=self._on_revoke, on_lost=self._on_lost)
        except KafkaException as exc:
            raise_kafka(exc, "subscribe", names=self._errors.names)

    def _cooperative(self) -> bool:
        return self._is_cooperative

    def _on_assign(self, client: ck.Consumer, partitions: list[ck.TopicPartition]) -> None:
        new = from_kafka(partitions)
        cooperative = self._cooperative()
        if not cooperative:
            self._assigned.clear()
            self._paused.clear()
            self._start.clear()
        self._assigned.update(new)
        starts = self._start_offsets(new)
        self._start.update(starts)
        callback = self._user[0]
        self._in_assign = True
        try:
            if callback is not None and (new or not cooperative):
                self._call_user(callback, new)
        finally:
            self._in_assign = False
            # Assign with explicit start offsets (including seeks made by the callback),
            # so that position() is known at once and reading starts exactly there.
            offsets = [to_kafka(tp, self._start.get(tp, OFFSET_INVALID)) for tp in new]
            if cooperative:
                self._c.incremental_assign(offsets)
            else:
                self._c.assign(offsets)

    def _start_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Committed offsets, or the auto_offset_reset end of partitions without one.
        None while the consumer closes: an assignment that arrives inside `close()` is
        never read, and the broker would not answer the fetch (it waited out its 10 s)."""
        if not partitions or self._closing:
            return {}
        try:
            committed = self._c.committed([to_kafka(tp) for tp in partitions], timeout=10.0)
        except KafkaException as exc:
            logger.warning("could not fetch committed offsets of %s, librdkafka will: %s",
                           ", ".join(map(str, partitions)), exc)
            return {}
        starts: dict[TopicPartition, int] = {}
        for ctp in committed:
            tp = TopicPartition(ctp.topic, ctp.partition)
            if ctp.error is None and ctp.offset >= 0:
                starts[tp] = ctp.offset
            elif self._reset in ("earliest", "latest"):
                try:
                    low, high = self._c.get_watermark_offsets(to_kafka(tp), timeout=10.0)
                except KafkaException:
                    continue
                starts[tp] = low if self._reset == "earliest" else high
        return starts

    def _on_revoke(self, client: ck.Consumer, partitions: list[ck.TopicPartition]) -> None:
        self._take_away(from_kafka(partitions), self._user[1], lost=False)

    def _on_lost(self, client: ck.Consumer, partitions: list[ck.TopicPartition]) -> None:
        self._take_away(from_kafka(partitions), self._user[2] or self._user[1], lost=True)

    def _take_away(self, gone: list[TopicPartition], callback: AssignCallback | None,
                   lost: bool) -> None:
        cooperative = self._cooperative()
        self._revoking_thread = threading.get_ident()
        try:
            if callback is not None and gone:
                self._call_user(callback, gone)
        finally:
            self._revoking_thread = None
            # librdkafka keeps a partition's pause across unassign and assign: one given
            # back to this member would stay paused with nobody to resume it.
            paused = [to_kafka(tp) for tp in gone if tp in self._paused]
            if paused:
                try:
                    self._c.resume(paused)
                except KafkaException as exc:
                    logger.warning("could not resume %d revoked partition(s): %s",
                                   len(paused), exc)
            for tp in gone:
                self._assigned.discard(tp)
                self._paused.discard(tp)
                self._start.pop(tp, None)
            if cooperative:
                self._c.incremental_unassign([to_kafka(tp) for tp in gone])
            else:
                self._c.unassign()
            if lost:
                logger.warning("partitions lost (this member left the group): %s",
                               ", ".join(map(str, gone)))

    def _call_user(self, callback: AssignCallback, partitions: list[TopicPartition]) -> None:
        """Run a callback of the user's, unless a bounded close gave up waiting: the caller
        has moved on (to closing its producer, say), and a callback starting now would
        run under it. librdkafka's (un)assignment after the callback is done anyway."""
        with self._callbacks:
            if self._abandoned:
                logger.info("rebalance callback for %s not run: the consumer's close had "
                            "timed out", ", ".join(map(str, partitions)))
                return
            self._running += 1
        try:
            callback(partitions)
        finally:
            with self._callbacks:
                self._running -= 1
                if not self._running:
                    self._callbacks.notify_all()

    def wait_callbacks(self, timeout: float = 0.0) -> bool:
        with self._callbacks:
            return self._callbacks.wait_for(lambda: not self._running, max(0.0, timeout))

    def assignment(self) -> list[TopicPartition]:
        return sorted(self._assigned)

    # -- reading --

    def consume(self, max_messages: int, timeout: float) -> Sequence[Message]:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        self._check_open()
        try:
            # What is fetched already comes at once; only an empty queue waits, and then
            # for its first record, not for a whole batch (librdkafka's consume() waits
            # until `max_messages` or `timeout`). Under a backlog batches stay full; a
            # record never waits for others to arrive, which was most of the latency of a
            # stage that keeps up (a 2,000-record batch at 13,000 records/s is 150 ms).
            messages = self._c.consume(max_messages, 0)
            if not messages and timeout > 0:
                messages = self._c.consume(1, timeout)
                if messages and max_messages > 1:
                    messages += self._c.consume(max_messages - 1, 0)
        except KafkaException as exc:
            raise_kafka(exc, "consume", names=self._errors.names)
        except RuntimeError as exc:
            raise BackendError(f"consume: {exc}") from exc
        for message in messages:
            if message.error() is not None:
                messages = self._drop_errors(messages)
                break
        # Sound because error events are gone: confluent-kafka's Message has the accessors
        # of the Message protocol, typed more loosely because one class serves records and
        # error events. A record fetched from a partition always has its topic, partition
        # and offset (only error events, such as a broker going down, lack them), and its
        # headers carry bytes (str values exist only in headers given to produce()).
        return cast(Sequence[Message], messages)

    def _drop_errors(self, messages: list[ck.Message]) -> list[ck.Message]:
        good: list[ck.Message] = []
        for message in messages:
            error = message.error()
            if error is None:
                good.append(message)
                continue
            code = error.code()
            if code == KafkaError._PARTITION_EOF:
                continue
            where = f"{message.topic()}[{message.partition()}]"
            if is_denied(error):
                # librdkafka would retry (and log) these forever; the stage stops instead.
                raise denied(error, f"consume {where}" if message.topic() else "consume",
                             self._errors.names)
            if error.fatal():
                raise BackendError(f"fatal consumer error at {where}: {error.str()}")
            if code in UNKNOWN_TOPIC_CODES:
                raise UnknownTopic(f"consume {where}: {error.str()}")
            if code in (KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET):
                raise OffsetOutOfRange(f"consume {where}: {error.str()}")
            # Anything else (a broker down, a transport error) librdkafka retries itself.
            logger.warning("consumer error at %s (retried by the client): %s",
                           where, error.str())
        return good

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        self._check_open()
        if not partitions:
            return
        try:
            self._c.pause([to_kafka(tp) for tp in partitions])
        except KafkaException as exc:
            raise_kafka(exc, "pause")
        self._paused.update(tp for tp in partitions if tp in self._assigned)

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        self._check_open()
        if not partitions:
            return
        try:
            self._c.resume([to_kafka(tp) for tp in partitions])
        except KafkaException as exc:
            raise_kafka(exc, "resume")
        self._paused.difference_update(partitions)

    def paused(self) -> list[TopicPartition]:
        return sorted(self._paused & self._assigned)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._check_open()
        if partition not in self._assigned:
            raise BackendError(f"cannot seek {partition}: not assigned to this member")
        if offset < 0:
            raise OffsetOutOfRange(f"cannot seek {partition} to negative offset {offset}")
        self._start[partition] = offset
        if self._in_assign:
            return  # applied by the assignment that follows the callback
        try:
            self._c.seek(to_kafka(partition, offset))
        except KafkaException as exc:
            raise_kafka(exc, f"seek {partition} to {offset}")

    def position(self, partition: TopicPartition) -> int | None:
        self._check_open()
        try:
            (result,) = self._c.position([to_kafka(partition)])
        except KafkaException as exc:
            raise_kafka(exc, f"position of {partition}")
        if result.offset >= 0:
            return result.offset
        return self._start.get(partition) if partition in self._assigned else None

    def watermarks(self, partition: TopicPartition, timeout: float = 10.0,
                   cached: bool = False) -> tuple[int, int]:
        self._check_open()
        deadline = time.monotonic() + timeout
        while True:
            try:
                found = self._c.get_watermark_offsets(to_kafka(partition), timeout=timeout,
                                                      cached=cached)
                if found is None:  # cached, and nothing fetched yet
                    return -1, -1
                low, high = found
                return low, high
            except KafkaException as exc:
                # Right after a topic is created its leader may not be known yet.
                error = error_of(exc)
                if (cached or error is None or error.code() not in SETTLING
                        or time.monotonic() > deadline):
                    raise_kafka(exc, f"watermarks of {partition}")
                time.sleep(0.1)

    # -- offsets --

    def commit(self, offsets: Mapping[TopicPartition, int],
               timeout: float | None = None) -> None:
        self._check_open()
        if not offsets:
            return
        for tp, offset in offsets.items():
            if offset < 0:
                raise OffsetOutOfRange(f"cannot commit negative offset {offset} for {tp}")
        positions = [to_kafka(tp, o) for tp, o in offsets.items()]

        def commit() -> list[ck.TopicPartition] | None:
            # Synchronous: when commit() returns, the group coordinator has the offsets.
            return self._c.commit(offsets=positions, asynchronous=False)

        try:
            # The synchronous commit takes no timeout; `call_within` bounds it (its
            # module says why a helper thread rather than an asynchronous commit).
            # Inside a revocation callback it must run on the callback's own thread:
            # librdkafka holds a commit made from another thread until the revocation
            # is over, which it never is while the callback waits for that commit. A
            # revocation comes from the coordinator, which was there a moment ago; the
            # request is then bounded by librdkafka's own timeouts, and `close` (which
            # revokes too) by its bound.
            if timeout is None or self._revoking_thread == threading.get_ident():
                result = commit()
            else:
                result = call_within("commit", commit, timeout)
        except KafkaException as exc:
            raise_kafka(exc, "commit", names=self._errors.names)
        for ctp in result or []:
            if ctp.error is not None:
                raise_kafka(KafkaException(ctp.error),
                            f"commit of {ctp.topic}[{ctp.partition}]", names=self._errors.names)

    def committed(self, partitions: Sequence[TopicPartition],
                  timeout: float = 10.0) -> dict[TopicPartition, int | None]:
        self._check_open()
        if not partitions:
            return {}
        try:
            result = self._c.committed([to_kafka(tp) for tp in partitions], timeout=timeout)
        except KafkaException as exc:
            raise_kafka(exc, "committed", names=self._errors.names)
        answer: dict[TopicPartition, int | None] = {}
        for ctp in result:
            if ctp.error is not None:
                raise_kafka(KafkaException(ctp.error),
                            f"committed offset of {ctp.topic}[{ctp.partition}]",
                            names=self._errors.names)
            answer[TopicPartition(ctp.topic, ctp.partition)] = (
                ctp.offset if ctp.offset >= 0 else None)
        return answer

    def group_metadata(self) -> GroupMetadata:
        self._check_open()
        return cast(GroupMetadata, self._c.consumer_group_metadata())

    def __del__(self) -> None:
        # A consumer dropped without close() would be destroyed by librdkafka with the
        # rebalance callbacks already gone; under the cooperative protocol nobody then
        # unassigns its partitions and the destruction can hang the process. Close it
        # here instead, without calling the user's callbacks from a garbage collection.
        if not getattr(self, "_closing", True):
            self._user = (None, None, None)
            try:
                self.close()
            except Exception as exc:
                logger.debug("closing an abandoned consumer: %s", exc)

    def close(self, timeout: float | None = None) -> None:
        if self._closing:
            return
        self._closing = True
        try:
            # Leaves the group; on_revoke runs in here (on the helper thread of
            # `call_within` when bounded: the caller waits for it meanwhile).
            if timeout is None:
                self._c.close()
            else:
                call_within("consumer close", self._c.close, timeout)
        except CallTimedOut as exc:
            # librdkafka's close goes on on the helper thread: it may be inside on_revoke
            # now, or come to it later. Let it start no callback any more; one running
            # goes on, and `wait_callbacks` tells when it has ended.
            with self._callbacks:
                self._abandoned = True
                running = self._running
            if running:
                raise CallTimedOut(f"{exc}; a rebalance callback is still running "
                                   "(wait_callbacks() says when it has ended)",
                                   exc.done) from None
            raise
        except KafkaException as exc:
            raise_kafka(exc, "close", names=self._errors.names)
        except RuntimeError as exc:
            logger.debug("consumer close: %s", exc)
        finally:
            self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError("consumer is closed")

