"""Consumer groups of the in-memory broker: membership, the eager rebalance, assignment.

The eager protocol, as the Kafka consumer runs it: a member joining or leaving (or a
subscribed topic appearing or disappearing) starts a rebalance; every member revokes its
whole assignment inside its next `consume()` (calling `on_revoke`, during which it may
still commit), and only when every member has rejoined is the new assignment computed
(`range` by default, `roundrobin` with the setting `partition.assignment.strategy`) and
handed out (calling `on_assign`). A member that does not call `consume()` for
`max.poll.interval.ms` while the others wait is removed from the group; it learns this
through `on_lost` in its next `consume()` and rejoins.

This module holds the group state and the protocol's decisions; the consumer
(`processor.backends.memory.consumer`) walks a member through them. Everything here runs
with the broker's lock held; the caller wakes the waiting consumers afterwards.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterable, Mapping, Sized
from dataclasses import dataclass
from typing import Final

from processor.backends.abstract import TopicPartition

logger = logging.getLogger(__name__)

STRATEGIES: Final = ("range", "roundrobin")
"""The partition assignment strategies the in-memory broker implements."""


@dataclass(frozen=True)
class MemoryGroupMetadata:
    """The consumer state `send_offsets_to_transaction` checks (KIP-447 fencing)."""

    group: str
    member_id: str
    generation: int


@dataclass(eq=False)
class Member:
    """A consumer's membership, as the group sees it.

    `last_poll` is the broker clock's `monotonic()` time of the member's latest
    `consume()`; `kicked` is set when the group removed it for being silent too long.
    """

    member_id: str
    seq: int
    strategy: str
    max_poll_interval: float
    topics: tuple[str, ...] = ()
    patterns: tuple[re.Pattern[str], ...] = ()
    last_poll: float = 0.0
    kicked: bool = False

    def subscribes_to(self, topic: str) -> bool:
        return topic in self.topics or any(p.match(topic) for p in self.patterns)


class Group:
    """One consumer group: its members, generation, assignment and committed offsets.

    `topics` arguments map every topic name to its partitions (only their count is used).
    """

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
        self.members: dict[str, Member] = {}
        self.generation = 0
        self.rebalancing = False
        # Members the running rebalance still waits for (to revoke and rejoin).
        self.awaiting: set[str] = set()
        self.assignments: dict[str, list[TopicPartition]] = {}
        self.committed: dict[TopicPartition, int] = {}
        # Partition -> number of open transactions holding offsets for it.
        self.pending: dict[TopicPartition, int] = {}

    def subscribes_to(self, topic: str) -> bool:
        """Whether any member reads `topic`."""
        return any(member.subscribes_to(topic) for member in self.members.values())

    def join(self, member: Member, topics: Mapping[str, Sized], now: float) -> None:
        """Add (or re-add) `member` and start a rebalance."""
        member.kicked = False
        member.last_poll = now
        joining = member.member_id not in self.members
        self.members[member.member_id] = member
        logger.info("group %s: member %s joins", self.name, member.member_id)
        self.start_rebalance(topics, joining=member.member_id if joining else None)

    def leave(self, member_id: str, topics: Mapping[str, Sized]) -> None:
        """Remove a member that closed; the others rebalance."""
        if self.members.pop(member_id, None) is None:
            return
        logger.info("group %s: member %s leaves", self.name, member_id)
        self.awaiting.discard(member_id)
        self.assignments.pop(member_id, None)
        if self.members:
            self.start_rebalance(topics)
        else:
            self.rebalancing = False
            self.awaiting = set()

    def start_rebalance(self, topics: Mapping[str, Sized], joining: str | None = None) -> None:
        """Ask every member but a `joining` one (which owns nothing) to revoke and rejoin."""
        if not self.rebalancing:
            self.rebalancing = True
            self.awaiting = {m for m in self.members if m != joining}
        logger.debug("group %s: rebalance, awaiting %s", self.name, sorted(self.awaiting))
        self.maybe_complete(topics)

    def revoked(self, member_id: str, topics: Mapping[str, Sized]) -> None:
        """`member_id` gave up its partitions for the running rebalance."""
        if self.rebalancing and member_id in self.awaiting:
            self.awaiting.discard(member_id)
            self.maybe_complete(topics)

    def maybe_complete(self, topics: Mapping[str, Sized]) -> None:
        """Hand out the new assignment once no member is awaited."""
        if not self.rebalancing or self.awaiting:
            return
        members = sorted(self.members.values(), key=lambda m: m.seq)
        self.assignments = assign(members, topics)
        self.generation += 1
        self.rebalancing = False
        logger.info(
            "group %s generation %d: %s",
            self.name,
            self.generation,
            {m: [str(tp) for tp in tps] for m, tps in self.assignments.items()},
        )

    def kick_stragglers(self, topics: Mapping[str, Sized], now: float) -> float | None:
        """Remove awaited members silent past their poll interval; the next such deadline."""
        soonest: float | None = None
        for member_id in sorted(self.awaiting):
            member = self.members[member_id]
            limit = member.last_poll + member.max_poll_interval
            if limit <= now:
                logger.warning(
                    "group %s: member %s did not poll within %.3fs; removing it",
                    self.name,
                    member_id,
                    member.max_poll_interval,
                )
                del self.members[member_id]
                self.awaiting.discard(member_id)
                member.kicked = True
            elif soonest is None or limit < soonest:
                soonest = limit
        self.maybe_complete(topics)
        return soonest

    def hold(self, partitions: Iterable[TopicPartition]) -> None:
        """An open transaction now holds offsets for `partitions`."""
        for tp in partitions:
            self.pending[tp] = self.pending.get(tp, 0) + 1

    def release(self, partitions: Iterable[TopicPartition]) -> None:
        """A transaction holding offsets for `partitions` ended."""
        for tp in partitions:
            left = self.pending.get(tp, 0) - 1
            if left > 0:
                self.pending[tp] = left
            else:
                self.pending.pop(tp, None)


def assign(members: list[Member], topics: Mapping[str, Sized]) -> dict[str, list[TopicPartition]]:
    """The assignment of the partitions of subscribed `topics` to `members` (in join order).

    The first member's strategy decides, as the group leader's does in Kafka: `range`
    gives each member a consecutive run of every topic's partitions (the first members
    one more when they do not divide evenly); `roundrobin` deals all partitions out in
    turn to the members subscribed to their topic.
    """
    result: dict[str, list[TopicPartition]] = {m.member_id: [] for m in members}
    if not members:
        return result
    subscribed = sorted(t for t in topics if any(m.subscribes_to(t) for m in members))
    if members[0].strategy == "roundrobin":
        ring = itertools.cycle(members)
        for topic in subscribed:
            for p in range(len(topics[topic])):
                for _ in range(len(members)):
                    member = next(ring)
                    if member.subscribes_to(topic):
                        result[member.member_id].append(TopicPartition(topic, p))
                        break
        return result
    for topic in subscribed:
        subscribers = [m for m in members if m.subscribes_to(topic)]
        share, extra = divmod(len(topics[topic]), len(subscribers))
        start = 0
        for i, member in enumerate(subscribers):
            size = share + (1 if i < extra else 0)
            result[member.member_id].extend(
                TopicPartition(topic, p) for p in range(start, start + size)
            )
            start += size
    return result
