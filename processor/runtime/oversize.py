"""Outputs refused as too large: finding their inputs without stalling the stage.

A record whose output is larger than its topic accepts is refused by the broker (in a
delivery report, after the record was produced) or by the client (in `produce`). The
commit that finds the refusal raises `OutputTooLarge`; nothing past it is committed
(at-least-once commits nothing, exactly-once aborts). `TooLargeRecovery` then re-reads
the uncommitted records and handles those with the key of a refused output (an output
keeps its input's key) one at a time: what precedes such a record is committed first,
then the record is handled and committed alone, so a refusal is pinned to its own input,
which is dead-lettered with reason `too-large` and committed. The other records go
through in batches, and once the records of the failed commit are passed the stage is
back to batches. It never commits past a record whose output failed, and never loops.

At-least-once, the failed commit's flush acknowledged every other output of the records
below its offsets (any other failure is fatal, not `OutputTooLarge`): those records are
skipped when re-read, unless their key is a suspect, so that the recovery duplicates no
output of theirs. Exactly-once aborted them with the transaction: all are handled again.

It works on the stage's own state (pending offsets, the commit strategy, the consumer),
as a part of the stage kept in its own module.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from processor.backends.abstract import Message, TopicPartition
from processor.core.errors import DeliveryFailed
from processor.runtime.commit import CommitResult, OutputTooLarge
from processor.runtime.dead_letters import Reason
from processor.runtime.host import StageHost

logger = logging.getLogger(__name__)


class TooLargeRecovery:
    """The stage's handling of too-large outputs (see the module documentation)."""

    def __init__(self, stage: StageHost) -> None:
        self.stage = stage
        # Partitions being re-read one suspect record at a time -> the offset (next to
        # read) up to which; and the keys of the refused outputs.
        self.singly: dict[TopicPartition, int] = {}
        self.suspects: set[bytes | None] = set()
        # At-least-once: partition -> the offset below which every output but the
        # suspects' was acknowledged by a failed commit's flush (the offsets it tried).
        self.delivered: dict[TopicPartition, int] = {}
        self.skipped = 0
        self._attempted: dict[TopicPartition, int] = {}

    def find(self, exc: OutputTooLarge, attempted: dict[TopicPartition, int]) -> None:
        """Outputs were refused as too large; their inputs are among the uncommitted
        records, and have the keys of the refused outputs (an output keeps its input's
        key). Re-read the uncommitted records (from the last commit) and handle those
        with such a key one at a time (`process`)."""
        stage = self.stage
        logger.warning("%s; re-reading the uncommitted records to dead-letter their inputs",
                       exc)
        singly = self.singly
        for tp, offset in stage.ledger.marks.items():
            singly[tp] = max(offset, singly.get(tp, 0))
        if stage.concurrent_calls:
            # A concurrent handler's outputs leave in order per key: a failed one may
            # belong to any record consumed, past the watermark too.
            for tp in stage.assigned:
                position = stage.consumer.position(tp)
                if position is not None and position >= 0:
                    singly[tp] = max(position, singly.get(tp, 0))
        self.suspects.update(e.key for e in exc.errors)
        if not stage.eos:
            delivered = self.delivered
            for tp, offset in attempted.items():
                delivered[tp] = max(offset, delivered.get(tp, 0))
        rewind_to = stage.commits.rewind_to
        if not stage.eos:  # exactly-once knows where its aborted transaction began
            assigned = sorted(stage.assigned)
            for tp, committed in stage.consumer.committed(assigned).items():
                rewind_to[tp] = (committed if committed is not None
                                 else stage.consumer.watermarks(tp)[0])
        stage.rewind()

    def process(self, messages: Sequence[Message]) -> None:
        """After too-large outputs: handle the re-read records, each with the key of a
        refused output on its own (what precedes it committed first, then it, then its
        commit), until the records of the failed commit are passed. A refused output is
        so pinned to its input, which is dead-lettered (`too-large`) and committed, and
        the stage goes on. Never commits past a record whose output failed."""
        stage = self.stage
        singly = self.singly
        timeout = stage.options.shutdown_timeout
        rest: list[Message] = []
        for i, msg in enumerate(messages):
            tp = TopicPartition(msg.topic(), msg.partition())
            end = singly.get(tp)
            if end is not None and msg.offset() + 1 >= end:
                del singly[tp]
            if (msg.offset() < self.delivered.get(tp, -1) and msg.key() not in self.suspects
                    and tp not in stage.retries):
                # Its outputs were acknowledged before the failed commit (at-least-once):
                # finished, not handled again. What precedes it is handled first, so that
                # the ledger's watermark passes no record unfinished.
                if rest:
                    stage.handle_now(rest)
                    rest = []
                if tp not in stage.retries:
                    stage.ledger.advance(tp, msg.offset() + 1)
                    self.skipped += 1
                    continue
            if end is None or msg.key() not in self.suspects:
                rest.append(msg)
                continue
            if rest:
                stage.handle_now(rest)
                rest = []
            # Make what precedes it durable, so that a refusal can only be its own.
            if (stage.ledger or stage.commits.in_transaction) and not self._settle(
                    messages[i:], timeout):
                return
            passed = stage.stats.passed
            stage.handle_now([msg])
            try:
                if not self._commit_one(timeout):  # exactly-once aborted: read it again
                    self._reread(messages[i:])
                    stage.rewind()
                    return
            except OutputTooLarge as exc:
                if any(e.topic == stage.options.dlq_topic for e in exc.errors):
                    stage.fail(exc)
                    raise
                if any(e.key != msg.key() for e in exc.errors):  # not its own alone
                    self._reread(messages[i:])
                    self.find(exc, self._attempted)
                    return
                if stage.stats.passed > passed:
                    stage.stats.passed -= 1  # it is counted as dead-lettered instead
                if stage.eos:  # the transaction was aborted with the outputs
                    stage.commits.rewind_to.clear()
                    stage.commits.rewind_to[tp] = msg.offset()
                    stage.ledger.rewound()
                    stage.commits.open()
                stage.dead_letter(msg, Reason.TOO_LARGE, exc)
                stage.ledger.advance(tp, msg.offset() + 1)
            if not self._settle(messages[i + 1:], timeout):
                return
        if rest:
            stage.handle_now(rest)
        if not singly:
            self.suspects.clear()
            self.delivered.clear()
            logger.info("stage %s: past the records of the too-large outputs (%d re-read "
                        "records already delivered were skipped)", stage.options.name,
                        self.skipped)
            self.skipped = 0

    def _settle(self, later: Sequence[Message], timeout: float) -> bool:
        """Commit what is pending now. False when the records in `later` must be read
        again: exactly-once aborted, or another output was refused as too large."""
        stage = self.stage
        try:
            if self._commit_one(timeout):
                return True
        except OutputTooLarge as exc:
            if any(e.topic == stage.options.dlq_topic for e in exc.errors):
                stage.fail(exc)
                raise
            self._reread(later)
            self.find(exc, self._attempted)
            return False
        self._reread(later)
        stage.rewind()
        return False

    def _reread(self, later: Sequence[Message]) -> None:
        stage = self.stage
        for msg in later:
            stage.commits.rewind_to.setdefault(TopicPartition(msg.topic(), msg.partition()),
                                              msg.offset())

    def _commit_one(self, timeout: float) -> bool:
        """Commit now, once the outputs are acknowledged; False if exactly-once aborted.
        Raises `OutputTooLarge` with the pending offsets kept, for the caller to use."""
        stage = self.stage
        while True:
            offsets = stage.ledger.committable(stage.assigned)
            self._attempted = offsets
            try:
                result = stage.commits.commit(offsets, timeout)
            except OutputTooLarge:
                raise
            except DeliveryFailed as exc:
                stage.fail(exc)  # never committed later, not even at shutdown
                raise
            if result is CommitResult.ABORTED:
                return False
            if result is CommitResult.COMMITTED:
                break
            if stage.stopping or not stage.producer.outstanding():
                return True  # acknowledged, not committed (a rebalance): commit later
        stage.last_commit = stage.clock()
        stage.stats.commits += 1
        stage.ledger.committed()
        return True
