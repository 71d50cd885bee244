"""An in-memory broker with Kafka's semantics, for unit tests and the demo.

What it models, and how:

* Topics of partitions, each an append-only list of `MemoryMessage`; offsets start at 0
  and are list indexes. Producing to a missing topic raises `UnknownTopic` (a broker with
  `auto.create.topics.enable=false`); `Admin.create_topic` creates topics.
* Partitioning: a key picks `murmur2(key) & 0x7fffffff % partitions`, the Java client's
  default partitioner (librdkafka's `murmur2_random`). The producer setting
  `{"partitioner": "consistent_random"}` selects librdkafka's default instead,
  `crc32(key) % partitions`. Keyless records go round-robin per producer and topic.
* Consumer groups with the eager protocol: a member joining or leaving (or a subscribed
  topic appearing or disappearing) starts a rebalance; every member revokes its whole
  assignment inside its next `consume()` (calling `on_revoke`, during which it may still
  commit), and only when every member has rejoined is the new assignment computed
  (`range` by default, `roundrobin` with the setting `partition.assignment.strategy`) and
  handed out (calling `on_assign`). A member that does not call `consume()` for
  `max.poll.interval.ms` (default 300000) while others wait is removed from the group; it
  learns this through `on_lost` in its next `consume()` and rejoins.
* Transactions as in Kafka: transactional records are written to the log at once;
  commit or abort appends a control record (an offset no consumer ever receives, so
  offsets have gaps after transactions, as on a real broker). A `read_committed` consumer
  stops at the last stable offset (the first offset of the oldest open transaction) and
  skips aborted records; a `read_uncommitted` one reads everything but control records.
  `init_transactions` fences the older producer with the same transactional id and aborts
  its open transaction. Offsets sent to a transaction are committed by its commit only.
  A `read_committed` member does not start reading a partition while a transaction holds
  uncommitted offsets for it (Kafka's "require stable" offset fetch).

Every operation takes one broker-wide lock; a consumer waiting for records waits on a
condition of that lock, woken by produces, transaction ends and group changes. Callbacks
run without the lock held. One consumer or producer must not be used from several
threads at once (as with confluent-kafka), but different clients may live in different
threads. Record timestamps come from an injectable clock (seconds, like `time.time`).
"""

from __future__ import annotations

import itertools
import logging
import re
import struct
import threading
import time
import zlib
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

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
    ConfigError,
    OffsetOutOfRange,
    ProducerFenced,
    RebalanceInProgress,
    TransactionError,
    UnknownTopic,
)

logger = logging.getLogger(__name__)

TIMESTAMP_CREATE_TIME: Final = 1
DEFAULT_MAX_POLL_INTERVAL_MS: Final = 300_000
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_RESET_ALIASES: Final = {
    "earliest": "earliest",
    "smallest": "earliest",
    "beginning": "earliest",
    "latest": "latest",
    "largest": "latest",
    "end": "latest",
    "error": "error",
}

# --- partitioners -------------------------------------------------------------------------

_M: Final = 0x5BD1E995
_MASK: Final = 0xFFFFFFFF
_WORDS = struct.Struct("<I")


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit murmur2 of `data` (seed 0x9747b28c), as an unsigned int."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    whole = length & ~3
    for (k,) in _WORDS.iter_unpack(data[:whole]):
        k = (k * _M) & _MASK
        h = ((h * _M) ^ ((k ^ (k >> 24)) * _M)) & _MASK
    rest = length & 3
    if rest:
        if rest == 3:
            h ^= data[whole + 2] << 16
        if rest >= 2:
            h ^= data[whole + 1] << 8
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The Java client's default partition for `key`."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def crc32_partition(key: bytes, partitions: int) -> int:
    """librdkafka's `consistent` partition for `key`."""
    return zlib.crc32(key) % partitions


_PARTITIONERS: Final[dict[str, Callable[[bytes, int], int]]] = {
    "murmur2": murmur2_partition,
    "murmur2_random": murmur2_partition,
    "consistent": crc32_partition,
    "consistent_random": crc32_partition,
}


# --- records and logs ---------------------------------------------------------------------


