"""The stage: poll -> decode -> handlers -> encode -> produce -> commit, on any backend.

Guarantees
----------
* **At-least-once** (default): input offsets are committed only after `flush()` reported
  every output of those records acknowledged. A crash replays at most the records since
  the last commit.
* **Exactly-once**: outputs, dead-letter records and the consumed offsets go into one
  Kafka transaction (`send_offsets_to_transaction`), the input is read committed. A failed
  transaction is aborted and its input re-read from the last committed offsets.

Per-partition order is kept: records of one partition are handled in offset order, and a
record waiting to be retried holds back the records after it in its partition (the
partition is paused while it waits, so the consumer keeps polling and stays in the group).

Bad input never stops the stage and is never lost: undecodable bytes, checksum mismatches
and invalid artifacts go to the dead-letter topic with headers saying why
(`processor.runtime.dead_letters`). Every consumed record is accounted for:
`consumed == produced_from + dropped + dead_lettered (+ waiting for retry)`.

The hot path runs once per record. It is one method with locals bound up front; counters
are plain ints, pushed to Prometheus once per batch; an artifact a handler returned
unchanged is passed through as its original bytes.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from processor.backends.abstract import Broker, Consumer, Message, Producer, TopicPartition
from processor.core.artifact import Artifact
from processor.core.errors import (
    ChecksumMismatch,
    DecodeError,
    DeliveryFailed,
    InvalidArtifact,
    ProcessorError,
    ProducerFenced,
    RebalanceInProgress,
    RetryableError,
    TransactionError,
)
from processor.core.handlers import DEFAULT_OUTPUT, Handler, Routed, outcomes
from processor.core.options import EXACTLY_ONCE, StageOptions
from processor.ops.logs import lifecycle
from processor.runtime.dead_letters import Reason, dead_letter_headers
from processor.serde.codec import Codec

if TYPE_CHECKING:
    from processor.ops.health import HealthState
    from processor.ops.metrics import StageMetrics

logger = logging.getLogger(__name__)

LATENCY_SAMPLE_EVERY = 16
"""Handler and end-to-end latency are observed for one record in this many."""


GC_THRESHOLDS = (20_000, 50, 100)
"""Collector thresholds while a stage runs (CPython's defaults are (700, 10, 10))."""


def tune_gc() -> None:
    """Make the garbage collector cheap for a stage's loop, once per process.

    The records of a batch are short-lived tuples and dicts without reference cycles:
    reference counting frees them, and frequent generation-0 collections only re-scan the
    batch in hand. Everything alive at start-up (modules, schemas, clients) is moved out
    of the collector's sight with `gc.freeze()`, and generation 0 is collected every
    20,000 allocations instead of every 700. The profile of the loop showed about a sixth
    of its time in the collector before this.
    """
    if gc.get_threshold() != GC_THRESHOLDS:
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)


class StageFailed(ProcessorError):
    """The stage stopped on an error its policy does not absorb; nothing was committed past it."""


@dataclass
class StageStats:
    """Running totals of one stage; every consumed record ends up in exactly one bucket."""

    consumed: int = 0
    produced: int = 0
    """Output records (a fan-out produces several per input)."""
    passed: int = 0
    """Inputs that produced at least one output."""
    dropped: int = 0
    dead_lettered: int = 0
    retried: int = 0
    failed: int = 0
    commits: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    started: float = field(default_factory=time.monotonic)
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def accounted(self) -> int:
        return self.passed + self.dropped + self.dead_lettered

    def rate(self, now: float | None = None) -> float:
        elapsed = (now if now is not None else time.monotonic()) - self.started
        return self.consumed / elapsed if elapsed > 0 else 0.0


class _Blocked:
    """Records of one partition held back behind a record waiting to be retried."""

    __slots__ = ("attempt", "records", "retry_at")

    def __init__(self, records: deque[Message], attempt: int, retry_at: float) -> None:
        self.records = records
        self.attempt = attempt
        self.retry_at = retry_at


