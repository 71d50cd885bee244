"""The stage: poll -> decode -> handlers -> encode -> produce -> commit, on any backend.

This module is the loop and its lifecycle. Its parts live beside it:

* `processor.runtime.commit`: the commit strategies. **At-least-once** (default) commits
  input offsets only after `flush()` reported every output of those records
  acknowledged; a crash replays at most the records since the last commit.
  **Exactly-once** puts outputs, dead letters and the consumed offsets into one Kafka
  transaction and reads committed; a failed transaction is aborted and its input re-read
  from where it began.
* `processor.runtime.retry`: the retry holder. Per-partition order is kept: a record
  waiting to be retried holds back the records after it in its partition (the partition
  is paused while it waits, so the consumer keeps polling and stays in the group).
* `processor.runtime.dead_letters`: bad input never stops the stage and is never lost;
  undecodable bytes, checksum mismatches and invalid artifacts go to the dead-letter topic
  with headers saying why.
* `processor.runtime.stats`: the running totals. Every consumed record is accounted for:
  `consumed == passed + dropped + dead_lettered (+ waiting for retry)`.
* `processor.runtime.stage_events`: the base class `StageEvents`, what happens besides
  handling records: dead letters and failed handlers, retries, commits, rebalances.
* `processor.runtime.concurrent`: async, threaded and batch handlers, which take the
  place of `process` (calls in flight, outputs in order per key or per partition).
* `processor.runtime.build.build_stage`: the one way to assemble a stage from settings.

The hot path (`process`) runs once per record. It is one method with locals bound up
front; counters are plain ints, pushed to the metrics once per batch (`Metrics`, a no-op
unless given); an artifact a handler returned unchanged is passed through as its
original bytes.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import cast

from processor.backends.abstract import Broker, Consumer, Message, Producer, TopicPartition
from processor.core.artifact import Artifact
from processor.core.errors import (
    BackendError,
    ChecksumMismatch,
    DecodeError,
    DeliveryFailed,
    InvalidArtifact,
    ProcessorError,
    RetryableError,
    SchemaError,
    SecurityError,
)
from processor.core.handlers import DEFAULT_OUTPUT, AnyHandler, Handler, outcomes
from processor.core.options import EXACTLY_ONCE, StageOptions
from processor.ops.health import HealthState
from processor.ops.logs import lifecycle
from processor.ops.metrics import (
    LATENCY_SAMPLE_EVERY,
    Metrics,
    NullMetrics,
)
from processor.ops.tracing import NULL_TRACER, StageTracing, Tracer
from processor.runtime.commit import (
    AtLeastOnce,
    CommitResult,
    CommitStrategy,
    ExactlyOnce,
)
from processor.runtime.concurrent import ConcurrentLoop, runs_concurrently
from processor.runtime.dead_letters import DeadLetterLimit, DeadLetters, Reason
from processor.runtime.deadline import DeadlineHandler
from processor.runtime.emit import Emitter
from processor.runtime.failures import PolicyStop, StageFailed
from processor.runtime.flow import Backpressure
from processor.runtime.ledger import OffsetLedger
from processor.runtime.oversize import TooLargeRecovery
from processor.runtime.probe import BrokerProbe
from processor.runtime.retry import RetryHolder, RetryLog
from processor.runtime.ring import ring_parts
from processor.runtime.stage_events import StageEvents
from processor.runtime.stateful import StageState, check_stateful, is_stateful
from processor.runtime.stats import StageStats, report_batch
from processor.serde.codec import Codec
from processor.serde.wire import WireCodec

__all__ = ["LATENCY_SAMPLE_EVERY", "PolicyStop", "Stage", "StageFailed", "StageStats", "tune_gc"]

logger = logging.getLogger(__name__)

LAG_REPORT_INTERVAL = 5.0
"""Seconds between two reports of the consumer lag."""

GC_THRESHOLDS = (20_000, 50, 100)
"""Collector thresholds while a stage runs (CPython's defaults are (700, 10, 10))."""

CLOSE_FLOOR = 0.5
"""Seconds each client gets to close even when the shutdown deadline has passed."""

LOOP_COMMIT_FLOOR = 2.0
"""Seconds an at-least-once commit made by the loop (every `commit_interval`) may wait
at least; it waits at most max(this, 2 x commit_interval), far below `shutdown_timeout`.

While it waits, this thread neither polls nor serves rebalance callbacks, so a slow or
absent coordinator would hold the whole group up. A commit given up is made again at the
next interval, or by the revocation; the outputs are already acknowledged by then, so
waiting less only risks re-reading, never losing."""

_NO_PARTITION = TopicPartition("", -1)


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


class Stage(StageEvents):
    """One buffer stage on a backend. `run()` loops until `stop()`.

    Build it with `processor.runtime.build.build_stage`; the constructor takes the parts
    ready-made. `metrics` defaults to `NullMetrics` (nothing reported), `health` to a
    fresh `HealthState` and `tracer` to `NULL_TRACER` (nothing traced, nothing of
    OpenTelemetry loaded; `processor.ops.tracing`).
    """

    def __init__(
        self,
        options: StageOptions,
        broker: Broker,
        handler: AnyHandler,
        *,
        codec: WireCodec | Codec | None = None,
        metrics: Metrics | None = None,
        health: HealthState | None = None,
        clock: Callable[[], float] = time.monotonic,
        consumer_settings: Mapping[str, object] | None = None,
        producer_settings: Mapping[str, object] | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.options = options
        self.broker = broker
        # Records carry their writer schema's identity (`processor.serde.wire`).
        self.codec = codec if isinstance(codec, WireCodec) else WireCodec(codec)
        self.metrics: Metrics = metrics if metrics is not None else NullMetrics()
        self.health = health if health is not None else HealthState(clock=clock)
        self.tracer: Tracer = tracer if tracer is not None else NULL_TRACER
        # None unless traced: the record paths check it once per batch.
        self.tracing: StageTracing | None = self.tracer.stage(options.name, options.group)
        self._deadline: DeadlineHandler | None = None
        concurrent = runs_concurrently(handler, options)
        stateful = is_stateful(handler, options)
        if stateful:
            check_stateful(options, concurrent)
        if options.handler_timeout is not None and not concurrent:
            self._deadline = DeadlineHandler(cast(Handler, handler), options.handler_timeout,
                                             self.health, options.name)
            handler = self._deadline
        self.handler = cast(Handler, handler)
        if self.tracing is not None:
            # Latency observations carry the trace of the record they timed (exemplars).
            self.metrics = self.tracing.exemplars(self.metrics)
            if not concurrent:
                self.handler = self.tracing.identified(self.handler)
        self.clock = clock
        self.stats = StageStats(started=clock())
        self.eos = options.guarantee == EXACTLY_ONCE
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self.outputs: dict[str, str | None] = {DEFAULT_OUTPUT: options.output_topic}
        self.outputs.update(options.outputs)

        txn_id = None
        if self.eos:
            txn_id = options.transactional_id or f"{options.name}-{options.group}"
        self.consumer: Consumer = broker.consumer(
            options.group,
            read_committed=self.eos,
            client_id=options.name,
            settings=consumer_settings,
        )
        self.producer: Producer = broker.producer(
            transactional_id=txn_id, client_id=options.name, settings=producer_settings
        )
        if options.max_hops is not None:  # it closes a ring: count the passes
            self.consumer, self.codec = ring_parts(self.consumer, self.codec,
                                                   options.max_hops)
        # Keyed state (`runtime/stateful.py`); None: a stateless stage, whose record path
        # does not change.
        self.state: StageState | None = None
        if stateful:
            self.state = StageState(options, broker, self.producer, self.metrics,
                                    eos=self.eos)
            self.handler = self.state.wrap(self.handler)
        self.emitter = Emitter(options.name, self.codec, self.producer, self.outputs)
        self.retries = RetryHolder(options.retry, clock)
        self.retry_log = RetryLog(options.name)
        self.dead_letters = DeadLetters(options.name, options.dlq_topic, self.producer,
                                        self.stats, self.metrics)
        self.dlq_limit = DeadLetterLimit(options.name, options.dlq_max_share,
                                         options.dlq_window, options.dlq_min_records, clock)
        # After outputs were refused as too large: partition -> the offset up to which
        # records are handled one at a time (`runtime/oversize.py`).
        self.oversize = TooLargeRecovery(self)
        self.commits: CommitStrategy
        if self.eos:
            self.producer.init_transactions()
            self.commits = ExactlyOnce(options.name, self.consumer, self.producer,
                                       self.metrics, self.retries)
        else:
            self.commits = AtLeastOnce(options.name, self.consumer, self.producer,
                                       self.metrics)
        if self.state is not None:
            self.commits.participants.append(self.state)

        # The one writer of commit positions (`runtime/ledger.py`).
        self.ledger = OffsetLedger()
        self._raise: BaseException | None = None
        """A fatal error met inside a rebalance callback, raised by the loop next."""
        self._closing = False
        self.last_commit = clock()
        # At least once only: a transaction's commit given up midway is not simply
        # made again later, so exactly-once keeps the full bound.
        self._loop_commit_bound = options.shutdown_timeout if self.commits.transactional \
            else min(options.shutdown_timeout,
                     max(LOOP_COMMIT_FLOOR, 2 * options.commit_interval))
        self.assigned: set[TopicPartition] = set()
        self.sample = 0
        self._last_lag = clock()
        # An async, threaded or batch handler (`runtime/concurrent.py`); None: the loop's
        # own path (`process`) runs the handler.
        self.concurrent: ConcurrentLoop | None = None
        if concurrent:
            self.concurrent = ConcurrentLoop(self, handler)
            if isinstance(self.commits, ExactlyOnce):
                self.commits.held = self.concurrent
        self.backpressure = Backpressure(
            options.name, self.consumer, self.producer, options.max_in_flight,
            extra=None if self.concurrent is None else self.concurrent.inflight.__len__,
            byte_limit=options.max_in_flight_bytes,
            unacknowledged_bytes=lambda: self.ledger.produced_bytes)
        self.probe = BrokerProbe(options.name, self.consumer, self.health,
                                 lambda: self.assigned)

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe to the input topic (called by `run()`; separate for tests)."""
        self.consumer.subscribe(
            list(self.options.input_topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self.probe.start()
        lifecycle(
            logger, "start", stage=self.options.name, input=self.options.input_topic,
            output=self.options.output_topic, group=self.options.group,
            guarantee=self.options.guarantee, backend=self.broker.name,
        )

    def run(self, max_records: int | None = None, idle_timeout: float | None = None) -> StageStats:
        """Process until `stop()`, or until `max_records` were consumed, or until no record
        arrived for `idle_timeout` seconds; then drain, commit and close.

        A fatal error (see `fail`) is raised once the stage has aborted and closed its
        clients: nothing handled since the last commit is committed after it."""
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
                if idle_timeout is not None and not self.retries and not (
                    self.concurrent is not None and self.concurrent.busy) and (
                    now - last_record >= idle_timeout
                ):
                    break
        finally:
            self.close()
        return self.stats

    def stop(self) -> None:
        """Ask the loop to finish: it stops polling, drains, commits and closes, all of it
        within `shutdown_timeout` seconds from now (a commit under way is cut short)."""
        self._set_stop_by()
        self.probe.stop()
        self._stop.set()

    def fail(self, error: BaseException) -> None:
        """A fatal error: the close that follows aborts instead of draining.

        A failed output (`DeliveryFailed`: which record it belonged to is unknown) fences
        every partition at its last commit. Any other error froze the ledger where it
        stands: the records finished before it may still be committed, at least once,
        once their outputs are acknowledged; nothing finishing after it counts."""
        if self.ledger.failure is None:
            why = f"{type(error).__name__}: {error}"
            if isinstance(error, DeliveryFailed):
                self.ledger.fence_all(why)
            else:
                self.ledger.freeze(why)
            # Logged when it happens, so that the lines of the stop that follow (the
            # revocation, "stopped") read as its consequence, not as a normal stop.
            logger.error("stage %s: stopping on a fatal error; nothing past it is "
                         "committed: %s", self.options.name, why)

    @property
    def concurrent_calls(self) -> bool:
        """Whether the handler runs through the concurrent path."""
        return self.concurrent is not None

    @property
    def stopping(self) -> bool:
        """Whether a stop was asked for."""
        return self._stop.is_set()

    @property
    def failed(self) -> bool:
        """Whether a fatal error stopped the stage."""
        return self.ledger.failure is not None

    def _set_stop_by(self) -> float:
        if self.commits.stop_by is None:
            self.commits.stop_by = time.monotonic() + self.options.shutdown_timeout
            # A produce waiting for room in a full queue gives up by then too.
            self.producer.set_deadline(self.commits.stop_by)
        return self.commits.stop_by

    def wait_stopped(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def uncommitted(self) -> str:
        """What a stop now would leave uncommitted (re-read after a restart), in words."""
        text = self.ledger.describe()
        if self.concurrent is not None and self.concurrent.busy:
            text += f"; {len(self.concurrent.inflight)} record(s) in handler calls"
        if self.commits.in_transaction:
            text += "; a transaction open (the broker aborts it)"
        return text

    def close(self) -> None:
        """End the stage: all of it within `shutdown_timeout` (counted from `stop()`, or
        from now); each client still gets a short moment (`CLOSE_FLOOR`) after an earlier
        step used the time up. `run()` calls it on its way out; a caller driving
        `run_once()` calls it itself.

        * After a fatal error (`fail`): abort. The open transaction is aborted, the calls
          in flight are cancelled, nothing is drained and nothing committed.
        * Otherwise, a graceful stop: the calls in flight drain (up to `drain_timeout`),
          then what is finished is committed, up to the ledger's fences. An error on the
          way (a failed output, a record the error policy stops on) makes it an abort,
          and is raised once the clients are closed."""
        stop_by = self._set_stop_by()

        def left() -> float:
            return max(CLOSE_FLOOR, stop_by - time.monotonic())

        error: BaseException | None = None
        if not self.failed:
            try:
                if self.concurrent is not None:
                    self.concurrent.drain(min(self.options.drain_timeout, left()))
                if not self.failed:
                    self.commit(left())
            except BaseException as exc:  # raised below, once the clients are closed
                self.fail(exc)
                error = exc
        # From here on a revocation (in the consumer's close) commits nothing more: the
        # final commit is made, or the stage failed.
        self._closing = True
        try:
            if self.failed:
                self._abort(left())
        finally:
            self.probe.close()  # before the consumer's handle goes
            try:
                self.consumer.close(left())
            except BackendError as exc:
                logger.warning("stage %s: closing the consumer: %s", self.options.name, exc)
            finally:
                # One thread owns the shutdown: a revocation still running on the close's
                # helper thread is waited for (its broker calls end by the deadline)
                # before the producer and the executor go.
                if not self.consumer.wait_callbacks(left()):
                    logger.warning("stage %s: a rebalance callback is still running after "
                                   "the consumer's close; closing the producer anyway",
                                   self.options.name)
                try:
                    self.producer.close(left())
                except BackendError as exc:
                    logger.warning("stage %s: closing the producer: %s",
                                   self.options.name, exc)
                finally:
                    if self.concurrent is not None:
                        self.concurrent.close()  # after the revocation in the close
                    if self.state is not None:
                        self.state.close()
                    if self.tracing is not None:
                        self.tracing.flush(min(CLOSE_FLOOR * 4, left()))
                    if self.ledger or self.failed:
                        logger.warning("stage %s: stopped with %s; those records will be "
                                       "read again", self.options.name, self.uncommitted())
                    self._stopped.set()
                    lifecycle(
                        logger, "stopped", stage=self.options.name,
                        consumed=self.stats.consumed, produced=self.stats.produced,
                        dropped=self.stats.dropped, dead_lettered=self.stats.dead_lettered,
                        **({"failed": self.ledger.failure} if self.failed else {}),
                    )
        if error is not None:
            raise error

    def _abort(self, timeout: float) -> None:
        """After a fatal error: cancel the calls in flight and abort the open transaction
        (bounded by `timeout`). At least once, the records finished before the error
        (up to the fences) are committed if all outputs so far are acknowledged."""
        if self.concurrent is not None:
            self.concurrent.discard()
        if not self.commits.transactional:
            offsets = self.ledger.committable(self.assigned)
            if offsets:
                try:
                    if self.commits.commit(offsets, timeout) is CommitResult.COMMITTED:
                        self.ledger.committed()
                        self.stats.commits += 1
                except ProcessorError as exc:
                    logger.warning("stage %s: nothing committed after the error: %s",
                                   self.options.name, exc)
            return
        if self.commits.in_transaction:
            try:
                self.commits.abort(timeout)
            except ProcessorError as exc:
                # The broker aborts it anyway once transaction.timeout.ms passes, or when
                # the next instance with this transactional id starts.
                logger.warning("stage %s: aborting the transaction: %s",
                               self.options.name, exc)

    # --- the loop --------------------------------------------------------------------

    def run_once(self) -> int:
        """One poll: returns how many records were consumed. Any exception it raises is
        fatal (but a `PolicyStop`): the stage is failed (`fail`) before it propagates,
        so `close()` aborts."""
        try:
            return self._turn()
        except PolicyStop:
            raise  # a graceful stop: what is finished is committed by `close()`
        except BaseException as exc:
            self.fail(exc)
            raise

    def _turn(self) -> int:
        self.health.beat()
        if self.retries:
            self._retry_due()
        if self.backpressure.check(self.assigned, self.retries.held):
            self._report_paused()
        if self.concurrent is not None and not self.oversize.singly:
            n = self.concurrent.turn()
        else:
            messages = self.consumer.consume(self.options.batch_size,
                                             self.options.poll_timeout)
            if self._raise is not None:
                raise self._raise
            n = len(messages)
            if n:
                self.metrics.batch(n)
                if self.oversize.singly:
                    self.oversize.process(messages)
                else:
                    self.process(messages)
        if self._raise is not None:
            raise self._raise
        if n:
            stats = self.stats
            stop = self.dlq_limit.check(stats.consumed, stats.dead_lettered,
                                        stats.dead_letter_reasons)
            if stop is not None:
                raise PolicyStop(stop)
        else:
            # Idle: serve the producer's events (delivery reports, errors, librdkafka
            # statistics), which a busy stage serves when it flushes at each commit.
            self.producer.poll(0)
        now = self.clock()
        ledger = self.ledger
        if ledger.marks and (
            now - self.last_commit >= self.options.commit_interval
            or ledger.produced >= self.options.max_in_flight
            or ledger.produced_bytes >= self.options.max_in_flight_bytes
        ):
            self.commit(self._loop_commit_bound)
        elif not ledger.marks:
            self.last_commit = now
        if now - self._last_lag >= LAG_REPORT_INTERVAL:
            self._last_lag = now
            self._report_lag()
        hung = (self._deadline.hung if self._deadline is not None
                else self.concurrent.hung if self.concurrent is not None else None)
        if hung:
            raise PolicyStop(f"stage {self.options.name}: {hung}")
        return n

    def process(self, messages: Sequence[Message], previous_attempts: int = 0) -> None:
        """The hot path: every record of one batch (traced: `_process_traced`).

        `previous_attempts` > 0 means `messages` is one record handled again after that
        many failed attempts (it was counted as consumed the first time)."""
        if self.state is not None:  # the state follows the record being handled
            messages = self.state.track(messages)
        if self.tracing is not None:
            self._process_traced(self.tracing, messages, previous_attempts)
        else:
            self._records(messages, previous_attempts)

    def _process_traced(self, tracing: StageTracing, messages: Sequence[Message],
                        previous_attempts: int) -> None:
        """`process` with tracing on: each record in a span of its own (current while it
        is handled), handed on as a `TracedMessage` whose headers carry the span's
        context into its outputs and dead letter; the span ends with the outcome.
        Records of traces not sampled get no span: each run of them is handled as one
        batch (`StageTracing.unsampled`, `quietly`; one by one in a stateful stage)."""
        held = self.retries.held
        records = self._records
        stats = self.stats
        unsampled = tracing.unsampled
        quiet: list[Message] = []
        # Keyed state follows the record this loop is at (`StageState.track`): a stateful
        # stage handles each record as the loop reaches it.
        one_by_one = self.state is not None
        for msg in messages:
            plain = unsampled(msg)
            if plain is not None:
                if one_by_one:
                    tracing.quietly(partial(records, [plain], previous_attempts))
                else:
                    quiet.append(plain)
                continue
            if quiet:
                tracing.quietly(partial(records, quiet, previous_attempts))
                quiet = []
            if held and TopicPartition(msg.topic(), msg.partition()) in held:
                # Behind a record waiting for its retry: its span starts when it is
                # handled (`_retry_due`).
                records([msg])
                continue
            traced = tracing.start(msg, previous_attempts)
            tracing.run(traced, stats, partial(records, [traced], previous_attempts),
                        previous_attempts)
        if quiet:
            tracing.quietly(partial(records, quiet, previous_attempts))

    def _records(self, messages: Sequence[Message], previous_attempts: int = 0) -> None:
        """The loop's own record path (see `process`)."""
        stats = self.stats
        decode = self.codec.decode
        encode = self.codec.encode
        out_headers = self.codec.headers
        # False for a stage that wraps plain input or writes plain payloads.
        passthrough = self.codec.passthrough
        wrap = self.codec.wrap
        handler = self.handler
        produce = self.producer.produce
        outputs = self.outputs
        emit_pairs = self.emitter.pairs
        default_topic = outputs[DEFAULT_OUTPUT]
        # Partition -> offset after its last finished record in this batch; handed to
        # the ledger once, at the end (a batch cut short by a fatal error hands nothing).
        pending: dict[TopicPartition, int] = {}
        held = self.retries.held
        eos = self.eos
        rewind_to = self.commits.rewind_to
        artifact_type = Artifact
        consumed = produced = passed = dropped = bytes_in = bytes_out = 0
        # Outputs to topics other than the default one: topic -> [records, bytes].
        routed: dict[str, list[int]] = {}
        sample = self.sample
        handler_times: list[float] = []
        e2e: list[float] = []
        perf = time.perf_counter
        wall = time.time

        if eos:
            self.commits.open()

        # A batch comes mostly in runs of one partition: build its key once per run.
        tp = _NO_PARTITION
        try:
            for msg in messages:
                partition = msg.partition()
                offset = msg.offset()
                if partition != tp.partition or msg.topic() != tp.topic:
                    tp = TopicPartition(msg.topic(), partition)
                if held and tp in held:
                    held[tp].records.append(msg)  # behind a record waiting for its retry
                    continue
                if eos and tp not in rewind_to:
                    rewind_to[tp] = offset
                consumed += 1
                value = msg.value() or b""
                headers = msg.headers()
                bytes_in += len(value)
                try:
                    artifact = decode(value, headers) if passthrough else wrap(msg)
                except SchemaError as exc:
                    self.dead_letter(msg, Reason.SCHEMA, exc)
                    pending[tp] = offset + 1
                    continue
                except ChecksumMismatch as exc:
                    self.dead_letter(msg, Reason.CHECKSUM, exc)
                    pending[tp] = offset + 1
                    continue
                except DecodeError as exc:  # HopsExceeded too: a ring's (runtime/ring.py)
                    self.dead_letter(msg, getattr(exc, "reason", Reason.DECODE), exc)
                    pending[tp] = offset + 1
                    continue

                sample += 1
                timed = sample % LATENCY_SAMPLE_EVERY == 0
                try:
                    if timed:
                        t0 = perf()
                        result = handler(artifact)
                        handler_times.append(perf() - t0)
                    else:
                        result = handler(artifact)
                except RetryableError as exc:
                    if self._hold(tp, msg, exc, previous_attempts + 1):
                        pending[tp] = offset + 1  # dead-lettered: retries exhausted
                    continue
                except InvalidArtifact as exc:
                    self.dead_letter(msg, Reason.INVALID, exc)
                    pending[tp] = offset + 1
                    continue
                except SecurityError as exc:  # a security policy refused it (docs/security.md)
                    self.dead_letter(msg, Reason.of_security(exc), exc)
                    pending[tp] = offset + 1
                    continue
                except Exception as exc:
                    self.handler_failed(msg, exc)
                    pending[tp] = offset + 1
                    continue
                except BaseException as exc:
                    # CancelledError, SystemExit, KeyboardInterrupt out of a handler: no
                    # policy absorbs it; the stage aborts without committing this record
                    # (the same on every path: `runtime/concurrent.py`).
                    self.fence(msg)
                    raise StageFailed(
                        f"stage {self.options.name}: handler raised {type(exc).__name__} "
                        f"on {msg.topic()}[{msg.partition()}]@{offset}: {exc}") from exc

                key = msg.key()
                if result is artifact and passthrough:
                    # Unchanged: pass the original bytes through, no re-encoding.
                    if default_topic is None:
                        raise self.emitter.no_output()
                    produce(default_topic, value, key, headers)
                    produced += 1
                    passed += 1
                    bytes_out += len(value)
                elif result is None:
                    dropped += 1
                    pending[tp] = offset + 1
                    continue
                elif type(result) is artifact_type:
                    # One new artifact for the default output: the common transform.
                    if default_topic is None:
                        raise self.emitter.no_output()
                    data = encode(result)
                    produce(default_topic, data, key, out_headers(headers))
                    produced += 1
                    passed += 1
                    bytes_out += len(data)
                else:
                    try:
                        pairs = outcomes(result)
                    except TypeError as exc:
                        self.handler_failed(msg, exc)
                        pending[tp] = offset + 1
                        continue
                    if not pairs:
                        dropped += 1
                        pending[tp] = offset + 1
                        continue
                    bytes_out += emit_pairs(pairs, artifact, value, key, headers, routed)
                    produced += len(pairs)
                    passed += 1
                if timed:
                    e2e.append(wall() - artifact.timestamp / 1000.0)
                pending[tp] = offset + 1

        finally:
            # Also when a fatal error cut the batch short: the records before it are
            # finished (the ledger, once failed, takes no more).
            if previous_attempts:
                # The retried record was counted when it was first consumed.
                consumed -= 1
                bytes_in -= len(messages[0].value() or b"")
            self.sample = sample
            stats.consumed += consumed
            stats.produced += produced
            stats.passed += passed
            stats.dropped += dropped
            stats.bytes_in += bytes_in
            stats.bytes_out += bytes_out
            ledger = self.ledger
            if pending:
                ledger.advance_all(pending)
            ledger.wrote(produced, bytes_out)
            report_batch(self.metrics, consumed, bytes_in, produced, bytes_out, dropped,
                         default_topic, routed, handler_times, e2e)
            self.metrics.in_flight(ledger.produced)
