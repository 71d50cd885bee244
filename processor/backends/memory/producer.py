"""The in-memory producer: appends to partition logs, optionally inside transactions.

Every record is acknowledged at once, so `flush()` has nothing to wait for; a failure
injected with a `faults.FaultInjector` is reported by `take_delivery_errors()` and
the record is not written. Records without a timestamp are stamped with the broker
clock's `time()`.

Transactions follow Kafka: transactional records are written to the log at once and a
commit or abort appends a marker. `init_transactions` bumps the transactional id's
epoch, fencing the older producer that shares it and aborting its open transaction.
Offsets sent to a transaction are committed by its commit only, and only while the
consumer's group generation is the one its records were read in (KIP-447).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from processor.backends.abstract import (
    DeliveryError,
    GroupMetadata,
    Headers,
    Producer,
    TopicPartition,
)
from processor.backends.memory.cluster import Cluster, Transaction
from processor.backends.memory.groups import MemoryGroupMetadata
from processor.backends.memory.log import TIMESTAMP_CREATE_TIME, MemoryMessage
from processor.backends.memory.partitioners import Partitioner
from processor.core.errors import (
    BackendError,
    OffsetOutOfRange,
    ProducerFenced,
    TransactionError,
    UnknownTopic,
)

logger = logging.getLogger(__name__)


class MemoryProducer(Producer):
    """A producer of a `MemoryBroker`; every record is acknowledged at once."""

    def __init__(
        self,
        cluster: Cluster,
        transactional_id: str | None,
        client_id: str,
        partitioner: Partitioner,
    ) -> None:
        self._cluster = cluster
        self._transactional_id = transactional_id
        self._client_id = client_id
        self._partitioner = partitioner
        self._epoch: int | None = None
        self._txn: Transaction | None = None
        self._fenced = False
        self._closed = False
        self._served = 0
        self._errors: list[DeliveryError] = []
        # Where in `_errors` the open transaction's failures begin: an abort forgets them.
        self._txn_errors = 0
        self._round_robin: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"MemoryProducer({self._client_id}, transactional_id={self._transactional_id!r})"

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> None:
        cluster = self._cluster
        stored_headers = tuple(headers) if headers else None
        with cluster.lock:
            self._check_open()
            parts = cluster.topics.get(topic)
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
            if cluster.delivery_faults is not None:
                failure = cluster.delivery_faults(topic)
                if failure is not None:
                    self._errors.append(DeliveryError(topic, partition, key, *failure))
                    self._served += 1
                    return
            limit = cluster.max_bytes.get(topic)
            if limit is not None:
                size = len(value or b"") + len(key or b"") + sum(
                    len(k) + len(v or b"") for k, v in headers or ())
                if size > limit:
                    self._errors.append(DeliveryError(
                        topic, partition, key, "Broker: Message size too large", False,
                        True, size))
                    self._served += 1
                    return
            part = parts[partition]
            log = part.log
            offset = len(log)
            if timestamp is None:
                timestamp = int(cluster.clock.time() * 1000)
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
            if cluster.waiting:
                cluster.cond.notify_all()

    def set_deadline(self, deadline: float | None) -> None:
        # Every record is acknowledged at once: the queue is never full, nothing waits.
        pass

    def poll(self, timeout: float = 0.0) -> int:
        served, self._served = self._served, 0
        return served

    def flush(self, timeout: float = 30.0) -> int:
        self._served = 0
        return 0

    def take_delivery_errors(self) -> list[DeliveryError]:
        with self._cluster.lock:
            errors, self._errors = self._errors, []
            self._txn_errors = 0
            return errors

    def outstanding(self) -> int:
        return 0

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(f"producer {self._client_id} is closed")

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
        if self._cluster.epochs.get(tid) != self._epoch:
            self._fenced = True
            self._txn = None
            raise ProducerFenced(
                f"producer with transactional id {tid!r} was fenced by a newer instance"
            )

    def init_transactions(self, timeout: float = 30.0) -> None:
        tid = self._require_transactional()
        cluster = self._cluster
        with cluster.lock:
            self._check_open()
            if self._epoch is not None:
                raise TransactionError(f"init_transactions() already called ({tid!r})")
            previous = cluster.open_txns.get(tid)
            if previous is not None:
                logger.info("transactional id %s: aborting the fenced producer's transaction", tid)
                cluster.end_transaction(previous, commit=False)
            self._epoch = cluster.epochs.get(tid, -1) + 1
            cluster.epochs[tid] = self._epoch

    def begin_transaction(self) -> None:
        cluster = self._cluster
        with cluster.lock:
            self._check_open()
            self._check_epoch_locked()
            if self._txn is not None:
                raise TransactionError("a transaction is already open")
            from processor.backends.memory.cluster import Transaction

            txn = Transaction(next(cluster.txn_ids), self._require_transactional())
            self._txn = txn
            self._txn_errors = len(self._errors)
            cluster.open_txns[txn.transactional_id] = txn

    def _open_txn_locked(self) -> Transaction:
        self._check_open()
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
        cluster = self._cluster
        with cluster.lock:
            txn = self._open_txn_locked()
            group = cluster.group(group_metadata.group)
            if (
                group_metadata.member_id not in group.members
                or group_metadata.generation != group.generation
            ):
                raise TransactionError(
                    f"group {group.name} moved to generation {group.generation} since member "
                    f"{group_metadata.member_id} read its records (generation "
                    f"{group_metadata.generation}): abort the transaction"
                )
            for tp, offset in offsets.items():
                if offset < 0:
                    raise OffsetOutOfRange(f"cannot commit negative offset {offset} for {tp}")
            pending = txn.offsets.setdefault(group.name, {})
            group.hold(tp for tp in offsets if tp not in pending)
            pending.update(offsets)

    def commit_transaction(self, timeout: float = 30.0) -> None:
        with self._cluster.lock:
            txn = self._open_txn_locked()
            self._txn = None
            self._cluster.end_transaction(txn, commit=True)

    def abort_transaction(self, timeout: float = 30.0) -> None:
        with self._cluster.lock:
            txn = self._open_txn_locked()
            self._txn = None
            self._cluster.end_transaction(txn, commit=False)
            # As Kafka's: the failures of the aborted records go with them, or the next
            # transaction would fail for them (those taken already were reported).
            del self._errors[self._txn_errors:]

    def close(self, timeout: float | None = None) -> None:
        with self._cluster.lock:
            if self._closed:
                return
            self._closed = True
            txn = self._txn
            self._txn = None
            if txn is not None and not txn.done:
                logger.info("producer %s closed in a transaction: aborting it", self._client_id)
                self._cluster.end_transaction(txn, commit=False)