class MemoryMessage:
    """One stored record; immutable, shared by every consumer that reads it."""

    __slots__ = ("_headers", "_key", "_offset", "_partition", "_timestamp", "_topic", "_value")

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: tuple[tuple[str, bytes], ...] | None,
        timestamp: tuple[int, int],
    ) -> None:
        self._topic = topic
        self._partition = partition
        self._offset = offset
        self._key = key
        self._value = value
        self._headers = headers
        self._timestamp = timestamp

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> Headers | None:
        return None if self._headers is None else list(self._headers)

    def timestamp(self) -> tuple[int, int]:
        return self._timestamp

    def error(self) -> None:
        """Always None: stored records are never errors (confluent-kafka compatibility)."""
        return None

    def __len__(self) -> int:
        return 0 if self._value is None else len(self._value)

    def __repr__(self) -> str:
        return (
            f"MemoryMessage({self._topic}[{self._partition}]@{self._offset}, "
            f"key={self._key!r}, {len(self)} bytes)"
        )


CONTROL: Final = MemoryMessage("", -1, -1, None, None, None, (0, 0))
"""The stand-in stored at the offset of a transaction marker."""


class _Partition:
    """A partition log; `CONTROL` entries are transaction markers, never delivered."""

    __slots__ = ("controls", "hidden_committed", "log", "open", "tp")

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.log: list[Message] = []
        # Sorted offsets a read_uncommitted consumer skips (control records) ...
        self.controls: list[int] = []
        # ... and those a read_committed consumer skips (control and aborted records).
        self.hidden_committed: list[int] = []
        # Open transaction id -> its first offset in this partition.
        self.open: dict[int, int] = {}

    def stable_end(self) -> int:
        """The last stable offset: where read_committed consumers stop."""
        if self.open:
            return min(self.open.values())
        return len(self.log)


@dataclass(eq=False)
class _Transaction:
    id: int
    transactional_id: str
    # Partition -> offsets written by the transaction.
    written: dict[_Partition, list[int]]
    # Group -> offsets to commit with the transaction.
    offsets: dict[str, dict[TopicPartition, int]]


@dataclass(frozen=True)
class MemoryGroupMetadata:
    """The consumer state `send_offsets_to_transaction` checks (KIP-447 fencing)."""

    group: str
    member_id: str
    generation: int


