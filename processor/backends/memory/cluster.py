"""The shared state of an in-memory broker: what a Kafka cluster would hold.

`Cluster` holds topics of partition logs, consumer groups with their committed offsets,
transactional ids with their epochs and open transactions, and the hook through which a
`FaultInjector` (`processor.backends.memory.faults`) fails produces. Every field is
guarded by one lock; a consumer waiting for records waits on a condition of that lock
(through the clock, see `processor.backends.memory.clock`), woken by produces,
transaction ends and group changes. The clients (`MemoryConsumer`, `MemoryProducer`,
`MemoryAdmin`) read and change it with the lock held, and run their callbacks without
it. `Cluster` is internal to this package; `MemoryBroker` is its public face.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from processor.backends.abstract import TopicPartition
from processor.backends.memory.clock import Clock
from processor.backends.memory.groups import Group
from processor.backends.memory.log import PartitionLog

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Transaction:
    """An open transaction: what it wrote and the group offsets it will commit."""

    id: int
    transactional_id: str
    # Partition -> offsets written by the transaction.
    written: dict[PartitionLog, list[int]] = field(default_factory=dict)
    # Group -> offsets to commit with the transaction.
    offsets: dict[str, dict[TopicPartition, int]] = field(default_factory=dict)
    # Set when it committed or aborted (also when a newer producer aborted it).
    done: bool = False


class Cluster:
    """The shared state of one in-memory broker; hold `lock` to read or change it."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        # Threads waiting on `cond` (produces skip the notification when there are none).
        self.waiting = 0
        self.topics: dict[str, list[PartitionLog]] = {}
        # Topic -> (replication factor, the settings given at creation).
        self.topic_settings: dict[str, tuple[int, dict[str, str]]] = {}
        self.groups: dict[str, Group] = {}
        # Transactional id -> its current producer epoch, and its open transaction.
        self.epochs: dict[str, int] = {}
        self.open_txns: dict[str, Transaction] = {}
        self.txn_ids = itertools.count(1)
        self.member_seq = itertools.count(1)
        # Set by a `FaultInjector` only: topic -> the (reason, retriable) failure the
        # produce to it reports instead of writing the record, or None.
        self.delivery_faults: Callable[[str], tuple[str, bool] | None] | None = None
        # Topic -> its `max.message.bytes`: larger records fail delivery, as on Kafka.
        self.max_bytes: dict[str, int] = {}

    def notify(self) -> None:
        """Wake every waiting consumer, which re-checks what it waits for."""
        if self.waiting:
            self.cond.notify_all()

    def wait_until(self, deadline: float) -> None:
        """Wait (the lock held) for a notification or the clock's `deadline`."""
        self.waiting += 1
        try:
            self.clock.wait_until(self.cond, deadline)
        finally:
            self.waiting -= 1

    def partition(self, tp: TopicPartition) -> PartitionLog | None:
        parts = self.topics.get(tp.topic)
        if parts is None or not 0 <= tp.partition < len(parts):
            return None
        return parts[tp.partition]

    def group(self, name: str) -> Group:
        group = self.groups.get(name)
        if group is None:
            group = self.groups[name] = Group(name)
        return group

    def topics_changed(self, name: str) -> None:
        """Topic `name` was created or deleted: the groups reading it rebalance."""
        for group in self.groups.values():
            if group.subscribes_to(name):
                logger.info("topic %s changed: group %s rebalances", name, group.name)
                group.start_rebalance(self.topics)
        self.notify()

    def end_transaction(self, txn: Transaction, commit: bool) -> None:
        """Commit or abort `txn`: markers in every partition it wrote, and its offsets."""
        for part, offsets in txn.written.items():
            part.end_transaction(txn.id, offsets, commit)
        for group_name, group_offsets in txn.offsets.items():
            group = self.group(group_name)
            group.release(group_offsets)
            if commit:
                group.committed.update(group_offsets)
        txn.done = True
        del self.open_txns[txn.transactional_id]
        logger.debug(
            "transaction %s (%s) %s",
            txn.id,
            txn.transactional_id,
            "committed" if commit else "aborted",
        )
        self.notify()
