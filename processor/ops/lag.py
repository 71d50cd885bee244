"""A consumer group's committed offsets, end offsets and lag per partition.

`collect_lag` reads them, `format_table` renders the table `processor lag` prints (the
command itself, its flags and its output streams, is `processor.cli.lag`):

    $ processor lag --bootstrap-servers kafka:9092 --group validate
    topic          partition  committed  end offset  lag
    artifacts.raw          0       1200        1250   50
    artifacts.raw          1       1300        1300    0
    total                                              50

The committed offsets come from the admin API (`list_consumer_group_offsets`), the end
offsets (high watermarks) from a consumer's `get_watermark_offsets`; lag is end offset
minus committed offset.

No blind spots: the partitions shown are every partition of the group's topics (the
topics it has committed offsets in, those its members are assigned, and any `topics`
asked for), not only the partitions with a committed offset as Kafka's own
`kafka-consumer-groups.sh` shows. A partition without a committed offset is shown with
`-` and counts as lag what the group will read there: its whole retained range (high
minus low watermark) with `auto.offset.reset=earliest` (a stage's default), nothing with
`latest`. Records waiting in a partition nobody has read yet are so visible to an
autoscaler.

Every broker request is bounded by `timeout`; an unknown group, an unknown topic or an
unreachable broker raises `LagError`, a `ProcessorError` whose message is one line.
Reaching the broker is checked first, quietly (`KafkaBroker.ensure_reachable`: a refused
login or certificate is one line too); the clients then log through the backend's
librdkafka logger, never straight to stderr, each with the settings of its kind
(`for_client`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
)
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient

from processor.backends.kafka import KafkaBroker
from processor.backends.kafka.errors import ErrorLog, error_of
from processor.backends.kafka.settings import RDKAFKA_LOGGER, for_client
from processor.core.errors import BrokerUnavailable, ProcessorError

DEFAULT_TIMEOUT = 10.0


class LagError(ProcessorError):
    """A lag that cannot be read: the broker, the group or a topic is not there."""


@dataclass(frozen=True, slots=True)
class LagRow:
    topic: str
    partition: int
    committed: int | None
    low: int
    end: int
    offset_reset: str = "earliest"

    @property
    def lag(self) -> int:
        if self.committed is not None:
            start = self.committed
        else:  # where the group will start reading: the oldest record, or the end
            start = self.end if self.offset_reset == "latest" else self.low
        return max(0, self.end - start)


def format_table(rows: Sequence[LagRow]) -> str:
    """The table `processor lag` prints, with a total line."""
    header = ("topic", "partition", "committed", "end offset", "lag")
    body = [
        (r.topic, str(r.partition), "-" if r.committed is None else str(r.committed),
         str(r.end), str(r.lag))
        for r in sorted(rows, key=lambda r: (r.topic, r.partition))
    ]
    total = ("total", "", "", "", str(sum(r.lag for r in rows)))
    table = [header, *body, total]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]

    def render(line: tuple[str, ...]) -> str:
        first = line[0].ljust(widths[0])
        rest = [cell.rjust(widths[i]) for i, cell in enumerate(line) if i > 0]
        return "  ".join([first, *rest]).rstrip()

    return "\n".join(render(line) for line in table) + "\n"


_COORDINATOR_NOT_READY = frozenset({
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
})


def _check_group(admin: AdminClient, group: str, timeout: float) -> set[str]:
    """Raise LagError unless `group` exists, waiting (bounded) for its coordinator;
    return the topics its members are assigned.

    This also guards `list_consumer_group_offsets`, which must only be called once the
    group coordinator answers: confluent-kafka 2.16 crashes the process when that request
    meets a coordinator still loading (a fresh cluster without `__consumer_offsets`).
    """
    deadline = time.monotonic() + timeout
    while True:
        future = admin.describe_consumer_groups([group], request_timeout=timeout)[group]
        try:
            description: Any = future.result(timeout=timeout + 1.0)
        except KafkaException as exc:
            error = exc.args[0]
            code = error.code() if isinstance(error, KafkaError) else None
            if code in _COORDINATOR_NOT_READY and time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            if code == KafkaError.GROUP_ID_NOT_FOUND:
                break
            raise LagError(f"cannot describe group {group!r}: {error}") from None
        if description.state != ConsumerGroupState.DEAD:
            return {tp.topic for member in description.members or []
                    if member.assignment is not None
                    for tp in member.assignment.topic_partitions or []}
        break
    raise LagError(f"unknown consumer group {group!r}")


def _committed_offsets(admin: AdminClient, group: str, timeout: float
                       ) -> dict[tuple[str, int], int]:
    request = [ConsumerGroupTopicPartitions(group)]
    futures = admin.list_consumer_group_offsets(request, request_timeout=timeout)
    try:
        result: Any = futures[group].result(timeout=timeout + 1.0)
    except KafkaException as exc:
        raise LagError(f"cannot read the offsets of group {group!r}: {exc.args[0]}") from None
    committed: dict[tuple[str, int], int] = {}
    for tp in result.topic_partitions or []:
        if tp.error is None and tp.offset >= 0:
            committed[(tp.topic, tp.partition)] = tp.offset
    return committed


def _partitions_of(admin: AdminClient, topics: Sequence[str], timeout: float
                   ) -> list[tuple[str, int]]:
    metadata = admin.list_topics(timeout=timeout)
    found: list[tuple[str, int]] = []
    for topic in topics:
        meta = metadata.topics.get(topic)
        if meta is None or meta.error is not None:
            raise LagError(f"unknown topic {topic!r}")
        found.extend((topic, p) for p in sorted(meta.partitions))
    return found


def collect_lag(bootstrap_servers: str, group: str, topics: Sequence[str] | None = None,
                timeout: float = DEFAULT_TIMEOUT,
                settings: Mapping[str, object] | None = None,
                offset_reset: str = "earliest",
                origins: Mapping[str, str] | None = None) -> list[LagRow]:
    """One `LagRow` per partition of the group's topics: those it committed offsets in,
    those its members are assigned, and `topics`. `offset_reset` is the group's
    `auto.offset.reset` ("earliest" or "latest"), where it starts in a partition without
    a committed offset. `settings` are librdkafka settings (`origins`: where each came
    from, for the error of a refused one). Raises `LagError` for an unreachable broker
    or unknown group."""
    if offset_reset not in ("earliest", "latest"):
        raise LagError(f"offset_reset must be earliest or latest, not {offset_reset!r}")
    settings = dict(settings or {})
    try:
        KafkaBroker(bootstrap_servers, settings, connect_timeout=timeout,
                    origins=origins).ensure_reachable()
    except BrokerUnavailable as exc:
        cause = exc.__cause__
        error = error_of(cause) if isinstance(cause, KafkaException) else None
        raise LagError(
            f"cannot reach the broker at {bootstrap_servers} within {timeout:g}s: "
            f"{error.str() if error is not None else cause}") from None
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap_servers, "logger": RDKAFKA_LOGGER}
    admin_conf: dict[str, Any] = {**for_client(settings, "admin"), **conf,
                                  "error_cb": ErrorLog("lag admin client")}
    admin = AdminClient(admin_conf)
    assigned = _check_group(admin, group, timeout)
    committed = _committed_offsets(admin, group, timeout)
    group_topics = {topic for topic, _ in committed} | assigned | set(topics or ())
    if not group_topics:
        raise LagError(f"unknown consumer group {group!r}: it has no committed offsets "
                       "and no assigned partitions")
    partitions = _partitions_of(admin, sorted(group_topics), timeout)
    consumer_conf: dict[str, Any] = {
        **for_client(settings, "consumer"), **conf, "error_cb": ErrorLog("lag consumer"),
        # A throwaway id: this consumer never subscribes, so it never joins a group.
        "group.id": f"processor-lag-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
    }
    consumer = Consumer(consumer_conf)
    try:
        rows = []
        for topic, partition in partitions:
            try:
                low, high = consumer.get_watermark_offsets(
                    KafkaTopicPartition(topic, partition), timeout=timeout)
            except KafkaException as exc:
                raise LagError(f"cannot read the end offset of {topic}[{partition}]: "
                               f"{exc.args[0]}") from None
            rows.append(LagRow(topic, partition, committed.get((topic, partition)), low, high,
                               offset_reset))
        return rows
    finally:
        consumer.close()
