"""A stage with a concurrent handler: async, threaded or batch calls, outputs in order.

A synchronous per-record handler runs in the stage's loop (`Stage.process`), one record
at a time. Any other handler runs through `ConcurrentLoop`, which takes the place of
`process` in each turn of the loop:

1. the results of finished calls are collected, and the outputs of every record that may
   leave now (`processor.runtime.inflight`: in order per key, or per partition) are
   produced, or the record dead-lettered or dropped, as `process` would;
2. records are consumed, no more than there is room for (`max_concurrency` calls in
   flight, a batch handler's being batches; and, counting the records done but waiting
   for an earlier one to leave, `HELD_FACTOR` times that), decoded in the loop (handed
   over in chunks as they decode, so that the loop's work overlaps the calls' waiting)
   and handed to the executor (`processor.runtime.executors`): an event loop for
   `async def` handlers, threads for blocking ones (`handler_mode: threads`), and the
   loop's own thread for a synchronous batch handler (its retries on a thread).
   A batch handler's calls gather `handler_batch_size` records, or fewer once the
   first of them has waited `handler_batch_wait` seconds.

When nothing finishes while there is no room, the stage pauses its partitions (the
consumer keeps polling, so the member stays in its group) and resumes them when half the
slots are free. Records in flight also count toward `max_in_flight` (backpressure).

Offsets: a partition's pending offset is the one after the longest prefix of its records
whose outputs have all been produced. At-least-once flushes before it commits, so it
commits only up to the lowest record whose outputs are all acknowledged. Exactly-once
emits in partition order whatever `order` says, so that a transaction holds outputs of
whole prefixes of each partition with their offsets; records still in flight at a
commit belong to the next transaction (`first_offsets`, where it re-reads after an
abort), and an abort drops them.

On revocation and shutdown the stage first waits (up to `drain_timeout`) for the calls of
the affected partitions; the rest are cancelled and their records, never committed, are
read again by the next owner. Under exactly-once nothing they did leaves the aborted or
uncommitted transaction, so nothing is lost and nothing duplicated.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

from processor.backends.abstract import Message, TopicPartition
from processor.core.artifact import Artifact
from processor.core.errors import (
    ChecksumMismatch,
    ConfigError,
    DecodeError,
    InvalidArtifact,
    RetryableError,
    SchemaError,
    SecurityError,
)
from processor.core.handlers import (
    DEFAULT_OUTPUT,
    AnyHandler,
    BatchOutcome,
    is_async_handler,
    is_batch_handler,
    outcomes,
)
from processor.core.options import StageOptions
from processor.ops.logs import lifecycle
from processor.ops.metrics import LATENCY_SAMPLE_EVERY, PAUSE_BACKPRESSURE
from processor.ops.tracing import StageTracing, TracedMessage
from processor.runtime.dead_letters import Reason
from processor.runtime.deadline import ThreadDeadlines
from processor.runtime.executors import (
    AsyncExecutor,
    Completed,
    Executor,
    InlineExecutor,
    ThreadExecutor,
)
from processor.runtime.failures import StageFailed
from processor.runtime.host import StageHost
from processor.runtime.inflight import Entry, InFlight
from processor.runtime.stats import report_batch

logger = logging.getLogger(__name__)

SYNC_BATCH_CALLS = 2
"""Batches in flight of a synchronous batch handler outside `threads` mode, which runs
in the loop's thread (`InlineExecutor`): one gathering, one waiting for a retry."""


_NO_PARTITION = TopicPartition("", -1)

HELD_FACTOR = 4
"""Records in flight (in calls, or done and waiting for an earlier record to leave) may
be this many times `max_concurrency`: a slow record holds back memory, not calls."""

SUBMIT_CHUNK = 16
"""Calls handed to the executor at once while a batch is decoded."""


def runs_concurrently(handler: object, options: StageOptions) -> bool:
    """Whether `handler` runs through `ConcurrentLoop` rather than the loop's own path;
    a `ConfigError` when `handler_mode` does not fit the handler (the stage checks this
    before it makes its clients)."""
    mode = options.handler_mode
    is_async = is_async_handler(handler)
    if mode == "async" and not is_async:
        raise ConfigError(f"stage {options.name}: handler_mode async needs an async def "
                          "handler")
    if mode in ("sync", "threads") and is_async:
        raise ConfigError(f"stage {options.name}: an async def handler cannot run with "
                          f"handler_mode {mode}")
    if mode == "sync":
        return is_batch_handler(handler)
    return mode != "auto" or is_async or is_batch_handler(handler)


