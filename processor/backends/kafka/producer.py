"""The Kafka producer: idempotent by default, transactional with a transactional id.

`produce()` never drops a record when librdkafka's local queue is full: it serves
delivery reports until there is room, or until the deadline given to `set_deadline()`
(a stopping stage's), and then raises `ProducerQueueFull`. Delivery is reported in bulk:
only failures make delivery reports (`delivery.report.only.error`), collected by
`DeliveryLog` and handed out by `take_delivery_errors()`; an aborted transaction takes
its failures with it. Transactional calls retry librdkafka's retriable errors until
their timeout; the others are sorted by `processor.backends.kafka.errors`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, NoReturn, cast

import confluent_kafka as ck
from confluent_kafka import KafkaError, KafkaException

from processor.backends.abstract import (
    DeliveryError,
    GroupMetadata,
    Headers,
    Producer,
    TopicPartition,
)
from processor.backends.kafka.bounded import CallTimedOut, call_within, flush_within
from processor.backends.kafka.convert import to_kafka
from processor.backends.kafka.errors import ErrorLog, denied, error_of, is_denied, raise_kafka
from processor.core.errors import (
    BackendError,
    ProducerQueueFull,
    TransactionError,
    UnknownTopic,
)

logger = logging.getLogger(__name__)

FATAL_CAUSE_WAIT = 2.0
"""Seconds a call that met a bare fatal error waits for the error event naming its cause."""

TXN_GRACE = 1.0
"""Seconds a transactional call is waited for beyond the timeout librdkafka was given."""
BUSY_WAIT = 5.0
"""Seconds a transactional call waits for an earlier one that outran its own wait."""
ROOM_POLL = 0.05
"""Longest single wait for room in a full local queue, in seconds: the deadline given to
`set_deadline` (maybe by a signal handler meanwhile) is read again after each."""


TOO_LARGE_CODES: Final = frozenset({KafkaError.MSG_SIZE_TOO_LARGE,
                                     KafkaError.RECORD_LIST_TOO_LARGE})
"""The broker refused the record (the topic's `max.message.bytes`), or librdkafka did
before sending it (the producer's `message.max.bytes`, same code)."""


def record_size(value: bytes | str | None, key: bytes | str | None,
                headers: Mapping[str, Any] | list[tuple[str, Any]] | None = None) -> int:
    """Value, key and header bytes of a record (without the protocol's framing)."""
    size = len(value or b"") + len(key or b"")
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    for name, data in pairs:
        size += len(name) + len(data or b"")
    return size


class DeliveryLog:
    """The on_delivery callback of a producer: records the failed deliveries only."""

    def __init__(self) -> None:
        self.failures: list[DeliveryError] = []

    def __call__(self, error: KafkaError | None, message: ck.Message) -> None:
        if error is not None:
            # The message of a delivery report is the produced record: it has the topic
            # given to produce() (confluent-kafka types it optional because error events
            # share the class), and partition -1 when none was chosen before it failed.
            partition = message.partition()
            key = message.key()
            self.failures.append(DeliveryError(
                cast(str, message.topic()), -1 if partition is None else partition,
                key, error.str(), error.retriable(), error.code() in TOO_LARGE_CODES,
                record_size(message.value(), key, message.headers()),
                error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED))

    def refused(self, topic: str, value: bytes | None, key: bytes | None,
                headers: Headers | None, error: KafkaError) -> None:
        """A record librdkafka refused at `produce()` as too large for its
        `message.max.bytes`: reported like the broker's refusal, as a failed delivery,
        so that a stage handles both the same way."""
        self.failures.append(DeliveryError(
            topic, -1, key, error.str(), False, True, record_size(value, key, headers)))


class KafkaProducer(Producer):
    """Idempotent by default; transactional with a transactional id."""

    def __init__(self, client: ck.Producer, transactional: bool, errors: ErrorLog,
                 deliveries: DeliveryLog) -> None:
        self._p = client
        self._transactional = transactional
        self._errors = errors
        self._deliveries = deliveries
        self._known_topics: set[str] = set()
        # Whether a transaction was begun and not yet committed or aborted.
        self._in_transaction = False
        # Set when a transactional call that outran its wait has ended at last.
        self._txn_busy: threading.Event | None = None
        self._closed = False
        # The time.monotonic() by which a wait for room in the local queue must end.
        self._deadline: float | None = None

    def _check_topic(self, topic: str) -> None:
        """Fail fast on a topic that does not exist (librdkafka would only report it
        after topic.metadata.propagation.max.ms, in a delivery report)."""
        try:
            metadata = self._p.list_topics(topic, timeout=10.0)
        except KafkaException as exc:
            raise_kafka(exc, f"metadata of topic {topic!r}")
        found = metadata.topics.get(topic)
        if found is not None and is_denied(found.error):
            raise denied(found.error, f"metadata of topic {topic!r}")
        if found is None or found.error is not None or not found.partitions:
            reason = found.error.str() if found is not None and found.error else "no partitions"
            raise UnknownTopic(f"unknown topic {topic!r} ({reason})")
        self._known_topics.add(topic)

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None,
                headers: Headers | None = None, partition: int | None = None,
                timestamp: int | None = None) -> None:
        # This runs once per output record: the closed check inline, and librdkafka's
        # produce() called with positional arguments only (topic, value, key, partition,
        # callback, on_delivery, timestamp, headers): any keyword argument made each call
        # about 0.37 us slower (0.40 against 0.77 us per call, measured on the development
        # machine with confluent-kafka 2.16).
        if self._closed:
            self._check_open()
        if topic not in self._known_topics:
            self._check_topic(topic)
        part = -1 if partition is None else partition
        stamp = 0 if timestamp is None else timestamp
        try:
            self._p.produce(topic, value, key, part, None, None, stamp,
                            headers)  # type: ignore[arg-type]
        except BufferError:
            # The deadline is read only here, off the path of a call that finds room.
            self._produce_when_room(topic, value, key, part, stamp, headers)
        except KafkaException as exc:
            self._refuse_or_raise(exc, topic, value, key, headers)

    def set_deadline(self, deadline: float | None) -> None:
        self._deadline = deadline

    def _produce_when_room(self, topic: str, value: bytes | None, key: bytes | None,
                           part: int, stamp: int, headers: Headers | None) -> None:
        """librdkafka's local queue is full (queue.buffering.max.messages/.kbytes). The
        confluent-kafka rule: serve delivery reports with poll() so that acknowledged
        records leave the queue, then retry -- never drop the record. Without a deadline
        this waits at most message.timeout.ms (by then queued records have failed); with
        one, until it, re-read after every slice of at most `ROOM_POLL` seconds."""
        started = time.monotonic()
        while True:
            deadline = self._deadline
            if deadline is None:
                wait = ROOM_POLL
            else:
                wait = min(ROOM_POLL, deadline - time.monotonic())
                if wait < 0.0:
                    wait = 0.0
            self._serve(wait)
            try:
                self._p.produce(topic, value, key, part, None, None, stamp,
                                headers)  # type: ignore[arg-type]
                return
            except BufferError:
                deadline = self._deadline
                if deadline is not None and time.monotonic() >= deadline:
                    raise ProducerQueueFull(
                        f"produce to {topic}: the producer's local queue was still full "
                        f"({len(self._p)} records unacknowledged) at the deadline, after "
                        f"{time.monotonic() - started:.2f}s; the record was not queued"
                    ) from None
            except KafkaException as exc:
                self._refuse_or_raise(exc, topic, value, key, headers)
                return

    def _refuse_or_raise(self, exc: KafkaException, topic: str, value: bytes | None,
                         key: bytes | None, headers: Headers | None) -> None:
        error = error_of(exc)
        if error is not None and error.code() in TOO_LARGE_CODES:
            self._deliveries.refused(topic, value, key, headers, error)
            return
        self._raise(exc, f"produce to {topic}")

    def _raise(self, exc: KafkaException, what: str) -> NoReturn:
        error = error_of(exc)
        if error is not None and error.code() == KafkaError._FATAL and self._errors.fatal is None:
            # A call can meet the fatal state before the event naming its cause was served:
            # confluent-kafka raises that event from the next poll() (see `_serve`), so
            # poll for it a moment, and the message says why (a refused producer id, say),
            # not a bare "Fatal error". The stage stops on this error anyway; the wait is
            # bounded.
            until = time.monotonic() + FATAL_CAUSE_WAIT
            while (self._errors.fatal is None and self._errors.denied is None
                   and time.monotonic() < until):
                with contextlib.suppress(KafkaException):
                    self._serve(0.05)
        transactional = self._transactional and error is not None and (
            error.code() in (KafkaError._STATE, KafkaError._FATAL) or error.fatal())
        # A refusal by the authorizer may come as an ordinary error event before the
        # client turns fatal: it is the cause then.
        raise_kafka(exc, what, transactional=transactional,
                    fatal_hint=self._errors.fatal or self._errors.denied,
                    names=self._errors.names)

    def _serve(self, timeout: float) -> int:
        """`poll(timeout)` of the client, remembering a fatal error it raises.

        confluent-kafka does not pass librdkafka's fatal error event to `error_cb`: the
        poll() or flush() that serves it raises it instead, as a KafkaException carrying
        the cause (CLUSTER_AUTHORIZATION_FAILED for a refused producer id, say). It is
        served once; every later call only sees the bare _FATAL, so the cause is kept in
        the error log, where `_raise` and the transactional calls look for it."""
        try:
            return self._p.poll(timeout)
        except KafkaException as exc:
            self._remember_fatal(exc)
            raise

    def _remember_fatal(self, exc: KafkaException) -> None:
        error = error_of(exc)
        if error is not None and error.fatal() and error.code() != KafkaError._FATAL:
            self._errors.fatal = error

    def poll(self, timeout: float = 0.0) -> int:
        try:
            return self._serve(timeout)
        except KafkaException as exc:  # a fatal producer, as in `flush`
            self._raise(exc, "producer")

    def flush(self, timeout: float = 30.0) -> int:
        # In slices, so that signal handlers run while it waits (see `flush_within`).
        try:
            return flush_within(self._p, timeout)
        except KafkaException as exc:
            # A fatal producer: fenced, or refused its producer id (no WRITE on any topic
            # and no IDEMPOTENT_WRITE on the cluster).
            self._remember_fatal(exc)
            self._raise(exc, "producer")

    def take_delivery_errors(self) -> list[DeliveryError]:
        failures = self._deliveries.failures
        self._deliveries.failures = []
        return failures

    def outstanding(self) -> int:
        # librdkafka counts a record until its delivery was served by a poll, acknowledged
        # or not, and a busy stage polls only at its commits: serve them first, or every
        # record since the last commit would count (Backpressure paused a stage writing
        # max_in_flight records per commit interval once per interval, and a resumed
        # partition fetches nothing for up to a second).
        self.poll(0)
        return len(self._p)

    # -- transactions --

    def _txn(self, what: str, call: Callable[[float], object], timeout: float | None = None,
             retry: bool = False) -> None:
        """Run `call(seconds left)`; with `timeout`, on a helper thread waited for at most
        that long in all (`call_within`: librdkafka honours the timeout it is given, and
        the helper thread keeps the caller's thread free to run signal handlers), and
        retrying librdkafka's retriable errors while time is left."""
        self._check_open()
        if timeout is None:
            try:
                call(-1.0)
                return
            except KafkaException as exc:
                raise_kafka(exc, self._label(what, exc), transactional=True,
                            fatal_hint=self._errors.fatal, names=self._errors.names)
        deadline = time.monotonic() + timeout
        busy = self._txn_busy
        if busy is not None:
            # An earlier call outran its wait and still runs: librdkafka refuses another
            # one until it ends (_CONFLICT), so wait for it a while. Seen with librdkafka
            # 2.16: send_offsets_to_transaction never returning after the connection to
            # the coordinator was cut; the producer is then of no more use, and failing
            # soon lets the process be restarted sooner.
            if not busy.wait(max(0.0, min(BUSY_WAIT, deadline - time.monotonic()))):
                raise TransactionError(f"{what}: an earlier transactional call is still "
                                       "waiting for the broker (fatal: close this producer "
                                       "and create a new one)")
            self._txn_busy = None
        while True:
            left = max(0.0, deadline - time.monotonic())
            try:
                call_within(what, functools.partial(call, left), left + TXN_GRACE)
                return
            except CallTimedOut as exc:
                self._txn_busy = exc.done
                raise TransactionError(str(exc)) from exc
            except KafkaException as exc:
                error = error_of(exc)
                if (retry and error is not None and error.retriable()
                        and not error.txn_requires_abort() and not error.fatal()
                        and time.monotonic() < deadline):
                    logger.info("%s: retriable error, retrying: %s", what, error.str())
                    continue
                raise_kafka(exc, self._label(what, exc), transactional=True,
                            fatal_hint=self._errors.fatal, names=self._errors.names)

    def _label(self, what: str, exc: KafkaException) -> str:
        """`what`, naming the topics written when the broker refused to add one of them
        to the transaction (librdkafka's error does not say which)."""
        error = error_of(exc)
        if error is None or error.code() != KafkaError.TOPIC_AUTHORIZATION_FAILED:
            return what
        return f"{what} (writing to topic {', '.join(sorted(self._known_topics))})"

    def init_transactions(self, timeout: float = 30.0) -> None:
        if not self._transactional:
            raise TransactionError("not a transactional producer (no transactional_id)")
        self._txn("init_transactions", self._p.init_transactions, timeout, retry=True)

    def begin_transaction(self) -> None:
        self._txn("begin_transaction", lambda _: self._p.begin_transaction())
        self._in_transaction = True

    def send_offsets_to_transaction(self, offsets: Mapping[TopicPartition, int],
                                    group_metadata: GroupMetadata,
                                    timeout: float = 30.0) -> None:
        if not offsets:
            return
        positions = [to_kafka(tp, offset) for tp, offset in offsets.items()]
        self._txn("send_offsets_to_transaction",
                  lambda left: self._p.send_offsets_to_transaction(
                      positions, cast(Any, group_metadata), left), timeout, retry=True)

    def commit_transaction(self, timeout: float = 30.0) -> None:
        self._txn("commit_transaction", self._p.commit_transaction, timeout, retry=True)
        self._in_transaction = False

    def abort_transaction(self, timeout: float = 30.0) -> None:
        self._txn("abort_transaction", self._p.abort_transaction, timeout, retry=True)
        self._in_transaction = False
        # The failures of the aborted transaction's records go with it, or the next
        # transaction would fail (and abort) for them. librdkafka's abort purges the
        # records still queued (their reports fail with _PURGE_QUEUE/_PURGE_INFLIGHT),
        # waits for those in flight and serves every report before it returns, on the
        # thread that called it; so the log now holds failures of this transaction's
        # records only (a transactional producer writes inside transactions only, and a
        # transaction with a failed record cannot commit): forget them all. An abort
        # that failed or timed out keeps them: the transaction is not over, and a retried
        # abort that succeeds forgets them then.
        self._deliveries.failures = []

    def close(self, timeout: float | None = None) -> None:
        """Abort an open transaction (as the in-memory broker does: otherwise it would
        hold read_committed consumers back until the broker's transaction timeout), then
        flush what is queued; all of it within `timeout` seconds (default 30)."""
        if self._closed:
            return
        end = time.monotonic() + (30.0 if timeout is None else max(0.0, timeout))
        if self._in_transaction:
            logger.info("producer closed in a transaction: aborting it")
            try:
                self.abort_transaction(max(0.1, end - time.monotonic()))
            except BackendError as exc:
                logger.warning("aborting the open transaction on close failed: %s", exc)
        self._closed = True
        try:
            remaining = flush_within(self._p, end - time.monotonic())
        except KafkaException as exc:
            # A producer in a fatal state (a transaction the broker refused, say) raises
            # instead of flushing; what it still holds cannot be delivered any more, and
            # the error that brought the caller here is the one to report, not this one.
            logger.warning("producer closed in a fatal state, %d record(s) not delivered: %s",
                           len(self._p), exc)
            return
        if remaining:
            logger.warning("producer closed with %d record(s) unacknowledged", remaining)

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError("producer is closed")

