"""The Kafka backend: `processor.backends.abstract` on confluent-kafka (librdkafka).

Consumed records are confluent-kafka `Message` objects handed over as they are (the
abstract `Message` protocol uses their accessor names), so the hot path copies nothing.

Rules of Kafka this module keeps, and where:

* Offsets are committed only explicitly and synchronously (`enable.auto.commit` and
  `enable.auto.offset.store` are forced off): a stage commits input offsets after its
  outputs were acknowledged, never before (`KafkaConsumer.commit`).
* `produce()` never drops a record when librdkafka's local queue is full: it serves
  delivery reports until there is room (`KafkaProducer.produce`).
* Transactional errors are sorted by librdkafka's flags: retriable -> retry,
  `txn_requires_abort` -> `TransactionError` (abort and re-process), fatal or fenced ->
  `ProducerFenced` / `TransactionError` (the producer is unusable) (`_raise_kafka`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, TypeVar, cast

from confluent_kafka import Consumer as _Consumer
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import Message as _Message
from confluent_kafka import Producer as _Producer
from confluent_kafka import TopicPartition as _TP
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from processor.backends.abstract import (
    Admin,
    AssignCallback,
    Broker,
    Consumer,
    DeliveryError,
    GroupMetadata,
    Headers,
    Message,
    Producer,
    TopicPartition,
)
from processor.core.errors import (
    BackendError,
    BrokerUnavailable,
    ConfigError,
    OffsetOutOfRange,
    ProducerFenced,
    RebalanceInProgress,
    TransactionError,
    UnknownTopic,
)

_T = TypeVar("_T")
logger = logging.getLogger(__name__)
# librdkafka's own log lines, routed through Python logging instead of stderr.
_rdkafka_logger = logging.getLogger(__name__ + ".librdkafka")

_OFFSET_INVALID = -1001
_RESETS = ("earliest", "latest", "error")

#: Defaults of every producer; settings override them unless noted in `_check_producer`.
PRODUCER_DEFAULTS: Mapping[str, object] = {
    # No duplicates or reordering when librdkafka retries a batch (implies acks=all and
    # at most 5 requests in flight per partition).
    "enable.idempotence": True,
    "acks": "all",
    # Wait up to 5 ms to fill a batch: far fewer requests for a small latency cost.
    "linger.ms": 5,
    # Up to 1 MiB and 10,000 records per batch (Java's default is 16 KiB).
    "batch.size": 1_048_576,
    "batch.num.messages": 10_000,
    # lz4: cheap on the CPU, and Avro records with repeated field values compress well.
    "compression.type": "lz4",
    # The Java client's partitioner, so that a key lands in the same partition whichever
    # client (Java, Kafka Streams, this one, the in-memory broker) produced it.
    "partitioner": "murmur2_random",
    # Only failures produce delivery reports: successful records cost no callback.
    "delivery.report.only.error": True,
}

#: Defaults of every consumer.
CONSUMER_DEFAULTS: Mapping[str, object] = {
    # The eager protocol: on_assign gets the whole new assignment and on_revoke the whole
    # old one, as with the in-memory broker. "cooperative-sticky" (incremental callbacks,
    # also supported here) measured worse on Kafka 4.1 with librdkafka 2.x: two rounds per
    # rebalance (about 6 s instead of 3 s), and a commit in on_revoke during close() fails
    # with UNKNOWN_MEMBER_ID when a rebalance is pending, so a stopping stage would lose
    # its last commit and re-process those records.
    "partition.assignment.strategy": "range",
    "enable.partition.eof": False,
}

_COMMON_DEFAULTS: Mapping[str, object] = {
    "log.connection.close": False,
    # Give up a connection attempt after 10 s (librdkafka's default is 30 s).
    "socket.connection.setup.timeout.ms": 10_000,
}

_FENCED_CODES = frozenset({
    KafkaError._FENCED,
    KafkaError.PRODUCER_FENCED,
    KafkaError.INVALID_PRODUCER_EPOCH,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
})
_UNKNOWN_TOPIC_CODES = frozenset({
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError._UNKNOWN_PARTITION,
})
_REBALANCE_CODES = frozenset({
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError.STALE_MEMBER_EPOCH,
    KafkaError._ASSIGNMENT_LOST,
})
_UNAVAILABLE_CODES = frozenset({
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TRANSPORT,
    KafkaError._RESOLVE,
    KafkaError._TIMED_OUT,
    KafkaError.BROKER_NOT_AVAILABLE,
})


# --- settings ----------------------------------------------------------------------------


def _flag(settings: Mapping[str, object], key: str) -> bool | None:
    """A boolean librdkafka setting (True/"true"/1...), or None when absent."""
    if key not in settings:
        return None
    value = settings[key]
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"kafka setting {key}: expected true or false, got {value!r}")


def _check_consumer(settings: Mapping[str, object], group: str, read_committed: bool,
                    auto_offset_reset: str) -> None:
    for key in ("enable.auto.commit", "enable.auto.offset.store"):
        if _flag(settings, key):
            raise ConfigError(
                f"kafka setting {key}=true is not allowed: offsets are committed only by "
                "the stage, after its outputs are acknowledged (otherwise records can be "
                "lost on a crash); remove the setting")
    level = settings.get("isolation.level")
    if level is not None:
        wanted = "read_committed" if read_committed else "read_uncommitted"
        if str(level) != wanted:
            raise ConfigError(
                f"kafka setting isolation.level={level} conflicts with this consumer's "
                f"read_committed={read_committed} (which means {wanted}); remove the setting "
                "(exactly-once stages read committed records, the others everything)")
    configured_group = settings.get("group.id")
    if configured_group is not None and str(configured_group) != group:
        raise ConfigError(
            f"kafka setting group.id={configured_group} conflicts with the group {group!r} "
            "given to the consumer; remove the setting")
    reset = settings.get("auto.offset.reset")
    if reset is not None and str(reset) != auto_offset_reset:
        raise ConfigError(
            f"kafka setting auto.offset.reset={reset} conflicts with auto_offset_reset="
            f"{auto_offset_reset!r}; remove the setting")
    if auto_offset_reset not in _RESETS:
        raise ConfigError(
            f"auto_offset_reset must be one of {', '.join(_RESETS)}; got {auto_offset_reset!r}")
    if not group:
        raise ConfigError("a consumer group id is required")


def _check_producer(settings: Mapping[str, object], transactional_id: str | None) -> None:
    configured_tid = settings.get("transactional.id")
    if configured_tid is not None and str(configured_tid) != transactional_id:
        raise ConfigError(
            "kafka setting transactional.id is not allowed: pass transactional_id to "
            "producer() (exactly-once stages derive it per worker)")
    idempotence = _flag(settings, "enable.idempotence")
    if transactional_id is not None and idempotence is False:
        raise ConfigError(
            "kafka setting enable.idempotence=false is not allowed for a transactional "
            "(exactly-once) producer: transactions need the idempotent producer")
    acks = settings.get("acks", settings.get("request.required.acks"))
    if acks is not None and str(acks) not in ("all", "-1") and idempotence is not False:
        raise ConfigError(
            f"kafka setting acks={acks} needs enable.idempotence=false (an idempotent "
            "producer waits for all in-sync replicas); acks=all is the safe choice")


# --- errors ------------------------------------------------------------------------------


def _error_of(exc: KafkaException) -> KafkaError | None:
    arg = exc.args[0] if exc.args else None
    return arg if isinstance(arg, KafkaError) else None


def _raise_kafka(exc: KafkaException, what: str, *, transactional: bool = False,
                 fatal_hint: KafkaError | None = None) -> NoReturn:
    """Raise the `processor.core.errors` exception for a KafkaException of operation `what`."""
    error = _error_of(exc)
    if error is None:
        raise BackendError(f"{what}: {exc}") from exc
    code = error.code()
    text = f"{what}: {error.str()} ({error.name()})"
    if code == KafkaError._FATAL and fatal_hint is not None:
        code = fatal_hint.code()
        text = f"{text}; cause: {fatal_hint.str()}"
    if code in _FENCED_CODES or (error.fatal() and "fenced" in error.str().lower()):
        raise ProducerFenced(
            f"{text}: another producer with the same transactional id took over; "
            "this one must stop") from exc
    if transactional or error.txn_requires_abort():
        qualifier = (" (fatal: close this producer and create a new one)" if error.fatal()
                     else " (abort the transaction)" if error.txn_requires_abort() else "")
        raise TransactionError(text + qualifier) from exc
    if code in _UNKNOWN_TOPIC_CODES:
        raise UnknownTopic(text) from exc
    if code in _REBALANCE_CODES:
        raise RebalanceInProgress(text) from exc
    if code == KafkaError.OFFSET_OUT_OF_RANGE:
        raise OffsetOutOfRange(text) from exc
    if code in _UNAVAILABLE_CODES:
        raise BrokerUnavailable(text) from exc
    raise BackendError(text) from exc


def _tp(tp: TopicPartition, offset: int = _OFFSET_INVALID) -> _TP:
    return _TP(tp.topic, tp.partition, offset)


def _ours(tps: Sequence[_TP]) -> list[TopicPartition]:
    return [TopicPartition(tp.topic, tp.partition) for tp in tps]


class _ErrorLog:
    """error_cb of a client: logs librdkafka's error events, remembers the fatal one."""

    def __init__(self, client: str, chained: object = None) -> None:
        self.client = client
        self.fatal: KafkaError | None = None
        self._chained = chained if callable(chained) else None

    def __call__(self, error: KafkaError) -> None:
        if error.fatal():
            self.fatal = error
            logger.error("%s: fatal Kafka error: %s", self.client, error.str())
        elif error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            logger.warning("%s: %s", self.client, error.str())
        else:
            logger.info("%s: Kafka error event: %s", self.client, error.str())
        if self._chained is not None:
            self._chained(error)