def _reason(error: BaseException) -> str | None:
    """The dead-letter reason of a record that ended with `error` (None: a handler
    failure, which the error policy decides)."""
    if isinstance(error, SchemaError):
        return Reason.SCHEMA
    if isinstance(error, ChecksumMismatch):
        return Reason.CHECKSUM
    if isinstance(error, DecodeError):  # HopsExceeded too: a ring's (runtime/ring.py)
        return getattr(error, "reason", Reason.DECODE)
    if isinstance(error, InvalidArtifact):
        return Reason.INVALID
    if isinstance(error, SecurityError):  # a security policy refused it (docs/security.md)
        return Reason.of_security(error)
    if isinstance(error, RetryableError):
        return Reason.RETRIES_EXHAUSTED
    return None


class ConcurrentLoop:
    """The concurrent part of one stage (see the module documentation)."""

    def __init__(self, stage: StageHost, handler: AnyHandler) -> None:
        self.stage = stage
        options = stage.options
        self.options = options
        self.batch = is_batch_handler(handler)
        is_async = is_async_handler(handler)
        self.inflight = InFlight(by_key=options.order == "key" and not stage.eos)
        self.completed: Completed = queue.SimpleQueue()
        calls = options.max_concurrency
        self.executor: Executor
        fn: Callable[..., Any] = handler
        self.deadlines: ThreadDeadlines | None = None
        if options.handler_timeout is not None and not is_async:
            # Threads and batch handlers: each calling thread waits for its call at most
            # `handler_timeout` (an async handler's deadline is the event loop's own).
            self.deadlines = ThreadDeadlines(handler, options.handler_timeout, stage.health,
                                             options.name)
            fn = self.deadlines
        self.tracing = stage.tracing
        if self.tracing is not None:
            # Each call runs in its record's context; a batch call in a span of its own.
            fn = self.tracing.handler(fn, batch=self.batch, is_async=is_async)
        if is_async:
            self.executor = AsyncExecutor(fn, self.batch, options.retry, self.completed,
                                          options.handler_timeout, options.name)
        elif self.batch and options.handler_mode != "threads":
            calls = SYNC_BATCH_CALLS
            self.executor = InlineExecutor(fn, self.batch, options.retry, self.completed,
                                           calls, options.name)
        else:
            self.executor = ThreadExecutor(fn, self.batch, options.retry, self.completed,
                                           calls, options.name)
        self.executor.retry_log = stage.retry_log
        self._submit: Callable[[list[list[Entry]]], None] = (
            self.executor.submit if self.tracing is None else self._submit_traced)
        """Hands calls to the executor (traced: after telling the tracing their records)."""
        self.capacity = calls * (options.handler_batch_size if self.batch else 1)
        """Records in handler calls at most (`max_concurrency`, times the batch size)."""
        self.held_capacity = HELD_FACTOR * self.capacity
        """Records in flight at most, counting those done and waiting for an earlier one."""
        self.calls = 0
        """Records handed to the executor (or gathering into a batch), not yet done."""
        self.forming: list[Entry] = []
        self.forming_since = 0.0
        self.paused: set[TopicPartition] = set()
        self.cancelled_calls = 0
        self.mode = "async" if is_async else "threads"

    # --- one turn of the loop --------------------------------------------------------

    def turn(self) -> int:
        """Collect finished calls, then consume and hand over what there is room for;
        returns how many records were consumed."""
        opts = self.options
        self.collect(0.0)
        self._gather_due()
        room = self._room()
        if room <= 0:
            self._dispatch()  # a partial batch must not wait for room it takes itself
            if not self.collect(opts.poll_timeout):
                self._pause()
            room = self._room()
            if room <= 0 and not self.paused:
                return 0
        elif self.paused and room * 2 >= self.capacity:
            self._resume()
        busy = self.inflight.count > 0
        messages = self.stage.consumer.consume(max(1, min(opts.batch_size, room)),
                                               0.0 if busy else opts.poll_timeout)
        if messages:
            self.stage.metrics.batch(len(messages))
            self.submit(messages)
        elif busy:
            wait = opts.poll_timeout
            if self.forming:
                wait = min(wait, max(0.0, self.forming_since + opts.handler_batch_wait
                                     - time.monotonic()))
            self.collect(wait)
            self._gather_due()
        return len(messages)

    def _room(self) -> int:
        return min(self.capacity - self.calls, self.held_capacity - self.inflight.count)

    def submit(self, messages: Sequence[Message]) -> None:
        """Decode `messages` and hand them to the executor (a record that does not
        decode is done at once: it is dead-lettered when its turn to leave comes)."""
        stage = self.stage
        if self.tracing is not None:
            messages = self.tracing.start_all(messages)  # a span per record
        codec = stage.codec
        passthrough = codec.passthrough
        eos = stage.eos
        rewind_to = stage.commits.rewind_to
        inflight = self.inflight
        batch = self.batch
        calls: list[list[Entry]] = []
        failed: list[Entry] = []
        bytes_in = 0
        if eos:
            stage.commits.open()
        tp = _NO_PARTITION
        for msg in messages:
            partition = msg.partition()
            if partition != tp.partition or msg.topic() != tp.topic:
                tp = TopicPartition(msg.topic(), partition)  # once per run of a partition
            if eos and tp not in rewind_to:
                rewind_to[tp] = msg.offset()
            value = msg.value() or b""
            bytes_in += len(value)
            entry = Entry(msg, tp, inflight.lane_of(tp, msg.key()), None)
            inflight.add(entry)
            try:
                entry.artifact = (codec.decode(value, msg.headers()) if passthrough
                                  else codec.wrap(msg))
            except DecodeError as exc:  # SchemaError and ChecksumMismatch included
                entry.outcome = exc
                entry.attempts = 1
                failed.append(entry)
                continue
            self.calls += 1
            if batch:
                if not self.forming:
                    self.forming_since = time.monotonic()
                self.forming.append(entry)
                if len(self.forming) >= self.options.handler_batch_size:
                    calls.append(self.forming)
                    self.forming = []
            else:
                calls.append([entry])
            if len(calls) >= SUBMIT_CHUNK:
                # Start the first calls while the rest decode: the calls of a batch then
                # finish spread out, and the loop's work overlaps their waiting.
                self._submit(calls)
                calls = []
        stage.stats.consumed += len(messages)
        stage.stats.bytes_in += bytes_in
        stage.metrics.consumed(len(messages), bytes_in)
        if calls:
            self._submit(calls)
        if failed:
            self._finished(failed)

    def _gather_due(self) -> None:
        if self.forming and (time.monotonic() - self.forming_since
                             >= self.options.handler_batch_wait):
            self._dispatch()

    def _dispatch(self) -> None:
        if self.forming:
            self._submit([self.forming])
            self.forming = []

    def _submit_traced(self, calls: list[list[Entry]]) -> None:
        tracing = self.tracing
        assert tracing is not None  # only ever set with tracing on
        bind = tracing.bind
        for entries in calls:
            for entry in entries:
                bind(entry.msg, entry.artifact)
        self.executor.submit(calls)

    def collect(self, timeout: float) -> int:
        """Take the results of finished calls (waiting up to `timeout` seconds for the
        first) and let out what may leave; returns how many records finished."""
        try:
            first = (self.completed.get(timeout=timeout) if timeout > 0
                     else self.completed.get_nowait())
        except queue.Empty:
            return 0
        done = [e for e in first if not e.cancelled]
        while True:
            try:
                more = self.completed.get_nowait()
            except queue.Empty:
                break
            done.extend(e for e in more if not e.cancelled)
        if done:
            self._finished(done)
        return len(done)

    def _finished(self, done: list[Entry]) -> None:
        calls = 0
        for entry in done:
            entry.done = True
            if entry.artifact is not None:
                calls += 1
        self.calls -= calls
        released, moved = self.inflight.release(done)
        try:
            if released:
                self._emit(released)
        finally:
            # Also when a record failed in `_emit`: it fenced its partition, so the
            # watermarks stop before it.
            if moved:
                self.stage.ledger.advance_all(moved)

    # --- outputs ---------------------------------------------------------------------

    def _emit(self, entries: list[Entry]) -> None:
        """Produce the outputs of `entries` (in order), or dead-letter or drop them, as
        the loop's own path does for a synchronous handler."""
        if self.tracing is not None:
            self._emit_traced(self.tracing, entries)
        else:
            self._emit_records(entries)

    def _emit_traced(self, tracing: StageTracing, entries: list[Entry]) -> None:
        """`_emit` with tracing on: each record in its span, which ends with the
        outcome; each run of records without a span (their traces not sampled) at once,
        as an untraced stage emits them."""
        stats = self.stage.stats
        emit = self._emit_records
        quiet: list[Entry] = []
        handed = 0  # entries handed to `_emit_records` (which fences its own on failure)
        try:
            for index, entry in enumerate(entries):
                msg = entry.msg
                if entry.artifact is not None:
                    tracing.unbind(entry.artifact)
                if type(msg) is not TracedMessage:
                    quiet.append(entry)
                    continue
                if quiet:
                    handed = index
                    tracing.quietly(partial(emit, quiet))
                    quiet = []
                handed = index + 1
                tracing.run(msg, stats, partial(emit, [entry]), max(0, entry.attempts - 1))
            if quiet:
                handed = len(entries)
                tracing.quietly(partial(emit, quiet))
        except BaseException:
            # As in `_emit_records`: the records after the failed one have not left.
            fence = self.stage.ledger.fence
            for entry in entries[handed:]:
                fence(entry.tp, entry.msg.offset())
            raise

    def _emit_records(self, entries: list[Entry]) -> None:
        stage = self.stage
        if stage.eos:
            stage.commits.open()
        codec = stage.codec
        passthrough = codec.passthrough
        produce = stage.producer.produce
        outputs = stage.outputs
        default_topic = outputs[DEFAULT_OUTPUT]
        produced = passed = dropped = bytes_out = retried = 0
        artifact_type = Artifact
        encode = codec.encode
        out_headers = codec.headers
        routed: dict[str, list[int]] = {}
        emit_pairs = stage.emitter.pairs
        # Latency, sampled as on the synchronous path: the call's duration as the
        # executor measured it, and the time from the artifact's timestamp to its output.
        sample = stage.sample
        handler_times: list[float] = []
        e2e: list[float] = []
        index = 0
        try:
            for index, entry in enumerate(entries):  # noqa: B007 - read by the except
                msg = entry.msg
                if entry.attempts > 1:
                    retried += entry.attempts - 1
                result: BatchOutcome = entry.outcome
                if isinstance(result, BaseException):
                    self._failed(msg, result, entry.attempts)
                    continue
                artifact = entry.artifact
                if artifact is not None:
                    sample += 1
                    if sample % LATENCY_SAMPLE_EVERY == 0:
                        handler_times.append(entry.elapsed)
                        e2e.append(time.time() - artifact.timestamp / 1000.0)
                if result is None:
                    dropped += 1
                    continue
                if type(result) is artifact_type and default_topic is not None:
                    # One artifact for the default output: the common enrich (or, unchanged,
                    # the original bytes).
                    if result is artifact and passthrough:
                        data = msg.value() or b""
                        produce(default_topic, data, msg.key(), msg.headers())
                    else:
                        data = encode(result)
                        produce(default_topic, data, msg.key(), out_headers(msg.headers()))
                    bytes_out += len(data)
                    produced += 1
                    passed += 1
                    continue
                try:
                    pairs = outcomes(result)
                except TypeError as exc:
                    self._failed(msg, exc, entry.attempts)
                    continue
                if not pairs:
                    dropped += 1
                    continue
                bytes_out += emit_pairs(pairs, artifact, msg.value() or b"", msg.key(),
                                        msg.headers(), routed)
                produced += len(pairs)
                passed += 1
            stats = stage.stats
            stats.produced += produced
            stats.passed += passed
            stats.dropped += dropped
            stats.bytes_out += bytes_out
            if retried:
                stats.retried += retried
                stage.metrics.retried(retried)
        except BaseException:
            # A record failed (or an output was misrouted) partway: it and the records
            # after it in this list have not left, whatever their partitions' order
            # (records of other keys may follow it here): fence each at its offset.
            fence = stage.ledger.fence
            for entry in entries[index:]:
                fence(entry.tp, entry.msg.offset())
            raise
        stage.sample = sample
        stage.ledger.wrote(produced, bytes_out)
        report_batch(stage.metrics, 0, 0, produced, bytes_out, dropped, default_topic,
                     routed, handler_times, e2e)
        stage.metrics.in_flight(stage.ledger.produced)

    def _failed(self, msg: Message, error: BaseException, attempts: int) -> None:
        if not isinstance(error, Exception):
            # CancelledError, SystemExit, KeyboardInterrupt out of a handler: no policy
            # absorbs it; the stage aborts without committing this record.
            self.stage.fence(msg)
            raise StageFailed(
                f"stage {self.options.name}: handler raised {type(error).__name__} on "
                f"{msg.topic()}[{msg.partition()}]@{msg.offset()}: {error}") from error
        reason = _reason(error)
        if reason is None:
            self.stage.handler_failed(msg, error)
        else:
            self.stage.dead_letter(msg, reason or Reason.HANDLER_ERROR, error,
                                    attempts=max(1, attempts))

    # --- pausing when every slot is taken ---------------------------------------------

    def _pause(self) -> None:
        stage = self.stage
        paused_elsewhere = stage.backpressure.paused
        new = sorted(tp for tp in stage.assigned
                     if tp not in self.paused and tp not in paused_elsewhere)
        if new:
            stage.consumer.pause(new)
            self.paused.update(new)
            lifecycle(logger, "pause", partitions=new, stage=self.options.name,
                      reason=PAUSE_BACKPRESSURE, in_flight=self.inflight.count)

    def _resume(self) -> None:
        stage = self.stage
        resume = [tp for tp in sorted(self.paused)
                  if tp in stage.assigned and not stage.backpressure.keep_paused(tp)]
        self.paused.clear()
        if resume:
            stage.consumer.resume(resume)
            lifecycle(logger, "resume", partitions=resume, stage=self.options.name,
                      reason=PAUSE_BACKPRESSURE)

    # --- revocation, abort, shutdown -------------------------------------------------

    @property
    def hung(self) -> str | None:
        """Why the stage must stop: too many handler calls stuck past `handler_timeout`."""
        return None if self.deadlines is None else self.deadlines.hung

    @property
    def busy(self) -> bool:
        """Whether any record is in flight."""
        return self.inflight.count > 0

    def first_offsets(self) -> dict[TopicPartition, int]:
        return self.inflight.first_offsets()

    def drain(self, timeout: float,
              partitions: Iterable[TopicPartition] | None = None) -> bool:
        """Wait up to `timeout` seconds for the records in flight (of `partitions`,
        default all) to finish and leave, consuming nothing meanwhile; whether they all
        did."""
        tps = None if partitions is None else list(partitions)
        self._dispatch()
        end = time.monotonic() + timeout
        while self.inflight.pending(tps):
            left = end - time.monotonic()
            if left <= 0:
                logger.warning("stage %s: %d record(s) still in flight after %.1fs; "
                               "cancelled, they will be read again", self.options.name,
                               self.inflight.pending(tps), timeout)
                return False
            self.collect(min(left, 0.1))
        return True

    def handle_now(self, messages: Sequence[Message]) -> None:
        """Hand `messages` over and wait for every one to leave (the re-read after
        outputs refused as too large handles its suspects one at a time this way)."""
        self.submit(messages)
        if not self.drain(self.options.shutdown_timeout):
            raise StageFailed(f"stage {self.options.name}: handler calls did not finish "
                              f"within {self.options.shutdown_timeout:g}s while records "
                              "were re-read one at a time after too-large outputs")

    def discard(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Drop the records in flight (of `partitions`, default all): they were revoked,
        or their transaction aborted; their calls are cancelled where possible."""
        tps = None if partitions is None else list(partitions)
        dropped = self.inflight.discard(tps)
        if self.tracing is not None and dropped:
            for entry in dropped:
                if entry.artifact is not None:
                    self.tracing.unbind(entry.artifact)
            self.tracing.cancelled(e.msg for e in dropped)
        if tps is None:
            self.forming = []
            # Every slot is free again: what this loop paused reads again (a transaction
            # aborted, or outputs refused as too large, with every slot taken, left the
            # partitions paused for good before).
            self._resume()
        else:
            gone = set(tps)
            self.forming = [e for e in self.forming if e.tp not in gone]
            self.paused.difference_update(gone)
        self.calls -= sum(1 for e in dropped if not e.done and e.artifact is not None)
        if dropped:
            self.cancelled_calls += len(dropped)
            self.executor.cancel(dropped)

    def close(self) -> None:
        self.executor.close()