class _Group:
    __slots__ = (
        "assignments",
        "awaiting",
        "committed",
        "generation",
        "members",
        "name",
        "pending",
        "rebalancing",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: dict[str, MemoryConsumer] = {}
        self.generation = 0
        self.rebalancing = False
        self.awaiting: set[str] = set()
        self.assignments: dict[str, list[TopicPartition]] = {}
        self.committed: dict[TopicPartition, int] = {}
        # Partition -> number of open transactions holding offsets for it.
        self.pending: dict[TopicPartition, int] = {}


# --- the broker ---------------------------------------------------------------------------


class MemoryBroker(Broker):
    """An in-memory cluster; see the module documentation for what it models."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiting = 0
        self._topics: dict[str, list[_Partition]] = {}
        self._groups: dict[str, _Group] = {}
        self._epochs: dict[str, int] = {}
        self._open_txns: dict[str, tuple[MemoryProducer, _Transaction]] = {}
        self._txn_ids = itertools.count(1)
        self._member_seq = itertools.count(1)
        self._fail_budget: dict[str | None, list[tuple[str, bool]]] = {}

    @property
    def name(self) -> str:
        return "memory"

    def consumer(
        self,
        group: str,
        *,
        read_committed: bool = False,
        auto_offset_reset: str = "earliest",
        client_id: str | None = None,
        settings: Mapping[str, object] | None = None,
    ) -> MemoryConsumer:
        reset = _RESET_ALIASES.get(auto_offset_reset)
        if reset is None:
            raise ConfigError(
                f"auto_offset_reset must be one of earliest, latest, error; "
                f"got {auto_offset_reset!r}"
            )
        settings = settings or {}
        raw = settings.get("max.poll.interval.ms", DEFAULT_MAX_POLL_INTERVAL_MS)
        try:
            interval = float(str(raw))
        except ValueError:
            interval = 0.0
        if not interval > 0:
            raise ConfigError(f"max.poll.interval.ms must be a positive number, got {raw!r}")
        strategy = str(settings.get("partition.assignment.strategy", "range")).split(",")[0]
        if strategy not in ("range", "roundrobin"):
            raise ConfigError(
                f"partition.assignment.strategy must be range or roundrobin, got {strategy!r}"
            )
        if not group:
            raise ConfigError("a consumer group id is required")
        return MemoryConsumer(
            self,
            group,
            read_committed=read_committed,
            reset=reset,
            client_id=client_id or "consumer",
            max_poll_interval=interval / 1000.0,
            strategy=strategy,
        )

    def producer(
        self,
        *,
        transactional_id: str | None = None,
        client_id: str | None = None,
        settings: Mapping[str, object] | None = None,
    ) -> MemoryProducer:
        settings = settings or {}
        name = str(settings.get("partitioner", "murmur2_random"))
        partitioner = _PARTITIONERS.get(name)
        if partitioner is None:
            raise ConfigError(
                f"partitioner must be one of {', '.join(sorted(_PARTITIONERS))}, got {name!r}"
            )
        return MemoryProducer(self, transactional_id, client_id or "producer", partitioner)

    def admin(self) -> MemoryAdmin:
        return MemoryAdmin(self)

    # --- fault injection ------------------------------------------------------------------

    def fail_deliveries(
        self,
        count: int,
        topic: str | None = None,
        *,
        reason: str = "injected delivery failure",
        retriable: bool = True,
    ) -> None:
        """Make the next `count` produces (to `topic`, or to any topic) fail delivery.

        A failed record is not written; it is reported by `take_delivery_errors()`.
        """
        with self._lock:
            self._fail_budget.setdefault(topic, []).extend([(reason, retriable)] * count)

    # --- internals (the lock is held) -----------------------------------------------------

    def _notify(self) -> None:
        if self._waiting:
            self._cond.notify_all()

    def _partition(self, tp: TopicPartition) -> _Partition | None:
        parts = self._topics.get(tp.topic)
        if parts is None or not 0 <= tp.partition < len(parts):
            return None
        return parts[tp.partition]

    def _group(self, name: str) -> _Group:
        group = self._groups.get(name)
        if group is None:
            group = self._groups[name] = _Group(name)
        return group

    def _take_failure(self, topic: str) -> tuple[str, bool] | None:
        for scope in (topic, None):
            budget = self._fail_budget.get(scope)
            if budget:
                return budget.pop()
        return None

    def _topics_changed(self, name: str) -> None:
        for group in self._groups.values():
            if any(member._subscribes_to(name) for member in group.members.values()):
                logger.info("topic %s changed: group %s rebalances", name, group.name)
                self._start_rebalance(group)
        self._notify()

    def _start_rebalance(self, group: _Group, joining: str | None = None) -> None:
        if not group.rebalancing:
            group.rebalancing = True
            group.awaiting = {m for m in group.members if m != joining}
        logger.debug("group %s: rebalance, awaiting %s", group.name, sorted(group.awaiting))
        self._maybe_complete(group)
        self._cond.notify_all()

    def _maybe_complete(self, group: _Group) -> None:
        if not group.rebalancing or group.awaiting:
            return
        members = sorted(group.members.values(), key=lambda m: m._seq)
        group.assignments = self._assign(members)
        group.generation += 1
        group.rebalancing = False
        logger.info(
            "group %s generation %d: %s",
            group.name,
            group.generation,
            {m: [str(tp) for tp in tps] for m, tps in group.assignments.items()},
        )
        self._cond.notify_all()

    def _assign(self, members: list[MemoryConsumer]) -> dict[str, list[TopicPartition]]:
        result: dict[str, list[TopicPartition]] = {m._member_id: [] for m in members}
        if not members:
            return result
        topics = sorted(t for t in self._topics if any(m._subscribes_to(t) for m in members))
        if members[0]._strategy == "roundrobin":
            ring = itertools.cycle(members)
            for topic in topics:
                for p in range(len(self._topics[topic])):
                    for _ in range(len(members)):
                        member = next(ring)
                        if member._subscribes_to(topic):
                            result[member._member_id].append(TopicPartition(topic, p))
                            break
            return result
        for topic in topics:
            subscribers = [m for m in members if m._subscribes_to(topic)]
            count = len(self._topics[topic])
            share, extra = divmod(count, len(subscribers))
            start = 0
            for i, member in enumerate(subscribers):
                size = share + (1 if i < extra else 0)
                result[member._member_id].extend(
                    TopicPartition(topic, p) for p in range(start, start + size)
                )
                start += size
        return result

    def _kick_stragglers(self, group: _Group, now: float) -> float | None:
        """Remove awaited members silent past their poll interval; the next such deadline."""
        soonest: float | None = None
        for member_id in sorted(group.awaiting):
            member = group.members[member_id]
            limit = member._last_poll + member._max_poll_interval
            if limit <= now:
                logger.warning(
                    "group %s: member %s did not poll within %.3fs; removing it",
                    group.name,
                    member_id,
                    member._max_poll_interval,
                )
                del group.members[member_id]
                group.awaiting.discard(member_id)
                member._kicked = True
            elif soonest is None or limit < soonest:
                soonest = limit
        self._maybe_complete(group)
        return soonest

    def _end_transaction(self, txn: _Transaction, commit: bool) -> None:
        for part, offsets in txn.written.items():
            part.open.pop(txn.id, None)
            marker = len(part.log)
            part.log.append(CONTROL)
            part.controls.append(marker)
            if commit:
                part.hidden_committed.append(marker)
            else:
                part.hidden_committed = sorted(
                    itertools.chain(part.hidden_committed, offsets, (marker,))
                )
        for group_name, group_offsets in txn.offsets.items():
            group = self._group(group_name)
            for tp in group_offsets:
                left = group.pending.get(tp, 0) - 1
                if left > 0:
                    group.pending[tp] = left
                else:
                    group.pending.pop(tp, None)
            if commit:
                group.committed.update(group_offsets)
        del self._open_txns[txn.transactional_id]
        logger.debug(
            "transaction %s (%s) %s",
            txn.id,
            txn.transactional_id,
            "committed" if commit else "aborted",
        )
        self._notify()


# --- consumer -----------------------------------------------------------------------------

# (whether it is a revocation, the callback, its partitions)
_Step = tuple[bool, AssignCallback | None, list[TopicPartition]]


class MemoryConsumer(Consumer):
    """A consumer group member of a `MemoryBroker`."""

    def __init__(
        self,
        broker: MemoryBroker,
        group: str,
        *,
        read_committed: bool,
        reset: str,
        client_id: str,
        max_poll_interval: float,
        strategy: str,
    ) -> None:
        self._broker = broker
        self._group_name = group
        self._read_committed = read_committed
        self._reset = reset
        self._strategy = strategy
        self._max_poll_interval = max_poll_interval
        self._seq = next(broker._member_seq)
        self._member_id = f"{client_id}-{self._seq}"
        self._topics: tuple[str, ...] = ()
        self._patterns: tuple[re.Pattern[str], ...] = ()
        self._on_assign: AssignCallback | None = None
        self._on_revoke: AssignCallback | None = None
        self._on_lost: AssignCallback | None = None
        self._subscribed = False
        self._kicked = False
        self._closed = False
        self._last_poll = time.monotonic()
        self._generation = -1
        self._assigned: list[TopicPartition] = []
        self._positions: dict[TopicPartition, int | None] = {}
        self._paused: set[TopicPartition] = set()
        self._fetchable: list[tuple[TopicPartition, _Partition]] = []
        self._rotation = 0

    def __repr__(self) -> str:
        return f"MemoryConsumer({self._group_name}/{self._member_id})"

    # --- subscription ---------------------------------------------------------------------

    def subscribe(
        self,
        topics: Sequence[str],
        on_assign: AssignCallback | None = None,
        on_revoke: AssignCallback | None = None,
        on_lost: AssignCallback | None = None,
    ) -> None:
        if isinstance(topics, str):
            raise TypeError("subscribe() takes a sequence of topic names, not one string")
        if not topics:
            raise ConfigError("subscribe() needs at least one topic")
        broker = self._broker
        with broker._lock:
            self._check_open()
            self._on_assign, self._on_revoke, self._on_lost = on_assign, on_revoke, on_lost
            self._topics = tuple(t for t in topics if not t.startswith("^"))
            self._patterns = tuple(re.compile(t) for t in topics if t.startswith("^"))
            self._subscribed = True
            self._join_locked()

    def _subscribes_to(self, topic: str) -> bool:
        return topic in self._topics or any(p.match(topic) for p in self._patterns)

    def _join_locked(self) -> None:
        group = self._broker._group(self._group_name)
        self._kicked = False
        self._last_poll = time.monotonic()
        joining = self._member_id not in group.members
        group.members[self._member_id] = self
        logger.info("group %s: member %s joins", group.name, self._member_id)
        self._broker._start_rebalance(group, joining=self._member_id if joining else None)

    # --- consuming ------------------------------------------------------------------------

    def consume(self, max_messages: int, timeout: float) -> list[Message]:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        broker = self._broker
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            with broker._lock:
                self._check_open()
                now = time.monotonic()
                self._last_poll = now
                step = self._group_step_locked()
                if step is None:
                    wake_at = deadline
                    group = self._group_locked() if self._subscribed else None
                    if group is not None and group.rebalancing:
                        # Waiting for the other members to rejoin.
                        soonest = broker._kick_stragglers(group, now)
                        if not group.rebalancing:
                            continue
                        if soonest is not None:
                            wake_at = min(deadline, soonest)
                    else:
                        batch = self._fetch_locked(max_messages)
                        if batch:
                            return batch
                    remaining = wake_at - now
                    if remaining > 0:
                        broker._waiting += 1
                        try:
                            broker._cond.wait(remaining)
                        finally:
                            broker._waiting -= 1
                    elif wake_at >= deadline:
                        return []
                    continue
            # A rebalance callback, run without the lock.
            revoking, callback, partitions = step
            try:
                if callback is not None:
                    callback(partitions)
            finally:
                if revoking:
                    with broker._lock:
                        if not self._kicked and not self._closed:
                            self._finish_revoke_locked()

    def _group_locked(self) -> _Group:
        return self._broker._group(self._group_name)

    def _group_step_locked(self) -> _Step | None:
        """Advance this member through a rebalance: the callback to run without the lock."""
        if not self._subscribed:
            return None
        group = self._group_locked()
        if self._kicked:
            lost = self._assigned
            self._clear_assignment_locked()
            self._join_locked()
            if not lost:
                return None
            logger.warning("member %s lost %d partitions", self._member_id, len(lost))
            return False, self._on_lost or self._on_revoke, lost
        if group.rebalancing and self._member_id in group.awaiting:
            if self._assigned and self._on_revoke is not None:
                # The member still owns its partitions while on_revoke runs, so that the
                # callback can commit; it leaves the old generation afterwards.
                return True, self._on_revoke, list(self._assigned)
            self._finish_revoke_locked()
        if not group.rebalancing and self._generation != group.generation:
            new = sorted(group.assignments.get(self._member_id, []))
            self._generation = group.generation
            self._assigned = new
            self._positions = dict.fromkeys(new)
            self._paused = set()
            self._refresh_fetchable_locked()
            return False, self._on_assign, list(new)
        return None

    def _finish_revoke_locked(self) -> None:
        group = self._group_locked()
        self._clear_assignment_locked()
        if group.rebalancing and self._member_id in group.awaiting:
            group.awaiting.discard(self._member_id)
            self._broker._maybe_complete(group)

    def _clear_assignment_locked(self) -> None:
        self._assigned = []
        self._positions = {}
        self._paused = set()
        self._fetchable = []

    def _refresh_fetchable_locked(self) -> None:
        broker = self._broker
        fetchable = []
        for tp in self._assigned:
            if tp in self._paused:
                continue
            part = broker._partition(tp)
            if part is not None:
                fetchable.append((tp, part))
        self._fetchable = fetchable

    def _start_offset_locked(self, tp: TopicPartition, part: _Partition) -> int | None:
        group = self._group_locked()
        if self._read_committed and tp in group.pending:
            return None  # Kafka answers UNSTABLE_OFFSET_COMMIT until the transaction ends
        committed = group.committed.get(tp)
        if committed is not None:
            return committed
        return self._reset_offset_locked(tp, part, None)

    def _reset_offset_locked(self, tp: TopicPartition, part: _Partition, bad: int | None) -> int:
        if self._reset == "earliest":
            return 0
        if self._reset == "latest":
            return part.stable_end() if self._read_committed else len(part.log)
        if bad is None:
            raise OffsetOutOfRange(f"{tp}: no committed offset and auto_offset_reset=error")
        raise OffsetOutOfRange(f"{tp}: offset {bad} is outside 0..{len(part.log)}")

    def _fetch_locked(self, max_messages: int) -> list[Message]:
        fetchable = self._fetchable
        count = len(fetchable)
        if not count:
            return []
        out: list[Message] = []
        need = max_messages
        positions = self._positions
        read_committed = self._read_committed
        start = self._rotation % count
        self._rotation += 1
        for i in range(count):
            tp, part = fetchable[(start + i) % count]
            position = positions[tp]
            if position is None:
                position = self._start_offset_locked(tp, part)
                if position is None:
                    continue
                positions[tp] = position
            log = part.log
            size = len(log)
            if position > size:
                position = self._reset_offset_locked(tp, part, position)
                logger.warning("%s: offset out of range, reset to %d", tp, position)
                positions[tp] = position
            end = part.stable_end() if read_committed else size
            if position >= end:
                continue
            hidden = part.hidden_committed if read_committed else part.controls
            if not hidden or hidden[-1] < position:
                stop = min(end, position + need)
                out.extend(log[position:stop])
                need -= stop - position
                positions[tp] = stop
            else:
                index = bisect_left(hidden, position)
                nhidden = len(hidden)
                while position < end and need:
                    skip = hidden[index] if index < nhidden else end
                    if position < skip:
                        stop = min(skip, end, position + need)
                        out.extend(log[position:stop])
                        need -= stop - position
                        position = stop
                    else:
                        position += 1
                        index += 1
                positions[tp] = position
            if not need:
                break
        return out

    # --- assignment and positions ---------------------------------------------------------

    def assignment(self) -> list[TopicPartition]:
        with self._broker._lock:
            return list(self._assigned)

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        with self._broker._lock:
            self._check_open()
            assigned = set(self._assigned)
            for tp in partitions:
                if tp in assigned:
                    self._paused.add(tp)
                else:
                    logger.debug("pause of unassigned %s ignored", tp)
            self._refresh_fetchable_locked()

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        with self._broker._lock:
            self._check_open()
            self._paused.difference_update(partitions)
            self._refresh_fetchable_locked()
            self._broker._cond.notify_all()

    def paused(self) -> list[TopicPartition]:
        with self._broker._lock:
            return sorted(self._paused)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        with self._broker._lock:
            self._check_open()
            if partition not in self._positions:
                raise BackendError(f"cannot seek {partition}: not assigned to {self._member_id}")
            if offset < 0:
                raise OffsetOutOfRange(f"cannot seek {partition} to negative offset {offset}")
            self._positions[partition] = offset

    def position(self, partition: TopicPartition) -> int | None:
        with self._broker._lock:
            return self._positions.get(partition)

    def watermarks(self, partition: TopicPartition, timeout: float = 10.0,
                   cached: bool = False) -> tuple[int, int]:
        with self._broker._lock:
            part = self._broker._partition(partition)
            if part is None:
                raise UnknownTopic(f"unknown topic or partition {partition}")
            return 0, len(part.log)

    # --- offsets --------------------------------------------------------------------------

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        broker = self._broker
        with broker._lock:
            self._check_open()
            group = self._group_locked()
            if self._kicked or self._member_id not in group.members:
                raise RebalanceInProgress(
                    f"commit refused: {self._member_id} is no longer a member of group "
                    f"{group.name}"
                )
            owned = set(self._assigned)
            for tp, offset in offsets.items():
                if tp not in owned:
                    if group.rebalancing and self._member_id not in group.awaiting:
                        raise RebalanceInProgress(
                            f"commit of {tp} refused: group {group.name} is rebalancing and "
                            f"{self._member_id} gave up its partitions"
                        )
                    raise BackendError(
                        f"commit of {tp} refused: not assigned to {self._member_id} "
                        f"(assigned: {', '.join(map(str, self._assigned)) or 'nothing'})"
                    )
                if offset < 0:
                    raise OffsetOutOfRange(f"cannot commit negative offset {offset} for {tp}")
            group.committed.update(offsets)

    def committed(
        self, partitions: Sequence[TopicPartition], timeout: float = 10.0
    ) -> dict[TopicPartition, int | None]:
        with self._broker._lock:
            self._check_open()
            committed = self._group_locked().committed
            return {tp: committed.get(tp) for tp in partitions}

    def group_metadata(self) -> MemoryGroupMetadata:
        with self._broker._lock:
            return MemoryGroupMetadata(self._group_name, self._member_id, self._generation)

    def close(self) -> None:
        if self._closed:
            return
        broker = self._broker
        on_revoke = None
        with broker._lock:
            if self._assigned and not self._kicked:
                on_revoke, revoked = self._on_revoke, list(self._assigned)
        if on_revoke is not None:
            # As librdkafka does: the assignment is revoked (and may be committed) first.
            on_revoke(revoked)
        with broker._lock:
            self._closed = True
            self._clear_assignment_locked()
            group = self._group_locked()
            if self._subscribed and group.members.pop(self._member_id, None) is not None:
                logger.info("group %s: member %s leaves", group.name, self._member_id)
                group.awaiting.discard(self._member_id)
                group.assignments.pop(self._member_id, None)
                if group.members:
                    broker._start_rebalance(group)
                else:
                    group.rebalancing = False
                    group.awaiting = set()
            self._subscribed = False

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(f"consumer {self._member_id} is closed")


# --- producer -----------------------------------------------------------------------------


class MemoryProducer(Producer):
    """A producer of a `MemoryBroker`; every record is acknowledged at once."""

    def __init__(
        self,
        broker: MemoryBroker,
        transactional_id: str | None,
        client_id: str,
        partitioner: Callable[[bytes, int], int],
    ) -> None:
        self._broker = broker
        self._transactional_id = transactional_id
        self._client_id = client_id
        self._partitioner = partitioner
        self._epoch: int | None = None
        self._txn: _Transaction | None = None
        self._fenced = False
        self._closed = False
        self._served = 0
        self._errors: list[DeliveryError] = []
        self._round_robin: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"MemoryProducer({self._client_id}, transactional_id={self._transactional_id!r})"

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> None:
        broker = self._broker
        stored_headers = tuple(headers) if headers else None
        with broker._lock:
            if self._closed:
                raise BackendError(f"producer {self._client_id} is closed")
            parts = broker._topics.get(topic)
            if parts is None:
                raise UnknownTopic(f"unknown topic {topic!r}")
            txn = self._txn
            if self._transactional_id is not None:
                self._check_epoch_locked()
                if txn is None:
                    raise TransactionError(
                        f"produce outside a transaction on transactional producer "
                        f"{self._transactional_id!r}: call begin_transaction() first"
                    )
            count = len(parts)
            if partition is None:
                if key is not None:
                    partition = self._partitioner(key, count)
                else:
                    partition = self._round_robin.get(topic, -1) + 1
                    if partition >= count:
                        partition = 0
                    self._round_robin[topic] = partition
            elif not 0 <= partition < count:
                raise UnknownTopic(f"topic {topic!r} has no partition {partition}")
            if broker._fail_budget:
                failure = broker._take_failure(topic)
                if failure is not None:
                    self._errors.append(DeliveryError(topic, partition, key, *failure))
                    self._served += 1
                    return
            part = parts[partition]
            log = part.log
            offset = len(log)
            if timestamp is None:
                timestamp = int(broker._clock() * 1000)
            log.append(
                MemoryMessage(
                    topic,
                    partition,
                    offset,
                    key,
                    value,
                    stored_headers,
                    (TIMESTAMP_CREATE_TIME, timestamp),
                )
            )
            if txn is not None:
                written = txn.written.get(part)
                if written is None:
                    txn.written[part] = [offset]
                    part.open[txn.id] = offset
                else:
                    written.append(offset)
            self._served += 1
            if broker._waiting:
                broker._cond.notify_all()

    def poll(self, timeout: float = 0.0) -> int:
        served, self._served = self._served, 0
        return served

    def flush(self, timeout: float = 30.0) -> int:
        self._served = 0
        return 0

    def take_delivery_errors(self) -> list[DeliveryError]:
        with self._broker._lock:
            errors, self._errors = self._errors, []
            return errors

    def outstanding(self) -> int:
        return 0

    # --- transactions ---------------------------------------------------------------------

    def _require_transactional(self) -> str:
        if self._transactional_id is None:
            raise TransactionError("not a transactional producer (no transactional_id)")
        return self._transactional_id

    def _check_epoch_locked(self) -> None:
        tid = self._require_transactional()
        if self._fenced:
            raise ProducerFenced(f"producer with transactional id {tid!r} was fenced")
        if self._epoch is None:
            raise TransactionError(f"call init_transactions() first ({tid!r})")
        if self._broker._epochs.get(tid) != self._epoch:
            self._fenced = True
            self._txn = None
            raise ProducerFenced(
                f"producer with transactional id {tid!r} was fenced by a newer instance"
            )

    def init_transactions(self, timeout: float = 30.0) -> None:
        tid = self._require_transactional()
        broker = self._broker
        with broker._lock:
            if self._closed:
                raise BackendError(f"producer {self._client_id} is closed")
            if self._epoch is not None:
                raise TransactionError(f"init_transactions() already called ({tid!r})")
            previous = broker._open_txns.get(tid)
            if previous is not None:
                logger.info("transactional id %s: aborting the fenced producer's transaction", tid)
                old_producer, txn = previous
                old_producer._txn = None
                broker._end_transaction(txn, commit=False)
            self._epoch = broker._epochs.get(tid, -1) + 1
            broker._epochs[tid] = self._epoch

    def begin_transaction(self) -> None:
        broker = self._broker
        with broker._lock:
            self._check_epoch_locked()
            if self._txn is not None:
                raise TransactionError("a transaction is already open")
            txn = _Transaction(next(broker._txn_ids), self._require_transactional(), {}, {})
            self._txn = txn
            broker._open_txns[txn.transactional_id] = (self, txn)

    def _open_txn_locked(self) -> _Transaction:
        self._check_epoch_locked()
        if self._txn is None:
            raise TransactionError("no open transaction: call begin_transaction() first")
        return self._txn

    def send_offsets_to_transaction(
        self,
        offsets: Mapping[TopicPartition, int],
        group_metadata: GroupMetadata,
        timeout: float = 30.0,
    ) -> None:
        if not isinstance(group_metadata, MemoryGroupMetadata):
            raise TransactionError(
                f"group metadata must come from a MemoryConsumer, got {group_metadata!r}"
            )
        broker = self._broker
        with broker._lock:
            txn = self._open_txn_locked()
            group = broker._group(group_metadata.group)
            if (
                group_metadata.member_id not in group.members
                or group_metadata.generation != group.generation
            ):
                raise TransactionError(
                    f"group {group.name} moved to generation {group.generation} since member "
                    f"{group_metadata.member_id} read its records (generation "
                    f"{group_metadata.generation}): abort the transaction"
                )
            pending = txn.offsets.setdefault(group.name, {})
            for tp, offset in offsets.items():
                if offset < 0:
                    raise OffsetOutOfRange(f"cannot commit negative offset {offset} for {tp}")
                if tp not in pending:
                    group.pending[tp] = group.pending.get(tp, 0) + 1
                pending[tp] = offset

    def commit_transaction(self, timeout: float = 30.0) -> None:
        with self._broker._lock:
            txn = self._open_txn_locked()
            self._txn = None
            self._broker._end_transaction(txn, commit=True)

    def abort_transaction(self, timeout: float = 30.0) -> None:
        with self._broker._lock:
            txn = self._open_txn_locked()
            self._txn = None
            self._broker._end_transaction(txn, commit=False)

    def close(self) -> None:
        with self._broker._lock:
            if self._closed:
                return
            self._closed = True
            txn = self._txn
            self._txn = None
            if txn is not None and not self._fenced:
                logger.info("producer %s closed in a transaction: aborting it", self._client_id)
                self._broker._end_transaction(txn, commit=False)


# --- admin --------------------------------------------------------------------------------


class MemoryAdmin(Admin):
    """Topic management of a `MemoryBroker`."""

    def __init__(self, broker: MemoryBroker) -> None:
        self._broker = broker

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        replication: int = 1,
        config: Mapping[str, str] | None = None,
    ) -> None:
        if not _TOPIC_NAME.fullmatch(name) or name in (".", ".."):
            raise BackendError(f"invalid topic name {name!r}: use 1-249 of [A-Za-z0-9._-]")
        if partitions < 1:
            raise BackendError(f"topic {name!r}: partitions must be at least 1, got {partitions}")
        if replication < 1:
            raise BackendError(f"topic {name!r}: replication must be at least 1")
        broker = self._broker
        with broker._lock:
            if name in broker._topics:
                return
            broker._topics[name] = [_Partition(TopicPartition(name, p)) for p in range(partitions)]
            logger.info("created topic %s with %d partitions", name, partitions)
            broker._topics_changed(name)

    def delete_topic(self, name: str) -> None:
        broker = self._broker
        with broker._lock:
            if broker._topics.pop(name, None) is None:
                raise UnknownTopic(f"unknown topic {name!r}")
            for group in broker._groups.values():
                for tp in [tp for tp in group.committed if tp.topic == name]:
                    del group.committed[tp]
            logger.info("deleted topic %s", name)
            broker._topics_changed(name)

    def list_topics(self) -> dict[str, int]:
        with self._broker._lock:
            return {name: len(parts) for name, parts in self._broker._topics.items()}

    def group_offsets(
        self, group: str, topics: Sequence[str] | None = None
    ) -> dict[TopicPartition, int]:
        with self._broker._lock:
            state = self._broker._groups.get(group)
            if state is None:
                return {}
            wanted = None if topics is None else set(topics)
            return {
                tp: offset
                for tp, offset in sorted(state.committed.items())
                if wanted is None or tp.topic in wanted
            }

    def high_watermarks(self, topic: str) -> dict[TopicPartition, int]:
        with self._broker._lock:
            parts = self._broker._topics.get(topic)
            if parts is None:
                raise UnknownTopic(f"unknown topic {topic!r}")
            return {part.tp: len(part.log) for part in parts}