# --- the broker --------------------------------------------------------------------------


class KafkaBroker(Broker):
    """Apache Kafka through confluent-kafka.

    `settings` are librdkafka settings passed to every client (for example
    `security.protocol`, `sasl.*`, `statistics.interval.ms`); the few that would break
    the stage's delivery guarantees raise ConfigError. Reaching the cluster is checked
    once, when the first client is made: an unreachable cluster raises BrokerUnavailable
    after `connect_timeout` seconds.
    """

    def __init__(self, bootstrap_servers: str, settings: Mapping[str, object] | None = None,
                 *, connect_timeout: float = 10.0) -> None:
        if not bootstrap_servers or not bootstrap_servers.strip():
            raise ConfigError("bootstrap_servers is empty: name at least one host:port")
        self.bootstrap_servers = bootstrap_servers
        self.settings: dict[str, object] = dict(settings or {})
        configured = self.settings.pop("bootstrap.servers", None)
        if configured is not None and str(configured) != bootstrap_servers:
            raise ConfigError(
                f"kafka setting bootstrap.servers={configured} conflicts with "
                f"bootstrap_servers={bootstrap_servers!r}")
        self.connect_timeout = connect_timeout
        self._reachable = False

    @property
    def name(self) -> str:
        return f"kafka {self.bootstrap_servers}"

    def _config(self, defaults: Mapping[str, object], settings: Mapping[str, object],
                forced: Mapping[str, object]) -> dict[str, Any]:
        config: dict[str, Any] = {**_COMMON_DEFAULTS, **defaults, **settings, **forced}
        config["bootstrap.servers"] = self.bootstrap_servers
        config.setdefault("logger", _rdkafka_logger)
        return config

    def _merged(self, settings: Mapping[str, object] | None) -> dict[str, object]:
        merged = dict(self.settings)
        merged.update(settings or {})
        return merged

    def ensure_reachable(self) -> None:
        """Raise BrokerUnavailable unless the cluster answers within `connect_timeout`."""
        if self._reachable:
            return
        config = self._config({}, {k: v for k, v in self.settings.items()
                                   if not callable(v)}, {"log_level": 0})
        config.pop("logger", None)
        admin = AdminClient(config)
        try:
            admin.list_topics(timeout=self.connect_timeout)
        except KafkaException as exc:
            error = _error_of(exc)
            reason = error.str() if error is not None else str(exc)
            raise BrokerUnavailable(
                f"Kafka at {self.bootstrap_servers} did not answer within "
                f"{self.connect_timeout:g}s ({reason}); is the broker running and reachable?"
            ) from exc
        self._reachable = True

    def consumer(self, group: str, *, read_committed: bool = False,
                 auto_offset_reset: str = "earliest", client_id: str | None = None,
                 settings: Mapping[str, object] | None = None) -> KafkaConsumer:
        merged = self._merged(settings)
        _check_consumer(merged, group, read_committed, auto_offset_reset)
        self.ensure_reachable()
        errors = _ErrorLog(f"consumer {client_id or group}", merged.pop("error_cb", None))
        forced: dict[str, object] = {
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": auto_offset_reset,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
            "error_cb": errors,
        }
        if client_id:
            forced["client.id"] = client_id
        config = self._config(CONSUMER_DEFAULTS, merged, forced)
        try:
            client = _Consumer(config)
        except KafkaException as exc:
            raise ConfigError(f"invalid consumer settings: {exc}") from exc
        strategy = str(config["partition.assignment.strategy"])
        return KafkaConsumer(client, auto_offset_reset, errors, strategy)

    def producer(self, *, transactional_id: str | None = None, client_id: str | None = None,
                 settings: Mapping[str, object] | None = None) -> KafkaProducer:
        merged = self._merged(settings)
        _check_producer(merged, transactional_id)
        self.ensure_reachable()
        errors = _ErrorLog(f"producer {client_id or transactional_id or ''}".rstrip(),
                           merged.pop("error_cb", None))
        deliveries = _DeliveryLog()
        forced: dict[str, object] = {"error_cb": errors, "on_delivery": deliveries}
        if transactional_id is not None:
            forced["transactional.id"] = transactional_id
        if client_id:
            forced["client.id"] = client_id
        config = self._config(PRODUCER_DEFAULTS, merged, forced)
        try:
            client = _Producer(config)
        except KafkaException as exc:
            raise ConfigError(f"invalid producer settings: {exc}") from exc
        return KafkaProducer(client, transactional_id is not None, errors, deliveries)

    def admin(self) -> KafkaAdmin:
        self.ensure_reachable()
        config = self._config({}, {k: v for k, v in self.settings.items()
                                   if not callable(v)}, {})
        return KafkaAdmin(AdminClient(config), client_config=config)


