"""The stage's events around its loop: failures, retries, commits and rebalances.

`Stage` (`processor.runtime.stage`) is the loop and its lifecycle; this base class holds
what happens to it besides handling records, on the same state:

* **failures and retries**: a record dead-lettered, a handler that failed (the error
  policy), a record held for a retry and handled again when it is due (`RetryHolder`);
* **commits**: the commit strategy asked to make the outputs durable and commit the
  pending offsets, and what its answer means (an abort re-reads from `rewind_to`; outputs
  refused as too large go to `TooLargeRecovery`);
* **rebalances**: assignment, revocation (commit first; with a concurrent handler, its
  calls in flight are drained first) and loss, and the consumer lag reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from processor.backends.abstract import Consumer, Message, Producer, TopicPartition
from processor.core.errors import DeliveryFailed, ProcessorError, ProducerFenced
from processor.core.options import StageOptions
from processor.ops.health import HealthState
from processor.ops.logs import lifecycle
from processor.ops.metrics import PAUSE_BACKPRESSURE, PAUSE_RETRY, Metrics
from processor.runtime.commit import CommitResult, CommitStrategy, OutputTooLarge
from processor.runtime.concurrent import ConcurrentLoop
from processor.runtime.dead_letters import DeadLetters, Reason
from processor.runtime.failures import PolicyStop, StageFailed
from processor.runtime.flow import Backpressure
from processor.runtime.ledger import OffsetLedger
from processor.runtime.oversize import TooLargeRecovery
from processor.runtime.retry import RetryHolder, RetryLog
from processor.runtime.stateful import StageState
from processor.runtime.stats import StageStats

__all__ = ["PolicyStop", "StageEvents", "StageFailed"]

logger = logging.getLogger(__name__)


class StageEvents:
    """Failures, retries, commits and rebalances of a `Stage` (which sets these parts)."""

    options: StageOptions
    consumer: Consumer
    producer: Producer
    commits: CommitStrategy
    retries: RetryHolder
    retry_log: RetryLog
    dead_letters: DeadLetters
    backpressure: Backpressure
    oversize: TooLargeRecovery
    concurrent: ConcurrentLoop | None
    state: StageState | None
    stats: StageStats
    metrics: Metrics
    health: HealthState
    clock: Callable[[], float]
    ledger: OffsetLedger
    eos: bool
    last_commit: float
    assigned: set[TopicPartition]
    _raise: BaseException | None
    _closing: bool

    def fail(self, error: BaseException) -> None:
        raise NotImplementedError  # in `Stage`

    def process(self, messages: Sequence[Message], previous_attempts: int = 0) -> None:
        raise NotImplementedError  # the loop's hot path, in `Stage`

    def handle_now(self, messages: Sequence[Message]) -> None:
        """Handle `messages` to the end before returning, on the stage's own record path
        (a concurrent handler's calls are waited for)."""
        if self.concurrent is not None:
            self.concurrent.handle_now(messages)
        else:
            self.process(messages)

    # --- errors, retries, dead letters -----------------------------------------------

    def dead_letter(
        self, msg: Message, reason: str, error: BaseException, attempts: int = 1
    ) -> None:
        if not self.dead_letters.send(msg, reason, error, attempts):
            self.fence(msg)
            raise StageFailed(
                f"stage {self.options.name}: record {msg.topic()}[{msg.partition()}]@"
                f"{msg.offset()} must be dead-lettered ({reason}: {error}) but no "
                "dead-letter topic is configured; stopping without committing it"
            ) from error
        self.ledger.wrote(1, 0)

    def handler_failed(self, msg: Message, error: Exception) -> None:
        self.stats.failed += 1
        self.metrics.failed(1)
        if self.options.error_policy == "fail":
            self.fence(msg)
            raise StageFailed(
                f"stage {self.options.name}: handler failed on {msg.topic()}[{msg.partition()}]"
                f"@{msg.offset()}: {type(error).__name__}: {error}"
            ) from error
        self.dead_letter(msg, Reason.HANDLER_ERROR, error)

    def fence(self, msg: Message) -> None:
        """`msg` failed: no commit of its partition may pass it."""
        self.ledger.fence(TopicPartition(msg.topic(), msg.partition()), msg.offset())

    def _hold(self, tp: TopicPartition, msg: Message, error: Exception, attempt: int) -> bool:
        """Attempt number `attempt` at `msg` raised `RetryableError`: hold it (and what
        follows it in its partition) back for a retry (False), or dead-letter it when
        that was the last attempt the policy allows (True: the record is finished)."""
        retries = self.retries
        if retries.exhausted(attempt):
            self.dead_letter(msg, Reason.RETRIES_EXHAUSTED, error, attempts=attempt)
            return True
        delay = retries.hold(tp, msg, attempt)
        self.stats.retried += 1
        self.metrics.retried(1)
        self.consumer.pause([tp])
        lifecycle(logger, "pause", partitions=[tp], stage=self.options.name, reason=PAUSE_RETRY)
        self._report_paused()
        self.retry_log.note(f"{tp}@{msg.offset()}", attempt, retries.policy.max_attempts,
                            delay, error)
        return False

    def _retry_due(self) -> None:
        """Handle again the held records whose retry is due, then the records behind them."""
        for tp, held in self.retries.due():
            records = held.records
            first = records.popleft()
            try:
                self.process([first], previous_attempts=held.attempt)
                again = self.retries.held.get(tp)
                if again is not None:
                    again.records.extend(records)  # it failed again: the rest waits on
                elif records:
                    self.process(list(records))
            finally:
                if tp not in self.retries and tp in self.assigned:
                    self._release(tp)
                self._report_paused()

    def _release(self, tp: TopicPartition) -> None:
        """A partition no longer held for a retry reads again, unless backpressure has
        paused the others: then it stays paused with them and resumes with them."""
        if self.backpressure.keep_paused(tp):
            return
        self.consumer.resume([tp])
        lifecycle(logger, "resume", partitions=[tp], stage=self.options.name,
                  reason=PAUSE_RETRY)

    def _report_paused(self) -> None:
        self.metrics.paused(PAUSE_BACKPRESSURE, self.backpressure.count(self.assigned))
        self.metrics.paused(PAUSE_RETRY, len(self.retries))

    # --- commits ---------------------------------------------------------------------

    def commit(self, timeout: float | None = None) -> None:
        """Make everything handled so far durable, then commit its input offsets.

        The offsets are the ledger's (`runtime/ledger.py`): watermarks of finished
        records, never past a fence. An output that failed raises `DeliveryFailed` and
        fences the stage (`fail`), so that no later commit (not a revocation's, not the
        one at shutdown) marks the records of the failed outputs done.

        `timeout` defaults to `shutdown_timeout`: a commit under way when a stop is asked
        for then ends by the shutdown deadline too."""
        if timeout is None or timeout <= 0:
            timeout = self.options.shutdown_timeout
        if self.ledger.failure is not None:
            return  # fenced: nothing may be committed any more
        offsets = self.ledger.committable(self.assigned)
        try:
            result = self.commits.commit(offsets, timeout)
        except OutputTooLarge as exc:
            if any(e.topic == self.options.dlq_topic for e in exc.errors):
                self.fail(exc)
                raise  # a dead letter too large for its topic: nowhere to put it
            self.oversize.find(exc, offsets)
            return
        except DeliveryFailed as exc:
            self.fail(exc)
            raise
        if result is CommitResult.ABORTED:
            self.rewind()
            return
        self.last_commit = self.clock()
        if result is CommitResult.POSTPONED:
            return
        self.stats.commits += 1
        self.ledger.committed()
        self.metrics.in_flight(0)

    def _abort_and_rewind(self) -> None:
        """Exactly-once: abort the open transaction and re-read its input."""
        try:
            self.commits.abort()
        finally:
            self.rewind()

    def rewind(self) -> None:
        """Exactly-once, after an abort: seek every partition back to where the aborted
        transaction's work began; what was held for a retry is read again too."""
        rewind_to = self.commits.rewind_to
        for tp, offset in rewind_to.items():
            if tp in self.assigned:
                self.consumer.seek(tp, offset)
        rewind_to.clear()
        self.ledger.rewound()
        if self.concurrent is not None:
            self.concurrent.discard()
        for tp in self.retries.clear():
            if tp in self.assigned:
                self._release(tp)
        self.metrics.in_flight(0)
        self._report_paused()

    # --- rebalances ------------------------------------------------------------------

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        if self.state is not None and self.ledger.failure is None:
            # Each store catches up with its changelog before a record of its partition
            # is handled. A failure fails the stage (raised by the loop next).
            try:
                self.state.assign(self.consumer, partitions)
            except BaseException as exc:
                self.fail(exc)
                self._raise = exc
        self.assigned.update(partitions)
        if self.backpressure.active:
            self.backpressure.assigned(partitions)
            self._report_paused()
        self.health.set_assigned(len(self.assigned))
        self.metrics.rebalance("assign", 1)
        self.metrics.assigned(len(self.assigned))
        lifecycle(logger, "assignment", partitions=partitions, stage=self.options.name)

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        """Partitions taken away (eager: all of them; cooperative-sticky: some, the
        others carry on): drain their calls in flight (bounded), commit up to the fence,
        forget them. A failed output or a record the error policy stops on, met here,
        fails the stage (the loop raises it as soon as the consumer returns): it must
        not be swallowed while the kept partitions carry on."""
        lifecycle(logger, "revocation", partitions=partitions, stage=self.options.name)
        if self.ledger.failure is None and not self._closing:
            try:
                if self.concurrent is not None:
                    self.concurrent.drain(self.options.drain_timeout, partitions)
                self.commit()
            except ProducerFenced as exc:
                self.fail(exc)
                self._raise = exc
            except (DeliveryFailed, StageFailed) as exc:
                self.fail(exc)
                self._raise = exc
            except ProcessorError as exc:
                logger.warning("stage %s: commit on revocation failed: %s",
                               self.options.name, exc)
                if self.commits.in_transaction:
                    self._abort_and_rewind()
        self._forget(partitions, committed=self.ledger.failure is None)
        self.metrics.rebalance("revoke", 1)

    def _on_lost(self, partitions: list[TopicPartition]) -> None:
        lifecycle(logger, "lost", partitions=partitions, stage=self.options.name)
        if self.commits.in_transaction:
            self._abort_and_rewind()
        self._forget(partitions)
        self.metrics.rebalance("lost", 1)

    def _forget(self, partitions: list[TopicPartition], committed: bool = False) -> None:
        """`committed`: everything handled in `partitions` was committed (a revocation
        of a sound stage), so their state stores may be checkpointed."""
        if self.state is not None:
            self.state.forget(partitions, checkpoint=committed)
        rewind_to = self.commits.rewind_to
        for tp in partitions:
            self.assigned.discard(tp)
            self.oversize.singly.pop(tp, None)
            rewind_to.pop(tp, None)
        self.ledger.forget(partitions)
        self.retries.forget(partitions)
        if self.concurrent is not None:
            self.concurrent.discard(partitions)
        self.backpressure.forget(partitions)
        self.health.set_assigned(len(self.assigned))
        self.metrics.forget_partitions([tp.partition for tp in partitions])
        self.metrics.assigned(len(self.assigned))
        self._report_paused()

    def _report_lag(self) -> None:
        """The lag of every assigned partition, including one not read yet (no position:
        nothing committed, nothing fetched), whose lag is its whole retained range, and
        one whose end the client has not learnt yet (asked of the broker, briefly)."""
        for tp in list(self.assigned):
            try:
                position = self.consumer.position(tp)
                low, high = self.consumer.watermarks(tp, cached=True)
                if high < 0 or position is None or position < 0:
                    low, high = self.consumer.watermarks(tp, timeout=1.0)
            except ProcessorError:
                continue
            start = position if position is not None and position >= 0 else low
            if high >= 0 and start >= 0:
                self.metrics.lag(tp.partition, max(0, high - start))