class Stage:
    """One buffer stage on a backend. `run()` loops until `stop()`."""

    def __init__(
        self,
        options: StageOptions,
        broker: Broker,
        handler: Handler,
        *,
        codec: Codec | None = None,
        metrics: StageMetrics | None = None,
        health: HealthState | None = None,
        clock: Callable[[], float] = time.monotonic,
        consumer_settings: dict[str, object] | None = None,
        producer_settings: dict[str, object] | None = None,
    ) -> None:
        self.options = options
        self.broker = broker
        self.handler = handler
        self.codec = codec or Codec()
        self.metrics = metrics
        self.health = health
        self.clock = clock
        self.stats = StageStats(started=clock())
        self._eos = options.guarantee == EXACTLY_ONCE
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._outputs: dict[str, str | None] = {DEFAULT_OUTPUT: options.output_topic}
        self._outputs.update(options.outputs)

        txn_id = None
        if self._eos:
            txn_id = options.transactional_id or f"{options.name}-{options.group}"
        self.consumer: Consumer = broker.consumer(
            options.group,
            read_committed=self._eos,
            client_id=options.name,
            settings=consumer_settings,
        )
        self.producer: Producer = broker.producer(
            transactional_id=txn_id, client_id=options.name, settings=producer_settings
        )
        if self._eos:
            self.producer.init_transactions()

        # Offsets (next to read) of fully handled records, not yet committed.
        self._pending: dict[TopicPartition, int] = {}
        # EOS: first offset handled since the last commit, where to rewind on abort.
        self._txn_start: dict[TopicPartition, int] = {}
        self._in_txn = False
        self._in_flight = 0
        self._last_commit = clock()
        self._blocked: dict[TopicPartition, _Blocked] = {}
        self._assigned: set[TopicPartition] = set()
        self._sample = 0
        self._last_lag = 0.0
        # Partitions paused because the producer has too much unacknowledged output.
        self._throttled: set[TopicPartition] = set()

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe to the input topic (called by `run()`; separate for tests)."""
        self.consumer.subscribe(
            [self.options.input_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        lifecycle(
            logger, "start", stage=self.options.name, input=self.options.input_topic,
            output=self.options.output_topic, group=self.options.group,
            guarantee=self.options.guarantee, backend=self.broker.name,
        )

    def run(self, max_records: int | None = None, idle_timeout: float | None = None) -> StageStats:
        """Process until `stop()`, or until `max_records` were consumed, or until no record
        arrived for `idle_timeout` seconds; then drain, commit and close."""
        tune_gc()
        self.start()
        last_record = self.clock()
        try:
            while not self._stop.is_set():
                n = self.run_once()
                now = self.clock()
                if n:
                    last_record = now
                if max_records is not None and self.stats.consumed >= max_records:
                    break
                if idle_timeout is not None and not self._blocked and (
                    now - last_record >= idle_timeout
                ):
                    break
        finally:
            self._shutdown()
        return self.stats

    def stop(self) -> None:
        """Ask the loop to finish: it stops polling, drains, commits and closes."""
        self._stop.set()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def _shutdown(self) -> None:
        deadline = self.clock() + self.options.shutdown_timeout
        try:
            self._commit(deadline - self.clock())
        except ProcessorError:
            logger.exception("stage %s: final commit failed", self.options.name)
        finally:
            try:
                self.consumer.close()
            finally:
                self.producer.close()
                self._stopped.set()
                lifecycle(
                    logger, "stopped", stage=self.options.name, consumed=self.stats.consumed,
                    produced=self.stats.produced, dropped=self.stats.dropped,
                    dead_lettered=self.stats.dead_lettered,
                )

    # --- the loop --------------------------------------------------------------------

    def run_once(self) -> int:
        """One poll: returns how many records were consumed."""
        if self.health is not None:
            self.health.beat()
        if self._blocked:
            self._retry_due()
        self._flow_control()
        messages = self.consumer.consume(self.options.batch_size, self.options.poll_timeout)
        n = len(messages)
        if n:
            self._process(messages)
        now = self.clock()
        if self._pending and (
            now - self._last_commit >= self.options.commit_interval
            or self._in_flight >= self.options.max_in_flight
        ):
            self._commit()
        elif not self._pending:
            self._last_commit = now
        if self.metrics is not None and now - self._last_lag >= 5.0:
            self._last_lag = now
            self._report_lag()
        return n

    def _flow_control(self) -> None:
        """Pause every partition while too much output is unacknowledged; resume at half.

        The consumer keeps polling while paused, so the member stays in its group, and
        memory stays bounded however large the backlog of the input topic is.
        """
        outstanding = self.producer.outstanding()
        limit = self.options.max_in_flight
        if not self._throttled:
            if outstanding < limit:
                return
            self._throttled = {tp for tp in self._assigned if tp not in self._blocked}
            if self._throttled:
                self.consumer.pause(sorted(self._throttled))
                lifecycle(logger, "pause", partitions=self._throttled, stage=self.options.name,
                          reason="backpressure", unacknowledged=outstanding)
            else:
                self._throttled = {TopicPartition("", -1)}  # nothing assigned: a marker
            self.producer.poll(0)
            return
        self.producer.poll(0)
        if outstanding > limit // 2:
            return
        resume = sorted(tp for tp in self._throttled
                        if tp in self._assigned and tp not in self._blocked)
        self._throttled = set()
        if resume:
            self.consumer.resume(resume)
            lifecycle(logger, "resume", partitions=resume, stage=self.options.name,
                      reason="backpressure")

    def _process(self, messages: Sequence[Message]) -> None:
        """The hot path: every record of one batch."""
        stats = self.stats
        decode = self.codec.decode
        encode = self.codec.encode
        handler = self.handler
        produce = self.producer.produce
        outputs = self._outputs
        default_topic = outputs[DEFAULT_OUTPUT]
        pending = self._pending
        blocked = self._blocked
        eos = self._eos
        artifact_type = Artifact
        consumed = produced = passed = dropped = bytes_in = bytes_out = 0
        sample = self._sample
        handler_time = 0.0
        e2e: list[float] = []
        perf = time.perf_counter

        if eos and not self._in_txn:
            self._begin()

        # A batch comes mostly in runs of one partition: build its key once per run.
        tp = TopicPartition("", -1)
        for msg in messages:
            partition = msg.partition() or 0
            offset = msg.offset() or 0
            if partition != tp.partition or msg.topic() != tp.topic:
                tp = TopicPartition(msg.topic() or "", partition)
            if blocked and tp in blocked:
                blocked[tp].records.append(msg)
                continue
            if eos and tp not in self._txn_start:
                self._txn_start[tp] = offset
            consumed += 1
            value = msg.value() or b""
            bytes_in += len(value)
            try:
                artifact = decode(value)
            except ChecksumMismatch as exc:
                self._dead_letter(msg, Reason.CHECKSUM, exc)
                pending[tp] = offset + 1
                continue
            except DecodeError as exc:
                self._dead_letter(msg, Reason.DECODE, exc)
                pending[tp] = offset + 1
                continue

            sample += 1
            timed = sample % LATENCY_SAMPLE_EVERY == 0
            try:
                if timed:
                    t0 = perf()
                    result = handler(artifact)
                    handler_time = perf() - t0
                else:
                    result = handler(artifact)
            except RetryableError as exc:
                self._hold(tp, msg, exc, attempt=1)
                continue
            except InvalidArtifact as exc:
                self._dead_letter(msg, Reason.INVALID, exc)
                pending[tp] = offset + 1
                continue
            except Exception as exc:
                self._handler_failed(msg, exc)
                pending[tp] = offset + 1
                continue

            key = msg.key()
            if result is artifact:
                # Unchanged: pass the original bytes through, no re-encoding.
                if default_topic is None:
                    raise StageFailed(
                        f"stage {self.options.name} has no output topic for an artifact"
                    )
                produce(default_topic, value, key, msg.headers())
                produced += 1
                passed += 1
                bytes_out += len(value)
                if timed:
                    e2e.append(time.time() - artifact.timestamp / 1000.0)
            elif result is None:
                dropped += 1
            else:
                if type(result) is artifact_type:
                    pairs = [Routed(DEFAULT_OUTPUT, result)]
                else:
                    try:
                        pairs = outcomes(result)
                    except TypeError as exc:
                        self._handler_failed(msg, exc)
                        pending[tp] = offset + 1
                        continue
                if not pairs:
                    dropped += 1
                else:
                    headers = msg.headers()
                    for output, out in pairs:
                        out_topic = outputs.get(output)
                        if out_topic is None:
                            raise StageFailed(
                                f"stage {self.options.name}: a handler routed to output "
                                f"{output!r}, which is not configured (known: "
                                f"{', '.join(k or '<default>' for k in outputs)})"
                            )
                        data = value if out is artifact else encode(out)
                        produce(out_topic, data, key, headers)
                        bytes_out += len(data)
                    produced += len(pairs)
                    passed += 1
                    if timed:
                        e2e.append(time.time() - artifact.timestamp / 1000.0)
            pending[tp] = offset + 1

        self._sample = sample
        stats.consumed += consumed
        stats.produced += produced
        stats.passed += passed
        stats.dropped += dropped
        stats.bytes_in += bytes_in
        stats.bytes_out += bytes_out
        self._in_flight += produced
        metrics = self.metrics
        if metrics is not None:
            metrics.batch(len(messages))
            metrics.consumed(consumed, bytes_in)
            if produced:
                metrics.produced(default_topic or "", produced, bytes_out)
            if dropped:
                metrics.dropped(dropped)
            if handler_time:
                metrics.handler_latency(handler_time)
            for seconds in e2e:
                metrics.end_to_end_latency(max(0.0, seconds))
            metrics.in_flight(self._in_flight)

    # --- errors, retries, dead letters -----------------------------------------------

    def _dead_letter(
        self, msg: Message, reason: str, error: BaseException, attempts: int = 1
    ) -> None:
        dlq = self.options.dlq_topic
        if dlq is None:
            raise StageFailed(
                f"stage {self.options.name}: record {msg.topic()}[{msg.partition()}]@"
                f"{msg.offset()} must be dead-lettered ({reason}: {error}) but no "
                "dead-letter topic is configured; stopping without committing it"
            ) from error
        self.producer.produce(
            dlq,
            msg.value() or b"",
            msg.key(),
            dead_letter_headers(
                msg, stage=self.options.name, reason=reason, error=error, attempts=attempts
            ),
        )
        self.stats.dead_lettered += 1
        self.stats.dead_letter_reasons[reason] = self.stats.dead_letter_reasons.get(reason, 0) + 1
        self._in_flight += 1
        if self.metrics is not None:
            self.metrics.dead_lettered(reason, 1)
        logger.warning(
            "stage %s: dead-lettered %s[%s]@%s (%s): %s",
            self.options.name, msg.topic(), msg.partition(), msg.offset(), reason, error,
        )

    def _handler_failed(self, msg: Message, error: Exception) -> None:
        self.stats.failed += 1
        if self.metrics is not None:
            self.metrics.failed(1)
        if self.options.error_policy == "fail":
            raise StageFailed(
                f"stage {self.options.name}: handler failed on {msg.topic()}[{msg.partition()}]"
                f"@{msg.offset()}: {type(error).__name__}: {error}"
            ) from error
        self._dead_letter(msg, Reason.HANDLER_ERROR, error)

    def _hold(self, tp: TopicPartition, msg: Message, error: Exception, attempt: int) -> None:
        """Hold `msg` (and what follows it in its partition) back for a retry."""
        policy = self.options.retry
        if attempt >= policy.max_attempts:
            self._dead_letter(msg, Reason.RETRIES_EXHAUSTED, error, attempts=attempt)
            self._pending[tp] = (msg.offset() or 0) + 1
            return
        delay = policy.backoff(attempt)
        self.stats.retried += 1
        if self.metrics is not None:
            self.metrics.retried(1)
        self._blocked[tp] = _Blocked(deque([msg]), attempt, self.clock() + delay)
        self.consumer.pause([tp])
        lifecycle(logger, "pause", partitions=[tp], stage=self.options.name, reason="retry")
        if self.metrics is not None:
            self.metrics.paused(len(self._blocked))
        logger.info(
            "stage %s: retrying %s@%s in %.3fs (attempt %d of %d): %s",
            self.options.name, tp, msg.offset(), delay, attempt + 1, policy.max_attempts, error,
        )

    def _retry_due(self) -> None:
        now = self.clock()
        for tp, held in list(self._blocked.items()):
            if held.retry_at > now:
                continue
            records = held.records
            del self._blocked[tp]
            first = records.popleft()
            self.stats.consumed -= 1  # it is counted again when handled below
            try:
                self._process_one_retry(first, held.attempt, records)
            finally:
                if tp not in self._blocked and tp in self._assigned:
                    self.consumer.resume([tp])
                    lifecycle(logger, "resume", partitions=[tp], stage=self.options.name)
                if self.metrics is not None:
                    self.metrics.paused(len(self._blocked))

    def _process_one_retry(self, first: Message, attempt: int, rest: deque[Message]) -> None:
        tp = TopicPartition(first.topic() or "", first.partition() or 0)
        self._process([first])
        if tp in self._blocked:
            # It failed again: `_process` held it at attempt 1; carry the real count.
            held = self._blocked[tp]
            if attempt + 1 >= self.options.retry.max_attempts:
                del self._blocked[tp]
                self.stats.retried -= 1
                self._dead_letter(
                    first, Reason.RETRIES_EXHAUSTED,
                    RetryableError(f"gave up after {attempt + 1} attempts"), attempts=attempt + 1,
                )
                self._pending[tp] = (first.offset() or 0) + 1
                self._process(list(rest))
                return
            held.attempt = attempt + 1
            held.retry_at = self.clock() + self.options.retry.backoff(attempt + 1)
            held.records.extend(rest)
            return
        if rest:
            self._process(list(rest))

    # --- commits and transactions ----------------------------------------------------

    def _begin(self) -> None:
        self.producer.begin_transaction()
        self._in_txn = True

    def _commit(self, timeout: float | None = None) -> None:
        """Make everything handled so far durable, then commit its input offsets."""
        timeout = timeout if timeout is not None and timeout > 0 else 30.0
        offsets = {tp: off for tp, off in self._pending.items() if tp in self._assigned}
        t0 = time.perf_counter()
        if self._eos:
            if not self._in_txn:
                self._last_commit = self.clock()
                return
            try:
                if offsets:
                    self.producer.send_offsets_to_transaction(
                        offsets, self.consumer.group_metadata(), timeout
                    )
                self.producer.commit_transaction(timeout)
            except ProducerFenced:
                self._in_txn = False
                raise
            except TransactionError as exc:
                logger.warning(
                    "stage %s: transaction failed, aborting and re-reading: %s",
                    self.options.name, exc,
                )
                self._abort_and_rewind()
                return
            self._in_txn = False
            self._txn_start.clear()
            # Records held for a retry belong to the next transaction: an abort must
            # rewind to them.
            for tp, held in self._blocked.items():
                if held.records:
                    self._txn_start[tp] = held.records[0].offset() or 0
            if self.metrics is not None:
                self.metrics.transaction_latency(time.perf_counter() - t0)
        else:
            remaining = self.producer.flush(timeout)
            errors = self.producer.take_delivery_errors()
            if errors:
                raise DeliveryFailed(
                    f"stage {self.options.name}: {len(errors)} outputs failed "
                    f"({errors[0].reason}); input offsets are not committed, the records "
                    "will be processed again"
                )
            if remaining:
                # The broker is slow or away; librdkafka keeps retrying. Commit later.
                logger.warning(
                    "stage %s: %d outputs not yet acknowledged after %.1fs; commit postponed",
                    self.options.name, remaining, timeout,
                )
                self._last_commit = self.clock()
                return
            if offsets:
                try:
                    self.consumer.commit(offsets)
                except RebalanceInProgress as exc:
                    # The group moved on under us; the revocation that follows commits
                    # again, or the new owner re-reads (at-least-once allows that).
                    logger.warning("stage %s: commit refused during a rebalance: %s",
                                   self.options.name, exc)
                    self._last_commit = self.clock()
                    return
            if self.metrics is not None:
                self.metrics.commit_latency(time.perf_counter() - t0)
        self.stats.commits += 1
        self._pending.clear()
        self._in_flight = 0
        self._last_commit = self.clock()
        if self.metrics is not None:
            self.metrics.in_flight(0)

    def _abort_and_rewind(self) -> None:
        """EOS: abort the open transaction and re-read its input from where it began."""
        try:
            self.producer.abort_transaction()
        finally:
            self._in_txn = False
        for tp, offset in self._txn_start.items():
            if tp in self._assigned:
                self.consumer.seek(tp, offset)
        self._txn_start.clear()
        self._pending.clear()
        held = [tp for tp in self._blocked if tp in self._assigned]
        self._blocked.clear()
        if held:
            self.consumer.resume(held)
        self._in_flight = 0

    # --- rebalances ------------------------------------------------------------------

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        self._assigned.update(partitions)
        if self._throttled:
            self._throttled.update(partitions)
            self.consumer.pause(partitions)
        if self.health is not None:
            self.health.set_assigned(len(self._assigned))
        if self.metrics is not None:
            self.metrics.rebalance("assign", 1)
            self.metrics.assigned(len(self._assigned))
        lifecycle(logger, "assignment", partitions=partitions, stage=self.options.name)

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        lifecycle(logger, "revocation", partitions=partitions, stage=self.options.name)
        try:
            self._commit()
        except ProducerFenced:
            raise
        except ProcessorError as exc:
            logger.warning("stage %s: commit on revocation failed: %s", self.options.name, exc)
            if self._eos and self._in_txn:
                self._abort_and_rewind()
        self._forget(partitions)
        if self.metrics is not None:
            self.metrics.rebalance("revoke", 1)

    def _on_lost(self, partitions: list[TopicPartition]) -> None:
        lifecycle(logger, "lost", partitions=partitions, stage=self.options.name)
        if self._eos and self._in_txn:
            self._abort_and_rewind()
        self._forget(partitions)
        if self.metrics is not None:
            self.metrics.rebalance("lost", 1)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._assigned.discard(tp)
            self._pending.pop(tp, None)
            self._txn_start.pop(tp, None)
            self._blocked.pop(tp, None)
            self._throttled.discard(tp)
        if self.health is not None:
            self.health.set_assigned(len(self._assigned))
        if self.metrics is not None:
            self.metrics.forget_partitions([tp.partition for tp in partitions])
            self.metrics.assigned(len(self._assigned))
            self.metrics.paused(len(self._blocked))

    def _report_lag(self) -> None:
        assert self.metrics is not None
        for tp in list(self._assigned):
            try:
                position = self.consumer.position(tp)
                _, high = self.consumer.watermarks(tp, cached=True)
            except ProcessorError:
                continue
            if position is not None and position >= 0 and high >= 0:
                self.metrics.lag(tp.partition, max(0, high - position))
        if self.health is not None:
            self.health.set_broker_ok(True)

