"""Commit strategies: how a stage makes its outputs durable and commits its input offsets.

A stage handles records and remembers, per partition, the offset after the last record it
finished (its *pending* offsets). Every `commit_interval` seconds, on revocation and at
shutdown it asks its strategy to commit them:

* `AtLeastOnce`: `flush()` the producer until every output is acknowledged, then commit
  the offsets with the consumer. An output that failed raises `DeliveryFailed` and
  nothing is committed; outputs not acknowledged in time postpone the commit. A crash
  between the flush and the commit replays those records (duplicates, never losses).
* `ExactlyOnce`: outputs and dead letters are produced inside a transaction, opened
  before the first record of a batch (`open()`); the consumed offsets join it
  (`send_offsets_to_transaction`) and the transaction commits as one. A transaction that
  fails is aborted and the stage re-reads its input from where the transaction began
  (`rewind_to`, which the stage fills in its loop).

Both answer a commit with a `CommitResult`; the stage does the bookkeeping.

Every broker call of a commit is bounded: by the commit's `timeout`, and, once the stage
is stopping, by `stop_by` (the `time.monotonic()` by which its shutdown must be over),
read again between the short slices of a flush. So a commit running when a stop signal
arrives ends by the shutdown deadline, even with the broker gone.
"""

from __future__ import annotations

import enum
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Protocol

from processor.backends.abstract import Consumer, DeliveryError, Producer, TopicPartition
from processor.core.errors import (
    BrokerUnavailable,
    DeliveryFailed,
    ProducerFenced,
    RebalanceInProgress,
    TransactionError,
)
from processor.ops.metrics import Metrics

logger = logging.getLogger(__name__)

FLUSH_SLICE = 0.2
"""Longest single flush call of a commit, in seconds (`stop_by` is read between them)."""
MIN_CALL = 0.5
"""Seconds every broker call of a commit gets, even past its deadline: enough for a
reachable broker to answer, short enough to bound a shutdown with an absent one."""


class OutputTooLarge(DeliveryFailed):
    """Every failed output was refused as too large (`DeliveryError.too_large`): sending
    it again cannot succeed. Nothing was committed (exactly-once: the transaction was
    aborted); the stage re-reads the uncommitted records one at a time to find their
    inputs and dead-letter them (reason `too-large`)."""

    def __init__(self, message: str, errors: list[DeliveryError]) -> None:
        super().__init__(message)
        self.errors = errors


def _failed(name: str, errors: list[DeliveryError]) -> DeliveryFailed:
    refused = sorted({e.topic for e in errors if e.not_authorized})
    if refused:
        return DeliveryFailed(
            f"stage {name}: not authorized to write to topic {', '.join(refused)} "
            f"({next(e.reason for e in errors if e.not_authorized)}): grant the stage's "
            f"principal WRITE on it; {len(errors)} outputs failed, their input offsets are "
            "not committed")
    if all(e.too_large for e in errors):
        sizes = ", ".join(f"{e.size} bytes to {e.topic}" for e in errors[:3])
        return OutputTooLarge(
            f"stage {name}: {len(errors)} outputs larger than their topic accepts "
            f"({sizes}): {errors[0].reason}", errors)
    return DeliveryFailed(
        f"stage {name}: {len(errors)} outputs failed ({errors[0].reason}); "
        "input offsets are not committed, the records will be processed again")


class HeldWork(Protocol):
    """Records a commit leaves for the next transaction: the retry holder's, or those in
    a concurrent handler's calls."""

    def first_offsets(self) -> dict[TopicPartition, int]: ...


class CommitParticipant(Protocol):
    """One more party to a stage's commits (a state store: `processor.runtime.stateful`).

    The strategy calls `prepare` before it makes anything durable (exactly-once: inside
    the open transaction, before the offsets join it; at-least-once: before the flush
    that the offset commit waits for), so whatever `prepare` produces with the stage's
    producer is committed with the offsets or not at all. `committed` follows a commit
    that succeeded; `aborted` a transaction aborted (its work is read again)."""

    def prepare(self, offsets: Mapping[TopicPartition, int]) -> None:
        """`offsets` (next to read) are about to be committed: produce what belongs to
        the records before them."""
        ...

    def committed(self) -> None:
        """The commit `prepare` was called for succeeded."""
        ...

    def aborted(self) -> None:
        """The open transaction was aborted: forget what was not committed."""
        ...


class CommitResult(enum.Enum):
    COMMITTED = "committed"
    """Everything handled so far is durable and its offsets are committed."""
    POSTPONED = "postponed"
    """Nothing was committed (outputs not yet acknowledged, a rebalance in the way, or
    nothing to commit); the stage tries again later."""
    ABORTED = "aborted"
    """Exactly-once: the transaction was aborted; the stage must re-read from `rewind_to`."""


