"""Broker-agnostic interfaces: what a stage knows of a backend.

Two implementations exist: `processor.backends.memory` (an in-memory broker, for unit tests
and the demo) and `processor.backends.kafka` (confluent-kafka on Apache Kafka). Both raise
the errors of `processor.core.errors` and pass one conformance suite (`tests/conformance`).

Conventions (as in Kafka itself):

* An offset committed for a partition means "the next offset to read", so after
  processing the record at offset 41 the stage commits 42.
* Messages expose accessor methods (`m.value()`, `m.offset()`...) with the same names and
  meaning as confluent-kafka's `Message`, so the Kafka backend hands its messages over
  without copying them into another object on the hot path.
* Delivery is reported in bulk: `flush()` waits until every produced record is
  acknowledged or failed, and `take_delivery_errors()` returns the failures since the last
  call. A stage commits input offsets only after a `flush()` that left no failure.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple, Protocol

Headers = list[tuple[str, bytes]]


class TopicPartition(NamedTuple):
    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]"


class Message(Protocol):
    """One consumed record. Method names follow confluent-kafka's `Message`.

    A record a consumer returns always has its topic, partition and offset (confluent-kafka
    types them optional because its error events share the class; the Kafka consumer never
    returns those), so they are plain values here: a missing offset is never read as 0.
    """

    def topic(self) -> str: ...
    def partition(self) -> int: ...
    def offset(self) -> int: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> Headers | None: ...
    def timestamp(self) -> tuple[int, int]:
        """(timestamp type, milliseconds since the epoch); type 0 means none."""
        ...


class MessageView:
    """A consumed record seen with other headers: the same topic, partition, offset, key,
    value and timestamp. The stage's wrappers of a record (a trace's context, a ring's
    count of passes) are views, so everything made from the record copies their
    headers."""

    __slots__ = ("_headers", "msg")

    def __init__(self, msg: Message, headers: Headers | None) -> None:
        self.msg = msg
        self._headers = headers

    def topic(self) -> str:
        return self.msg.topic()

    def partition(self) -> int:
        return self.msg.partition()

    def offset(self) -> int:
        return self.msg.offset()

    def key(self) -> bytes | None:
        return self.msg.key()

    def value(self) -> bytes | None:
        return self.msg.value()

    def headers(self) -> Headers | None:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return self.msg.timestamp()


class DeliveryError(NamedTuple):
    """A produced record the broker did not acknowledge."""

    topic: str
    partition: int
    key: bytes | None
    reason: str
    retriable: bool
    too_large: bool = False
    """The record is larger than the topic (or the producer) accepts: sending it again
    can never succeed, so a stage dead-letters its input instead (reason `too-large`)."""
    size: int = 0
    """The record's size in bytes (value, key and headers), when known."""
    not_authorized: bool = False
    """The broker's authorizer refused the write (no WRITE ACL on the topic for the
    producer's principal): sending it again cannot succeed either."""


class GroupMetadata(Protocol):
    """Opaque consumer-group state handed to `Producer.send_offsets_to_transaction`."""


AssignCallback = Callable[[list[TopicPartition]], None]


