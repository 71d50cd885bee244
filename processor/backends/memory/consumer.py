"""The in-memory consumer: a group member reading partition logs.

Reading follows Kafka: a member starts a partition at the group's committed offset, or
where `auto_offset_reset` says when there is none; a `read_committed` member stops at
the last stable offset and skips aborted records, a `read_uncommitted` one skips only
transaction markers. A `read_committed` member does not start reading a partition while
a transaction holds uncommitted offsets for it (Kafka's "require stable" offset fetch).

`consume()` is where the member takes part in its group (see
`processor.backends.memory.groups`): it revokes, is assigned, or learns it was removed,
running the matching callback without the broker's lock. Its waits go through the
broker's clock; a wait ends on a notification or the clock's deadline, and the loop
re-checks everything after each.
"""

from __future__ import annotations

import logging
import re
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from processor.backends.abstract import AssignCallback, Consumer, Message, TopicPartition
from processor.backends.memory.cluster import Cluster
from processor.backends.memory.groups import STRATEGIES, Group, Member, MemoryGroupMetadata
from processor.backends.memory.log import PartitionLog
from processor.core.errors import (
    BackendError,
    ConfigError,
    OffsetOutOfRange,
    RebalanceInProgress,
    UnknownTopic,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_POLL_INTERVAL_MS: Final = 300_000
AUTO_OFFSET_RESETS: Final = ("earliest", "latest", "error")

# (whether it is a revocation, the callback, its partitions)
_Step = tuple[bool, AssignCallback | None, list[TopicPartition]]


@dataclass(frozen=True)
class ConsumerOptions:
    """A consumer's checked settings."""

    reset: str
    max_poll_interval: float
    """Seconds."""
    strategy: str


def consumer_options(
    group: str, auto_offset_reset: str, settings: Mapping[str, object]
) -> ConsumerOptions:
    """Check a consumer's arguments and the librdkafka settings the broker models."""
    if auto_offset_reset not in AUTO_OFFSET_RESETS:
        raise ConfigError(
            f"auto_offset_reset must be one of {', '.join(AUTO_OFFSET_RESETS)}; "
            f"got {auto_offset_reset!r}"
        )
    raw = settings.get("max.poll.interval.ms", DEFAULT_MAX_POLL_INTERVAL_MS)
    try:
        interval = float(str(raw))
    except ValueError:
        interval = 0.0
    if not interval > 0:
        raise ConfigError(f"max.poll.interval.ms must be a positive number, got {raw!r}")
    strategy = str(settings.get("partition.assignment.strategy", "range")).split(",")[0]
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"partition.assignment.strategy must be range or roundrobin, got {strategy!r}"
        )
    if not group:
        raise ConfigError("a consumer group id is required")
    return ConsumerOptions(auto_offset_reset, interval / 1000.0, strategy)