# --- consumer ----------------------------------------------------------------------------


class KafkaConsumer(Consumer):
    """A consumer-group member. Rebalance callbacks run inside `consume()`."""

    def __init__(self, client: _Consumer, auto_offset_reset: str, errors: _ErrorLog,
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
        self._closed = False
        self._user: tuple[AssignCallback | None, AssignCallback | None,
                          AssignCallback | None] = (None, None, None)

    # -- group membership --

    def subscribe(self, topics: Sequence[str], on_assign: AssignCallback | None = None,
                  on_revoke: AssignCallback | None = None,
                  on_lost: AssignCallback | None = None) -> None:
        if isinstance(topics, str):
            raise TypeError("subscribe() takes a sequence of topic names, not one string")
        if not topics:
            raise ConfigError("subscribe() needs at least one topic")
        self._user = (on_assign, on_revoke, on_lost)
        try:
            self._c.subscribe(list(topics), on_assign=self._on_assign,
                              on_revoke=self._on_revoke, on_lost=self._on_lost)
        except KafkaException as exc:
            _raise_kafka(exc, "subscribe")

    def _cooperative(self) -> bool:
        return self._is_cooperative

    def _on_assign(self, client: _Consumer, partitions: list[_TP]) -> None:
        new = _ours(partitions)
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
                callback(new)
        finally:
            self._in_assign = False
            # Assign with explicit start offsets (including seeks made by the callback),
            # so that position() is known at once and reading starts exactly there.
            offsets = [_tp(tp, self._start.get(tp, _OFFSET_INVALID)) for tp in new]
            if cooperative:
                self._c.incremental_assign(offsets)
            else:
                self._c.assign(offsets)

    def _start_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Committed offsets, or the auto_offset_reset end of partitions without one."""
        if not partitions:
            return {}
        try:
            committed = self._c.committed([_tp(tp) for tp in partitions], timeout=10.0)
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
                    low, high = self._c.get_watermark_offsets(_tp(tp), timeout=10.0)
                except KafkaException:
                    continue
                starts[tp] = low if self._reset == "earliest" else high
        return starts

    def _on_revoke(self, client: _Consumer, partitions: list[_TP]) -> None:
        self._take_away(_ours(partitions), self._user[1], lost=False)

    def _on_lost(self, client: _Consumer, partitions: list[_TP]) -> None:
        self._take_away(_ours(partitions), self._user[2] or self._user[1], lost=True)

    def _take_away(self, gone: list[TopicPartition], callback: AssignCallback | None,
                   lost: bool) -> None:
        cooperative = self._cooperative()
        try:
            if callback is not None and gone:
                callback(gone)
        finally:
            for tp in gone:
                self._assigned.discard(tp)
                self._paused.discard(tp)
                self._start.pop(tp, None)
            if cooperative:
                self._c.incremental_unassign([_tp(tp) for tp in gone])
            else:
                self._c.unassign()
            if lost:
                logger.warning("partitions lost (this member left the group): %s",
                               ", ".join(map(str, gone)))

    def assignment(self) -> list[TopicPartition]:
        return sorted(self._assigned)

    # -- reading --

    def consume(self, max_messages: int, timeout: float) -> Sequence[Message]:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        try:
            messages = self._c.consume(max_messages, timeout)
        except KafkaException as exc:
            _raise_kafka(exc, "consume")
        except RuntimeError as exc:
            raise BackendError(f"consume: {exc}") from exc
        for message in messages:
            if message.error() is not None:
                return cast(Sequence[Message], self._drop_errors(messages))
        # confluent-kafka's Message has the accessors of the Message protocol; only its
        # headers() is typed more loosely (str values are possible in general, but records
        # read from Kafka carry bytes).
        return cast(Sequence[Message], messages)

    def _drop_errors(self, messages: list[_Message]) -> list[_Message]:
        good: list[_Message] = []
        for message in messages:
            error = message.error()
            if error is None:
                good.append(message)
                continue
            code = error.code()
            if code == KafkaError._PARTITION_EOF:
                continue
            where = f"{message.topic()}[{message.partition()}]"
            if error.fatal():
                raise BackendError(f"fatal consumer error at {where}: {error.str()}")
            if code in _UNKNOWN_TOPIC_CODES:
                raise UnknownTopic(f"consume {where}: {error.str()}")
            if code in (KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET):
                raise OffsetOutOfRange(f"consume {where}: {error.str()}")
            # Anything else (a broker down, a transport error) librdkafka retries itself.
            logger.warning("consumer error at %s (retried by the client): %s",
                           where, error.str())
        return good

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        if not partitions:
            return
        try:
            self._c.pause([_tp(tp) for tp in partitions])
        except KafkaException as exc:
            _raise_kafka(exc, "pause")
        self._paused.update(tp for tp in partitions if tp in self._assigned)

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        if not partitions:
            return
        try:
            self._c.resume([_tp(tp) for tp in partitions])
        except KafkaException as exc:
            _raise_kafka(exc, "resume")
        self._paused.difference_update(partitions)

    def paused(self) -> list[TopicPartition]:
        return sorted(self._paused & self._assigned)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        if partition not in self._assigned:
            raise BackendError(f"cannot seek {partition}: not assigned to this member")
        if offset < 0:
            raise OffsetOutOfRange(f"cannot seek {partition} to negative offset {offset}")
        self._start[partition] = offset
        if self._in_assign:
            return  # applied by the assignment that follows the callback
        try:
            self._c.seek(_tp(partition, offset))
        except KafkaException as exc:
            _raise_kafka(exc, f"seek {partition} to {offset}")

    def position(self, partition: TopicPartition) -> int | None:
        try:
            (result,) = self._c.position([_tp(partition)])
        except KafkaException as exc:
            _raise_kafka(exc, f"position of {partition}")
        if result.offset >= 0:
            return result.offset
        return self._start.get(partition) if partition in self._assigned else None

    def watermarks(self, partition: TopicPartition, timeout: float = 10.0,
                   cached: bool = False) -> tuple[int, int]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                found = self._c.get_watermark_offsets(_tp(partition), timeout=timeout,
                                                      cached=cached)
                if found is None:  # cached, and nothing fetched yet
                    return -1, -1
                low, high = found
                return low, high
            except KafkaException as exc:
                # Right after a topic is created its leader may not be known yet.
                error = _error_of(exc)
                if (cached or error is None or error.code() not in _SETTLING
                        or time.monotonic() > deadline):
                    _raise_kafka(exc, f"watermarks of {partition}")
                time.sleep(0.1)

    # -- offsets --

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if not offsets:
            return
        for tp, offset in offsets.items():
            if offset < 0:
                raise OffsetOutOfRange(f"cannot commit negative offset {offset} for {tp}")
        try:
            # Synchronous: when commit() returns, the group coordinator has the offsets.
            result = self._c.commit(offsets=[_tp(tp, o) for tp, o in offsets.items()],
                                    asynchronous=False)
        except KafkaException as exc:
            _raise_kafka(exc, "commit")
        for ctp in result or []:
            if ctp.error is not None:
                _raise_kafka(KafkaException(ctp.error),
                             f"commit of {ctp.topic}[{ctp.partition}]")

    def committed(self, partitions: Sequence[TopicPartition],
                  timeout: float = 10.0) -> dict[TopicPartition, int | None]:
        if not partitions:
            return {}
        try:
            result = self._c.committed([_tp(tp) for tp in partitions], timeout=timeout)
        except KafkaException as exc:
            _raise_kafka(exc, "committed")
        answer: dict[TopicPartition, int | None] = {}
        for ctp in result:
            if ctp.error is not None:
                _raise_kafka(KafkaException(ctp.error),
                             f"committed offset of {ctp.topic}[{ctp.partition}]")
            answer[TopicPartition(ctp.topic, ctp.partition)] = (
                ctp.offset if ctp.offset >= 0 else None)
        return answer

    def group_metadata(self) -> GroupMetadata:
        return cast(GroupMetadata, self._c.consumer_group_metadata())

    def __del__(self) -> None:
        # A consumer dropped without close() would be destroyed by librdkafka with the
        # rebalance callbacks already gone; under the cooperative protocol nobody then
        # unassigns its partitions and the destruction can hang the process. Close it
        # here instead, without calling the user's callbacks from a garbage collection.
        if not getattr(self, "_closed", True):
            self._user = (None, None, None)
            try:
                self.close()
            except Exception as exc:
                logger.debug("closing an abandoned consumer: %s", exc)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._c.close()  # leaves the group; on_revoke runs in here
        except KafkaException as exc:
            _raise_kafka(exc, "close")
        except RuntimeError as exc:
            logger.debug("consumer close: %s", exc)


# --- producer ----------------------------------------------------------------------------


class _DeliveryLog:
    """The on_delivery callback of a producer: records the failed deliveries only."""

    def __init__(self) -> None:
        self.failures: list[DeliveryError] = []

    def __call__(self, error: KafkaError | None, message: _Message) -> None:
        if error is not None:
            partition = message.partition()
            self.failures.append(DeliveryError(
                message.topic() or "", -1 if partition is None else partition, message.key(),
                error.str(), error.retriable()))


class KafkaProducer(Producer):
    """Idempotent by default; transactional with a transactional id."""

    def __init__(self, client: _Producer, transactional: bool, errors: _ErrorLog,
                 deliveries: _DeliveryLog) -> None:
        self._p = client
        self._transactional = transactional
        self._errors = errors
        self._deliveries = deliveries
        self._known_topics: set[str] = set()
        self._closed = False

    def _check_topic(self, topic: str) -> None:
        """Fail fast on a topic that does not exist (librdkafka would only report it
        after topic.metadata.propagation.max.ms, in a delivery report)."""
        try:
            metadata = self._p.list_topics(topic, timeout=10.0)
        except KafkaException as exc:
            _raise_kafka(exc, f"metadata of topic {topic!r}")
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            reason = found.error.str() if found is not None and found.error else "no partitions"
            raise UnknownTopic(f"unknown topic {topic!r} ({reason})")
        self._known_topics.add(topic)

    def produce(self, topic: str, value: bytes, key: bytes | None = None,
                headers: Headers | None = None, partition: int | None = None,
                timestamp: int | None = None) -> None:
        if topic not in self._known_topics:
            self._check_topic(topic)
        part = -1 if partition is None else partition
        stamp = 0 if timestamp is None else timestamp
        try:
            self._p.produce(topic, value, key, part, timestamp=stamp,
                            headers=headers)  # type: ignore[arg-type]
        except BufferError:
            # librdkafka's local queue is full (queue.buffering.max.messages/.kbytes).
            # The confluent-kafka rule: serve delivery reports with poll() so that
            # acknowledged records leave the queue, then retry -- never drop the record.
            # This waits at most message.timeout.ms: by then queued records have failed.
            while True:
                self._p.poll(0.05)
                try:
                    self._p.produce(topic, value, key, part, timestamp=stamp,
                                    headers=headers)  # type: ignore[arg-type]
                    break
                except BufferError:
                    continue
                except KafkaException as exc:
                    self._raise(exc, f"produce to {topic}")
        except KafkaException as exc:
            self._raise(exc, f"produce to {topic}")

    def _raise(self, exc: KafkaException, what: str) -> NoReturn:
        error = _error_of(exc)
        transactional = self._transactional and error is not None and (
            error.code() in (KafkaError._STATE, KafkaError._FATAL) or error.fatal())
        _raise_kafka(exc, what, transactional=transactional, fatal_hint=self._errors.fatal)

    def poll(self, timeout: float = 0.0) -> int:
        return self._p.poll(timeout)

    def flush(self, timeout: float = 30.0) -> int:
        return self._p.flush(timeout)

    def take_delivery_errors(self) -> list[DeliveryError]:
        failures = self._deliveries.failures
        self._deliveries.failures = []
        return failures

    def outstanding(self) -> int:
        return len(self._p)

    # -- transactions --

    def _txn(self, what: str, call: Callable[[], object], timeout: float | None = None,
             retry: bool = False) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                call()
                return
            except KafkaException as exc:
                error = _error_of(exc)
                if (retry and error is not None and error.retriable()
                        and not error.txn_requires_abort() and not error.fatal()
                        and deadline is not None and time.monotonic() < deadline):
                    logger.info("%s: retriable error, retrying: %s", what, error.str())
                    continue
                _raise_kafka(exc, what, transactional=True, fatal_hint=self._errors.fatal)

    def init_transactions(self, timeout: float = 30.0) -> None:
        if not self._transactional:
            raise TransactionError("not a transactional producer (no transactional_id)")
        self._txn("init_transactions", lambda: self._p.init_transactions(timeout), timeout,
                  retry=True)

    def begin_transaction(self) -> None:
        self._txn("begin_transaction", self._p.begin_transaction)

    def send_offsets_to_transaction(self, offsets: Mapping[TopicPartition, int],
                                    group_metadata: GroupMetadata,
                                    timeout: float = 30.0) -> None:
        if not offsets:
            return
        positions = [_tp(tp, offset) for tp, offset in offsets.items()]
        self._txn("send_offsets_to_transaction",
                  lambda: self._p.send_offsets_to_transaction(
                      positions, cast(Any, group_metadata), timeout), timeout, retry=True)

    def commit_transaction(self, timeout: float = 30.0) -> None:
        self._txn("commit_transaction", lambda: self._p.commit_transaction(timeout), timeout,
                  retry=True)

    def abort_transaction(self, timeout: float = 30.0) -> None:
        self._txn("abort_transaction", lambda: self._p.abort_transaction(timeout), timeout,
                  retry=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        remaining = self._p.flush(30.0)
        if remaining:
            logger.warning("producer closed with %d record(s) unacknowledged", remaining)


# --- admin -------------------------------------------------------------------------------


# Answers a partition gives for a moment after its topic was created or its leader moved.
_SETTLING = frozenset({
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION,
    KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
})


class KafkaAdmin(Admin):
    """Topic management and group inspection through the admin API."""

    def __init__(self, client: AdminClient, timeout: float = 30.0,
                 client_config: Mapping[str, object] | None = None) -> None:
        self._a = client
        self._timeout = timeout
        self._client_config = dict(client_config or {})

    def _reader(self, group: str) -> _Consumer:
        """A consumer that never joins its group: it only answers offset questions.

        Offsets are read through a consumer rather than the admin API: confluent-kafka's
        `list_consumer_group_offsets` crashes the process while a fresh cluster is still
        loading its group coordinator, and `list_offsets` fails with NOT_LEADER for a
        moment after a topic is created; the consumer calls retry both internally.
        """
        config: dict[str, object] = {
            k: v for k, v in self._client_config.items()
            if k in ("bootstrap.servers", "client.id") or k.startswith(("security.", "sasl.",
                                                                        "ssl."))
        }
        # read_uncommitted: committed() must not wait for offsets pending in an open
        # transaction (librdkafka asks for stable offsets under read_committed).
        config.update({"group.id": group, "enable.auto.commit": False,
                       "isolation.level": "read_uncommitted",
                       "logger": _rdkafka_logger})
        return _Consumer(config)

    def _partitions(self, topic: str) -> list[int]:
        found = self._metadata_topic(topic)
        if found is None:
            raise UnknownTopic(f"unknown topic {topic!r}")
        return sorted(found.partitions)

    def _metadata_topic(self, name: str) -> Any:
        try:
            metadata = self._a.list_topics(name, timeout=self._timeout)
        except KafkaException as exc:
            _raise_kafka(exc, f"metadata of {name!r}")
        topic = metadata.topics.get(name)
        if topic is None or topic.error is not None:
            return None
        return topic

    def create_topic(self, name: str, partitions: int = 1, replication: int = 1,
                     config: Mapping[str, str] | None = None) -> None:
        new = NewTopic(name, num_partitions=partitions, replication_factor=replication,
                       config=dict(config or {}))
        futures = self._a.create_topics([new], operation_timeout=self._timeout,
                                        request_timeout=self._timeout)
        try:
            futures[name].result(timeout=self._timeout + 5)
        except KafkaException as exc:
            error = _error_of(exc)
            if error is None or error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                _raise_kafka(exc, f"create topic {name!r}")
            return
        self._wait_usable(name, partitions)

    def _wait_usable(self, name: str, partitions: int) -> None:
        """Wait until metadata shows every partition of `name` with a leader."""
        deadline = time.monotonic() + self._timeout
        while True:
            topic = self._metadata_topic(name)
            if topic is not None and len(topic.partitions) == partitions and all(
                    p.error is None and p.leader >= 0 for p in topic.partitions.values()):
                return
            if time.monotonic() > deadline:
                raise BackendError(f"topic {name!r} created but not usable after "
                                   f"{self._timeout:g}s")
            time.sleep(0.05)

    def delete_topic(self, name: str) -> None:
        futures = self._a.delete_topics([name], operation_timeout=self._timeout,
                                        request_timeout=self._timeout)
        try:
            futures[name].result(timeout=self._timeout + 5)
        except KafkaException as exc:
            _raise_kafka(exc, f"delete topic {name!r}")
        deadline = time.monotonic() + self._timeout
        while name in self.list_topics() and time.monotonic() < deadline:
            time.sleep(0.05)

    def list_topics(self) -> dict[str, int]:
        try:
            metadata = self._a.list_topics(timeout=self._timeout)
        except KafkaException as exc:
            _raise_kafka(exc, "list topics")
        return {name: len(topic.partitions) for name, topic in metadata.topics.items()
                if not name.startswith("__") and topic.error is None}

    def group_offsets(self, group: str, topics: Sequence[str] | None = None
                      ) -> dict[TopicPartition, int]:
        names = list(topics) if topics is not None else sorted(self.list_topics())
        wanted = [_TP(t, p) for t in names for p in self._partitions(t)]
        if not wanted:
            return {}
        reader = self._reader(group)
        try:
            result = self._settled(lambda: reader.committed(wanted, timeout=self._timeout),
                                   f"offsets of group {group!r}")
        finally:
            reader.close()
        return {TopicPartition(c.topic, c.partition): c.offset
                for c in result if c.error is None and c.offset >= 0}

    def high_watermarks(self, topic: str) -> dict[TopicPartition, int]:
        partitions = self._partitions(topic)
        reader = self._reader("processor-watermarks")
        answer: dict[TopicPartition, int] = {}
        try:
            for p in partitions:
                tp = _TP(topic, p)

                def ask(tp: _TP = tp) -> tuple[int, int]:
                    low, high = reader.get_watermark_offsets(tp, timeout=self._timeout)
                    return low, high

                answer[TopicPartition(topic, p)] = self._settled(
                    ask, f"high watermark of {topic}[{p}]")[1]
        finally:
            reader.close()
        return answer

    def _settled(self, call: Callable[[], _T], what: str) -> _T:
        """`call()`, retried while the cluster answers that it is still settling."""
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                return call()
            except KafkaException as exc:
                error = _error_of(exc)
                passing = error is not None and (error.retriable() or error.code() in _SETTLING)
                if not passing or time.monotonic() > deadline:
                    _raise_kafka(exc, what)
                time.sleep(0.1)