class Consumer(ABC):
    """A member of a consumer group, reading committed-offset-tracked partitions."""

    @abstractmethod
    def subscribe(
        self,
        topics: Sequence[str],
        on_assign: AssignCallback | None = None,
        on_revoke: AssignCallback | None = None,
        on_lost: AssignCallback | None = None,
    ) -> None:
        """Join the group for `topics`. Callbacks run inside `consume()`.

        `on_revoke` runs before partitions are taken away, while the member may still
        commit; `on_lost` runs when they were already taken (the member was thrown out of
        the group) and committing is no longer possible. Without `on_lost`, `on_revoke`
        is called in its place.
        """

    @abstractmethod
    def consume(self, max_messages: int, timeout: float) -> Sequence[Message]:
        """Up to `max_messages` records, waiting up to `timeout` seconds for the first."""

    @abstractmethod
    def assignment(self) -> list[TopicPartition]:
        """The partitions currently assigned to this member."""

    @abstractmethod
    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        """Stop fetching from these partitions; the group membership stays alive."""

    @abstractmethod
    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        """Fetch again from paused partitions."""

    @abstractmethod
    def paused(self) -> list[TopicPartition]:
        """The assigned partitions that are paused."""

    @abstractmethod
    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Read `partition` next from `offset`."""

    @abstractmethod
    def commit(self, offsets: Mapping[TopicPartition, int],
               timeout: float | None = None) -> None:
        """Commit synchronously: `offsets` are the next offsets to read.

        With `timeout`, give up after that many seconds without an answer and raise
        `BrokerUnavailable` (the commit may still land later)."""

    @abstractmethod
    def committed(
        self, partitions: Sequence[TopicPartition], timeout: float = 10.0
    ) -> dict[TopicPartition, int | None]:
        """The group's committed offsets for `partitions` (None where nothing is committed)."""

    @abstractmethod
    def position(self, partition: TopicPartition) -> int | None:
        """The offset of the next record this member will read from `partition`."""

    @abstractmethod
    def watermarks(self, partition: TopicPartition, timeout: float = 10.0,
                   cached: bool = False) -> tuple[int, int]:
        """(low, high): the first offset still stored and the offset after the last one.

        `cached=True` answers from what the client last learnt while fetching, without
        asking the broker (cheap enough for a lag gauge); an unknown value is -1.
        """

    @abstractmethod
    def group_metadata(self) -> GroupMetadata:
        """State for `Producer.send_offsets_to_transaction`."""

    @abstractmethod
    def close(self, timeout: float | None = None) -> None:
        """Leave the group (triggering a rebalance for the others) and release resources.

        `on_revoke` runs first, while the member may still commit. Closing twice does
        nothing; any other call on a closed consumer raises `BackendError`. With
        `timeout`, give up waiting for the broker after that many seconds and raise
        `BrokerUnavailable`. The client's close may then go on in the background: it
        starts no rebalance callback any more, but one it started may still run (see
        `wait_callbacks`).
        """

    @abstractmethod
    def wait_callbacks(self, timeout: float = 0.0) -> bool:
        """Wait up to `timeout` seconds until no rebalance callback of this consumer is
        running; returns whether none is.

        For after `close()`: a bounded close that gave up waiting may have left
        `on_revoke` running on the close's helper thread. Wait for it before releasing
        what the callback uses (the producer it commits with). Once `close()` has
        returned or raised, no callback starts any more, so True stays true. Not to be
        called from inside a callback (it would wait for itself).
        """