class MemoryConsumer(Consumer):
    """A consumer group member of a `MemoryBroker`."""

    def __init__(
        self,
        cluster: Cluster,
        group: str,
        *,
        read_committed: bool,
        client_id: str,
        options: ConsumerOptions,
    ) -> None:
        self._cluster = cluster
        self._group_name = group
        self._read_committed = read_committed
        self._reset = options.reset
        seq = next(cluster.member_seq)
        self._member = Member(
            f"{client_id}-{seq}", seq, options.strategy, options.max_poll_interval
        )
        self._on_assign: AssignCallback | None = None
        self._on_revoke: AssignCallback | None = None
        self._on_lost: AssignCallback | None = None
        self._subscribed = False
        self._closed = False
        self._generation = -1
        self._assigned: list[TopicPartition] = []
        self._positions: dict[TopicPartition, int | None] = {}
        self._paused: set[TopicPartition] = set()
        self._fetchable: list[tuple[TopicPartition, PartitionLog]] = []
        self._rotation = 0

    def __repr__(self) -> str:
        return f"MemoryConsumer({self._group_name}/{self._member.member_id})"

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
        with self._cluster.lock:
            self._check_open()
            self._on_assign, self._on_revoke, self._on_lost = on_assign, on_revoke, on_lost
            self._member.topics = tuple(t for t in topics if not t.startswith("^"))
            self._member.patterns = tuple(re.compile(t) for t in topics if t.startswith("^"))
            self._subscribed = True
            self._join_locked()

    def _join_locked(self) -> None:
        cluster = self._cluster
        self._group_locked().join(self._member, cluster.topics, cluster.clock.monotonic())
        cluster.cond.notify_all()

    # --- consuming ------------------------------------------------------------------------

    def consume(self, max_messages: int, timeout: float) -> list[Message]:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        cluster = self._cluster
        clock = cluster.clock
        deadline = clock.monotonic() + max(timeout, 0.0)
        while True:
            with cluster.lock:
                self._check_open()
                now = clock.monotonic()
                self._member.last_poll = now
                step = self._group_step_locked()
                if step is None:
                    wake_at = deadline
                    group = self._group_locked() if self._subscribed else None
                    if group is not None and group.rebalancing:
                        # Waiting for the other members to rejoin.
                        soonest = group.kick_stragglers(cluster.topics, now)
                        if not group.rebalancing:
                            cluster.cond.notify_all()
                            continue
                        if soonest is not None:
                            wake_at = min(deadline, soonest)
                    else:
                        batch = self._fetch_locked(max_messages)
                        if batch:
                            return batch
                    if wake_at > now:
                        cluster.wait_until(wake_at)
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
                    with cluster.lock:
                        if not self._member.kicked and not self._closed:
                            self._finish_revoke_locked()

    def _group_locked(self) -> Group:
        return self._cluster.group(self._group_name)

    def _group_step_locked(self) -> _Step | None:
        """Advance this member through a rebalance: the callback to run without the lock."""
        if not self._subscribed:
            return None
        group = self._group_locked()
        member_id = self._member.member_id
        if self._member.kicked:
            lost = self._assigned
            self._clear_assignment_locked()
            self._join_locked()
            if not lost:
                return None
            logger.warning("member %s lost %d partitions", member_id, len(lost))
            return False, self._on_lost or self._on_revoke, lost
        if group.rebalancing and member_id in group.awaiting:
            if self._assigned and self._on_revoke is not None:
                # The member still owns its partitions while on_revoke runs, so that the
                # callback can commit; it leaves the old generation afterwards.
                return True, self._on_revoke, list(self._assigned)
            self._finish_revoke_locked()
        if not group.rebalancing and self._generation != group.generation:
            new = sorted(group.assignments.get(member_id, []))
            self._generation = group.generation
            self._assigned = new
            self._positions = dict.fromkeys(new)
            self._paused = set()
            self._refresh_fetchable_locked()
            return False, self._on_assign, list(new)
        return None

    def _finish_revoke_locked(self) -> None:
        self._clear_assignment_locked()
        group = self._group_locked()
        group.revoked(self._member.member_id, self._cluster.topics)
        if not group.rebalancing:
            self._cluster.cond.notify_all()

    def _clear_assignment_locked(self) -> None:
        self._assigned = []
        self._positions = {}
        self._paused = set()
        self._fetchable = []

    def _refresh_fetchable_locked(self) -> None:
        cluster = self._cluster
        fetchable = []
        for tp in self._assigned:
            if tp in self._paused:
                continue
            part = cluster.partition(tp)
            if part is not None:
                fetchable.append((tp, part))
        self._fetchable = fetchable

    def _start_offset_locked(self, tp: TopicPartition, part: PartitionLog) -> int | None:
        group = self._group_locked()
        if self._read_committed and tp in group.pending:
            return None  # Kafka answers UNSTABLE_OFFSET_COMMIT until the transaction ends
        committed = group.committed.get(tp)
        if committed is not None:
            return committed
        return self._reset_offset_locked(tp, part, None)

    def _reset_offset_locked(self, tp: TopicPartition, part: PartitionLog, bad: int | None
                             ) -> int:
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
        with self._cluster.lock:
            return list(self._assigned)

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        with self._cluster.lock:
            self._check_open()
            assigned = set(self._assigned)
            for tp in partitions:
                if tp in assigned:
                    self._paused.add(tp)
                else:
                    logger.debug("pause of unassigned %s ignored", tp)
            self._refresh_fetchable_locked()

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        with self._cluster.lock:
            self._check_open()
            self._paused.difference_update(partitions)
            self._refresh_fetchable_locked()
            self._cluster.notify()

    def paused(self) -> list[TopicPartition]:
        with self._cluster.lock:
            return sorted(self._paused)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        with self._cluster.lock:
            self._check_open()
            if partition not in self._positions:
                raise BackendError(
                    f"cannot seek {partition}: not assigned to {self._member.member_id}"
                )
            if offset < 0:
                raise OffsetOutOfRange(f"cannot seek {partition} to negative offset {offset}")
            self._positions[partition] = offset

    def position(self, partition: TopicPartition) -> int | None:
        with self._cluster.lock:
            self._check_open()
            return self._positions.get(partition)

    def watermarks(self, partition: TopicPartition, timeout: float = 10.0,
                   cached: bool = False) -> tuple[int, int]:
        with self._cluster.lock:
            self._check_open()
            part = self._cluster.partition(partition)
            if part is None:
                raise UnknownTopic(f"unknown topic or partition {partition}")
            return 0, len(part.log)

    # --- offsets --------------------------------------------------------------------------

    def commit(self, offsets: Mapping[TopicPartition, int],
               timeout: float | None = None) -> None:
        with self._cluster.lock:
            self._check_open()
            group = self._group_locked()
            member_id = self._member.member_id
            if self._member.kicked or member_id not in group.members:
                raise RebalanceInProgress(
                    f"commit refused: {member_id} is no longer a member of group {group.name}"
                )
            owned = set(self._assigned)
            for tp, offset in offsets.items():
                if tp not in owned:
                    if group.rebalancing and member_id not in group.awaiting:
                        raise RebalanceInProgress(
                            f"commit of {tp} refused: group {group.name} is rebalancing and "
                            f"{member_id} gave up its partitions"
                        )
                    raise BackendError(
                        f"commit of {tp} refused: not assigned to {member_id} "
                        f"(assigned: {', '.join(map(str, self._assigned)) or 'nothing'})"
                    )
                if offset < 0:
                    raise OffsetOutOfRange(f"cannot commit negative offset {offset} for {tp}")
            group.committed.update(offsets)

    def committed(
        self, partitions: Sequence[TopicPartition], timeout: float = 10.0
    ) -> dict[TopicPartition, int | None]:
        with self._cluster.lock:
            self._check_open()
            committed = self._group_locked().committed
            return {tp: committed.get(tp) for tp in partitions}

    def group_metadata(self) -> MemoryGroupMetadata:
        with self._cluster.lock:
            self._check_open()
            return MemoryGroupMetadata(
                self._group_name, self._member.member_id, self._generation
            )

    def close(self, timeout: float | None = None) -> None:
        if self._closed:
            return
        cluster = self._cluster
        on_revoke = None
        with cluster.lock:
            if self._assigned and not self._member.kicked:
                on_revoke, revoked = self._on_revoke, list(self._assigned)
        if on_revoke is not None:
            # As librdkafka does: the assignment is revoked (and may be committed) first.
            on_revoke(revoked)
        with cluster.lock:
            self._closed = True
            self._clear_assignment_locked()
            if self._subscribed:
                self._group_locked().leave(self._member.member_id, cluster.topics)
                cluster.cond.notify_all()
            self._subscribed = False

    def wait_callbacks(self, timeout: float = 0.0) -> bool:
        # `close` runs on_revoke on its caller's thread and ignores its timeout: once it
        # has returned, no callback of its runs, and none starts on a closed consumer.
        return True

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(f"consumer {self._member.member_id} is closed")
