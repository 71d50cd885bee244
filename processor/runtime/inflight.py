"""Records in flight under a concurrent handler: order of outputs and committable offsets.

With an async, threaded or batch handler a stage has many records in hand at once; their
calls finish in any order. `InFlight` keeps every such record (an `Entry`) from the
moment it is consumed until its outputs have left, and says which records may leave now:

* **order by key**: a record's outputs leave once it and every earlier record of the
  same key in its partition (its *lane*) are done. Records of other keys do not wait.
* **order by partition**: a record's outputs leave once it and every earlier record of
  its partition are done.

Either way a partition's committable offset is the one after the longest run of records
from its start whose outputs have all left: at-least-once never commits past a record
whose outputs are not out (a crash replays it), and a record stays counted (toward the
stage's limits) until it is committable.

Bookkeeping only: the stage thread alone calls it. Calls, emission and commits are done
by `processor.runtime.concurrent`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable

from processor.backends.abstract import Message, TopicPartition
from processor.core.artifact import Artifact
from processor.core.handlers import BatchOutcome


class Entry:
    """One record in flight: its message, its decoded artifact and, once its call is over,
    the outcome (or the exception it ended with) and the attempts it took."""

    __slots__ = ("artifact", "attempts", "cancelled", "done", "elapsed", "handle", "lane",
                 "msg", "outcome", "released", "tp")

    def __init__(self, msg: Message, tp: TopicPartition, lane: Hashable,
                 artifact: Artifact | None) -> None:
        self.msg = msg
        self.tp = tp
        self.lane = lane
        self.artifact = artifact
        self.outcome: BatchOutcome = None
        self.attempts = 0
        self.elapsed = 0.0
        """Seconds its handler call took (all attempts), measured by the executor."""
        self.done = False
        """Set by the stage thread when the call's result reached it."""
        self.released = False
        """Its outputs have left."""
        self.cancelled = False
        """Dropped (revoked partition, aborted transaction): a late result is ignored."""
        self.handle: object = None
        """The executor's handle of the call (a task or a future), for cancelling it."""


class InFlight:
    """The records in flight of one stage (see the module documentation)."""

    def __init__(self, by_key: bool) -> None:
        self.by_key = by_key
        self.partitions: dict[TopicPartition, deque[Entry]] = {}
        self.lanes: dict[Hashable, deque[Entry]] = {}
        self.count = 0
        """Records in flight: consumed and not yet committable."""

    def __len__(self) -> int:
        return self.count

    def lane_of(self, tp: TopicPartition, key: bytes | None) -> Hashable:
        return (tp, key) if self.by_key else tp

    def add(self, entry: Entry) -> None:
        part = self.partitions.get(entry.tp)
        if part is None:
            part = self.partitions[entry.tp] = deque()
        part.append(entry)
        if self.by_key:
            lane = self.lanes.get(entry.lane)
            if lane is None:
                lane = self.lanes[entry.lane] = deque()
            lane.append(entry)
        self.count += 1

    def release(self, done: Iterable[Entry]) -> tuple[list[Entry], dict[TopicPartition, int]]:
        """`done` just finished their calls: the entries whose outputs may leave now, in
        order, and the partitions whose committable offset moved, with the new offset
        (next to read)."""
        released: list[Entry] = []
        if self.by_key:
            lanes = self.lanes
            for entry in done:
                lane = lanes.get(entry.lane)
                while lane and lane[0].done:
                    head = lane.popleft()
                    head.released = True
                    released.append(head)
                if lane is not None and not lane:
                    del lanes[entry.lane]
        else:
            for tp in {entry.tp: None for entry in done}:
                for head in self.partitions.get(tp, ()):
                    if not head.done:
                        break
                    head.released = True
                    released.append(head)
        moved: dict[TopicPartition, int] = {}
        for tp in {entry.tp: None for entry in released}:
            part = self.partitions.get(tp)
            if part is not None:
                self._advance(tp, part, moved)
        return released, moved

    def _advance(self, tp: TopicPartition, part: deque[Entry],
                 moved: dict[TopicPartition, int]) -> None:
        last = -1
        while part and part[0].released:
            last = part.popleft().msg.offset()
            self.count -= 1
        if last >= 0:
            moved[tp] = last + 1
        if not part:
            del self.partitions[tp]

    def pending(self, partitions: Iterable[TopicPartition] | None = None) -> int:
        """Records in flight, of `partitions` (default: all)."""
        if partitions is None:
            return self.count
        return sum(len(self.partitions.get(tp, ())) for tp in partitions)

    def first_offsets(self) -> dict[TopicPartition, int]:
        """The offset of the first record in flight of every partition: where its
        uncommitted work begins (exactly-once re-reads from there after an abort)."""
        return {tp: part[0].msg.offset() for tp, part in self.partitions.items() if part}

    def discard(self, partitions: Iterable[TopicPartition] | None = None) -> list[Entry]:
        """Drop the records in flight of `partitions` (default: all); returns them, each
        marked cancelled, so that their calls can be cancelled and late results ignored."""
        tps = list(self.partitions) if partitions is None else list(partitions)
        dropped: list[Entry] = []
        for tp in tps:
            part = self.partitions.pop(tp, None)
            if part is None:
                continue
            for entry in part:
                entry.cancelled = True
                dropped.append(entry)
            self.count -= len(part)
        if self.by_key:
            gone = set(tps)
            for lane_key in [k for k, lane in self.lanes.items() if lane[0].tp in gone]:
                del self.lanes[lane_key]
        return dropped