class Producer(ABC):
    """Writes records to topics, optionally inside transactions."""

    @abstractmethod
    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> None:
        """Queue one record. Blocks (serving deliveries) while the local queue is full,
        until the deadline given to `set_deadline` if any: a record that still finds the
        queue full then is not queued, and `ProducerQueueFull` is raised.

        A `value` of None is a tombstone (a record without a value).

        Without `partition`, a key picks the partition deterministically (the same key
        always lands in the same partition of a topic); no key spreads records.
        """

    @abstractmethod
    def set_deadline(self, deadline: float | None) -> None:
        """Bound the waits of `produce()` for room in a full local queue by `deadline`,
        a `time.monotonic()` time (a stopping stage's shutdown deadline); None removes
        the bound (the default: a wait ends when there is room, or after Kafka's
        `message.timeout.ms`, when the queued records have failed).

        A `produce()` that finds room is not affected, even past the deadline. The
        deadline may be set from another thread or a signal handler while `produce()`
        waits: the wait reads it again at least every 50 ms.
        """

    @abstractmethod
    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery reports; returns how many were served."""

    @abstractmethod
    def flush(self, timeout: float = 30.0) -> int:
        """Wait until all queued records are acknowledged or failed; returns how many remain."""

    @abstractmethod
    def take_delivery_errors(self) -> list[DeliveryError]:
        """The delivery failures since the last call (and forget them).

        `abort_transaction()` forgets those of the aborted transaction's records that
        were not taken yet: its records are gone with it (Kafka reports those it purged
        as failed), and the next transaction must not fail for them."""

    @abstractmethod
    def outstanding(self) -> int:
        """How many produced records are not yet acknowledged."""

    # --- transactions ----------------------------------------------------------------

    @abstractmethod
    def init_transactions(self, timeout: float = 30.0) -> None:
        """Register the transactional id, fencing older producers that share it."""

    @abstractmethod
    def begin_transaction(self) -> None: ...

    @abstractmethod
    def send_offsets_to_transaction(
        self,
        offsets: Mapping[TopicPartition, int],
        group_metadata: GroupMetadata,
        timeout: float = 30.0,
    ) -> None:
        """Commit consumed `offsets` (next to read) as part of the open transaction."""

    @abstractmethod
    def commit_transaction(self, timeout: float = 30.0) -> None: ...

    @abstractmethod
    def abort_transaction(self, timeout: float = 30.0) -> None:
        """Abort the open transaction: its records are discarded, and so are their
        delivery failures not yet taken (see `take_delivery_errors`)."""

    @abstractmethod
    def close(self, timeout: float | None = None) -> None:
        """Abort an open transaction, flush what is queued and release resources.

        Closing twice does nothing; producing on a closed producer raises `BackendError`.
        `timeout` bounds the whole of it (records still unacknowledged then are logged).
        """


class PartitionDescription(NamedTuple):
    """One partition of a topic: its leader and replicas, by broker id."""

    partition: int
    leader: int
    """The broker id of the leader; -1 while the partition has none."""
    replicas: tuple[int, ...]
    in_sync: tuple[int, ...]
    """The replicas caught up with the leader (the ISR)."""


class TopicDescription(NamedTuple):
    """A topic as `Admin.describe_topic` finds it."""

    name: str
    partitions: tuple[PartitionDescription, ...]
    """In partition order."""
    config: Mapping[str, str]
    """The settings made on the topic itself (at creation or later); the broker's
    defaults for the others are left out."""

    @property
    def replication(self) -> int:
        """The replication factor: the replicas of each partition."""
        return max((len(p.replicas) for p in self.partitions), default=0)


class Admin(ABC):
    """Topic management and group inspection."""

    @abstractmethod
    def create_topic(self, name: str, partitions: int | None = 1, replication: int | None = 1,
                     config: Mapping[str, str] | None = None) -> None:
        """Create a topic; an existing topic of that name is left as it is.

        `partitions` or `replication` None takes the cluster's default (Kafka's
        `num.partitions`, `default.replication.factor`); `config` holds topic settings
        such as `retention.ms`. Returns once every partition has a leader.
        """

    @abstractmethod
    def delete_topic(self, name: str) -> None:
        """Delete a topic and its records; `UnknownTopic` if there is none."""

    @abstractmethod
    def list_topics(self) -> dict[str, int]:
        """Topic name -> partition count."""

    @abstractmethod
    def describe_topic(self, name: str) -> TopicDescription:
        """The partitions, leaders, replicas and settings of a topic; `UnknownTopic` if
        there is none."""

    @abstractmethod
    def group_offsets(self, group: str, topics: Sequence[str] | None = None
                      ) -> dict[TopicPartition, int]:
        """Committed offsets of a group."""

    @abstractmethod
    def high_watermarks(self, topic: str) -> dict[TopicPartition, int]:
        """For every partition of `topic`, the offset after its last record."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""


class Broker(ABC):
    """A cluster handle: the factory of consumers, producers and admin clients.

    `MemoryBroker()` and `KafkaBroker(bootstrap_servers, settings)` implement it; a stage,
    the CLI and the conformance suite only need this class.
    """

    settings: Mapping[str, object] = MappingProxyType({})
    """The client settings every client of this broker gets (none on the memory one)."""
    client_statistics: bool = False
    """Whether its clients report librdkafka statistics (`statistics.interval.ms`,
    `stats_cb` in the client settings): a stage then feeds them to its metrics."""

    @abstractmethod
    def consumer(
        self,
        group: str,
        *,
        read_committed: bool = False,
        auto_offset_reset: str = "earliest",
        client_id: str | None = None,
        settings: Mapping[str, object] | None = None,
    ) -> Consumer:
        """A new group member. Offsets are committed only by explicit `commit()`.

        `auto_offset_reset` ("earliest", "latest" or "error") says where a partition
        without a committed offset starts; another value, or an empty `group`, raises
        `ConfigError`.
        """

    @abstractmethod
    def producer(
        self,
        *,
        transactional_id: str | None = None,
        client_id: str | None = None,
        settings: Mapping[str, object] | None = None,
    ) -> Producer:
        """A new producer; with `transactional_id`, a transactional one."""

    @abstractmethod
    def admin(self) -> Admin: ...

    @property
    @abstractmethod
    def name(self) -> str:
        """A short description for logs ("memory", "kafka 127.0.0.1:9092")."""