class CommitStrategy(ABC):
    """How a stage commits. `rewind_to` is where each partition's uncommitted work
    began: the stage records the first offset it handles in a partition after a commit
    (exactly-once only), and re-reads from there after an abort."""

    transactional: bool = False

    def __init__(self, name: str, consumer: Consumer, producer: Producer,
                 metrics: Metrics) -> None:
        self.name = name
        self.consumer = consumer
        self.producer = producer
        self.metrics = metrics
        self.rewind_to: dict[TopicPartition, int] = {}
        self.stop_by: float | None = None
        """Set by a stopping stage: no broker call may last past this monotonic time."""
        self.participants: list[CommitParticipant] = []
        """Parties to every commit besides the offsets (state stores)."""

    def _end(self, timeout: float) -> float:
        end = time.monotonic() + timeout
        return end if self.stop_by is None else min(end, self.stop_by)

    def _left(self, end: float) -> float:
        """Seconds until `end`, or until `stop_by` if it came sooner since."""
        if self.stop_by is not None:
            end = min(end, self.stop_by)
        return max(0.0, end - time.monotonic())

    def _flush(self, end: float) -> int:
        """Flush in slices until everything is acknowledged or `end` (or `stop_by`)."""
        while True:
            left = self._left(end)
            remaining = self.producer.flush(min(FLUSH_SLICE, left))
            if remaining == 0 or left <= FLUSH_SLICE:
                return remaining

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open (never, at least once)."""
        return False

    def open(self) -> None:  # noqa: B027 - a no-op unless transactional
        """Called before the stage handles a batch."""

    @abstractmethod
    def commit(self, offsets: Mapping[TopicPartition, int], timeout: float) -> CommitResult:
        """Make the outputs durable and commit `offsets` (the next offsets to read)."""

    def abort(self, timeout: float | None = None) -> None:  # noqa: B027 - a no-op unless transactional
        """Give up the uncommitted outputs (exactly-once: abort the transaction, within
        `timeout` seconds, default 30, and `stop_by`)."""


class AtLeastOnce(CommitStrategy):
    """Flush, then commit the offsets: outputs are durable before their inputs are done."""

    def commit(self, offsets: Mapping[TopicPartition, int], timeout: float) -> CommitResult:
        t0 = time.perf_counter()
        end = self._end(timeout)
        for participant in self.participants:
            participant.prepare(offsets)
        remaining = self._flush(end)
        errors = self.producer.take_delivery_errors()
        if errors:
            raise _failed(self.name, errors)
        if remaining:
            # The broker is slow or away; librdkafka keeps retrying. Commit later.
            logger.warning(
                "stage %s: %d outputs not yet acknowledged after %.1fs; commit postponed",
                self.name, remaining, timeout,
            )
            return CommitResult.POSTPONED
        if offsets:
            try:
                self.consumer.commit(offsets, max(MIN_CALL, self._left(end)))
            except RebalanceInProgress as exc:
                # The group moved on under us; the revocation that follows commits
                # again, or the new owner re-reads (at-least-once allows that).
                logger.warning("stage %s: commit refused during a rebalance: %s",
                               self.name, exc)
                return CommitResult.POSTPONED
            except BrokerUnavailable as exc:
                # No answer in time: the outputs are durable, so committing later (or
                # re-reading after a restart) only risks duplicates.
                logger.warning("stage %s: commit not confirmed: %s", self.name, exc)
                return CommitResult.POSTPONED
        for participant in self.participants:
            participant.committed()
        self.metrics.commit_latency(time.perf_counter() - t0)
        return CommitResult.COMMITTED


class ExactlyOnce(CommitStrategy):
    """Outputs, dead letters and input offsets commit in one Kafka transaction.

    Records held for a retry (or in a concurrent handler's calls) at a commit belong to
    the next transaction, so after a commit `rewind_to` starts from the first held
    record of each holding partition.
    """

    transactional = True

    def __init__(self, name: str, consumer: Consumer, producer: Producer, metrics: Metrics,
                 held: HeldWork) -> None:
        super().__init__(name, consumer, producer, metrics)
        self.held = held
        self._open = False

    @property
    def in_transaction(self) -> bool:
        return self._open

    def open(self) -> None:
        if not self._open:
            self.producer.begin_transaction()
            self._open = True

    def commit(self, offsets: Mapping[TopicPartition, int], timeout: float) -> CommitResult:
        if not self._open:
            return CommitResult.POSTPONED
        t0 = time.perf_counter()
        end = self._end(timeout)
        producer = self.producer
        try:
            for participant in self.participants:
                participant.prepare(offsets)
            if offsets:
                producer.send_offsets_to_transaction(
                    offsets, self.consumer.group_metadata(), max(MIN_CALL, self._left(end))
                )
            self._flush(end)
            errors = producer.take_delivery_errors()
            if errors and all(e.too_large for e in errors):
                self.abort()
                raise _failed(self.name, errors)
            if errors:
                raise TransactionError(
                    f"{len(errors)} outputs of the transaction failed ({errors[0].reason})"
                )
            producer.commit_transaction(max(MIN_CALL, self._left(end)))
        except ProducerFenced:
            self._open = False
            raise
        except TransactionError as exc:
            logger.warning("stage %s: transaction failed, aborting and re-reading: %s",
                           self.name, exc)
            self.abort()
            return CommitResult.ABORTED
        self._open = False
        for participant in self.participants:
            participant.committed()
        self.rewind_to.clear()
        self.rewind_to.update(self.held.first_offsets())
        self.metrics.transaction_latency(time.perf_counter() - t0)
        return CommitResult.COMMITTED

    def abort(self, timeout: float | None = None) -> None:
        end = time.monotonic() + (30.0 if timeout is None else timeout)
        try:
            self.producer.abort_transaction(max(MIN_CALL, self._left(end)))
        finally:
            self._open = False
            for participant in self.participants:
                participant.aborted()
