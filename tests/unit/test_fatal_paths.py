"""Fatal faults on every handler path: no commit passes the record that failed.

Three losses were seen on the in-memory broker, each kept here as a regression test for
every handler kind it applies to (sync, async, threads, batch) and both guarantees:

1. a failed output (non-retriable delivery failure) under a concurrent handler: the stage
   raised `DeliveryFailed`, yet the group's committed offset ended past the record whose
   output was lost;
2. `error_policy: fail` with a concurrent handler raising on record 4 while records 5-7
   finish after it: the committed offset ended at 8;
3. a `CancelledError` (a BaseException) escaping a handler left the stage hung with the
   record in flight for ever.

Each test then restarts a clean stage in the same group and checks that every input
comes out: nothing was lost.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from processor.backends.abstract import TopicPartition
from processor.backends.memory import FaultInjector, MemoryBroker
from processor.core.artifact import Artifact
from processor.core.errors import DeliveryFailed
from processor.core.handlers import AnyHandler, BatchOutcome, Outcome
from processor.core.options import RetryPolicy, StageOptions
from processor.runtime.stage import Stage
from processor.runtime.stage_events import StageFailed
from tests.unit import model_support as m
from tests.unit.stage_support import ManualClock

IN0 = TopicPartition("in", 0)
KINDS = ["sync", "async", "threads", "batch"]
GUARANTEES = ["at-least-once", "exactly-once"]
WAIT = 5.0
"""Seconds of real time a test gives handler calls on other threads."""

Script = Callable[[Artifact], Outcome]


def make_broker() -> MemoryBroker:
    broker = MemoryBroker()
    admin = broker.admin()
    admin.create_topic("in", partitions=1)
    for topic in ("out", "dlq"):
        admin.create_topic(topic, partitions=1)
    return broker


def feed(broker: MemoryBroker, n: int) -> None:
    producer = broker.producer()
    for seq in range(n):
        producer.produce("in", m.make_input(seq, m.SAME), b"k")
    producer.flush()


def stage_options(kind: str, guarantee: str, **overrides: object) -> StageOptions:
    base: dict[str, object] = dict(
        name="s1", input_topic="in", output_topic="out", group="g", dlq_topic="dlq",
        guarantee=guarantee, batch_size=50, poll_timeout=0.0, commit_interval=1.0,
        retry=RetryPolicy(max_attempts=2, initial_backoff=0.0, max_backoff=0.0, jitter=0.0),
        handler_mode="threads" if kind == "threads" else "auto", max_concurrency=8,
        order="partition", handler_batch_size=4, handler_batch_wait=0.0,
        drain_timeout=1.0, shutdown_timeout=5.0, transactional_id="s1-0",
    )
    base.update(overrides)
    return StageOptions(**base)  # type: ignore[arg-type]


def handler_of(kind: str, script: Script,
               wait: Callable[[Artifact], None] | None = None) -> AnyHandler:
    """A handler of `kind` that runs `wait` (a blocking wait, off the event loop for an
    async handler), then `script`, on each artifact. A batch handler reports each
    record's exception as its outcome; a BaseException escapes the whole call."""
    if kind == "async":
        async def handle_async(artifact: Artifact) -> Outcome:
            if wait is not None:
                await asyncio.to_thread(wait, artifact)
            await asyncio.sleep(0)
            return script(artifact)
        return handle_async
    if kind == "batch":
        def handle_batch(artifacts: list[Artifact]) -> list[BatchOutcome]:
            results: list[BatchOutcome] = []
            for artifact in artifacts:
                try:
                    results.append(script(artifact))
                except Exception as exc:
                    results.append(exc)
            return results
        return handle_batch

    def handle(artifact: Artifact) -> Outcome:
        if wait is not None:
            wait(artifact)
        return script(artifact)
    return handle


def committed(broker: MemoryBroker) -> int:
    return broker.admin().group_offsets("g", ["in"]).get(IN0, 0)


def drive(stage: Stage, clock: ManualClock, done: Callable[[], bool]) -> BaseException | None:
    """Turn the stage (a commit interval passing each turn) until `done()` or a fatal
    error, which is returned; fails the test if neither comes within `WAIT` seconds."""
    end = time.monotonic() + WAIT
    while time.monotonic() < end:
        try:
            stage.run_once()
        except (StageFailed, DeliveryFailed, asyncio.CancelledError) as exc:
            return exc
        clock.advance(1.0)
        if done():
            return None
        time.sleep(0.001)
    unfinished = m.unfinished(stage)
    pytest.fail(f"stage hung: neither finished nor failed within {WAIT}s "
                f"({unfinished} record(s) unfinished; {stage.uncommitted()})")


def close(stage: Stage) -> BaseException | None:
    """Close the stage; the fatal error it reports, if any, is allowed."""
    try:
        stage.close()
    except (StageFailed, DeliveryFailed, asyncio.CancelledError) as exc:
        return exc
    return None


def recover(broker: MemoryBroker, kind: str, guarantee: str, n: int) -> None:
    """A clean stage in the same group finishes the input: every input is out (exactly
    once, read_committed, under exactly-once)."""
    clock = ManualClock()
    stage = Stage(stage_options(kind, guarantee), broker, handler_of(kind, lambda a: a),
                  clock=clock)
    stage.start()
    drive(stage, clock, lambda: committed(broker) >= n)
    assert close(stage) is None
    assert committed(broker) == n
    now = m.seen(broker)
    got = sorted(seq for seq, counts in now.outputs.items() for _ in range(sum(counts.values())))
    if guarantee == "exactly-once":
        assert got == list(range(n)), f"outputs (read_committed) {got}"
    else:
        assert set(got) == set(range(n)), f"outputs {got}"


def all_finished(stage: Stage, n: int) -> Callable[[], bool]:
    return lambda: stage.stats.consumed >= n and m.unfinished(stage) == 0


# --- 1. a failed output -------------------------------------------------------------------


@pytest.mark.parametrize("guarantee", GUARANTEES)
@pytest.mark.parametrize("kind", KINDS)
def test_a_failed_output_is_never_committed_past(kind: str, guarantee: str) -> None:
    broker = make_broker()
    feed(broker, 8)
    FaultInjector(broker).fail_deliveries(1, "out", reason="disk full", retriable=False)
    later = threading.Event()

    def wait(artifact: Artifact) -> None:
        if artifact.get("seq", -1) > 4:
            later.wait(WAIT)  # records 5-7 finish after the failed output was found

    clock = ManualClock()
    stage = Stage(stage_options(kind, guarantee), broker,
                  handler_of(kind, lambda a: a,
                             wait if kind in ("async", "threads") else None), clock=clock)
    stage.start()
    error = drive(stage, clock, lambda: committed(broker) >= 8 or (
        guarantee == "exactly-once" and committed(broker) >= 5))
    later.set()
    time.sleep(0.05)  # records 5-7 finish now, before and during the close
    closed = close(stage)
    if guarantee == "at-least-once":
        # Record 0's output was lost: no commit may pass it, not even at shutdown.
        assert 0 not in m.seen(broker).outputs
        assert isinstance(error or closed, DeliveryFailed), (error, closed)
        assert committed(broker) == 0, (
            f"committed {committed(broker)} of 8 although record 0's output failed")
    else:
        # The transaction with the failed output is aborted and its input read again.
        assert error is None and closed is None, (error, closed)
    recover(broker, kind, guarantee, 8)


# --- 2. error_policy fail, later records finishing after the failed one ------------------


@pytest.mark.parametrize("guarantee", GUARANTEES)
@pytest.mark.parametrize("kind", KINDS)
def test_error_policy_fail_commits_nothing_past_the_failed_record(kind: str,
                                                                  guarantee: str) -> None:
    broker = make_broker()
    feed(broker, 8)
    later = threading.Event()

    def script(artifact: Artifact) -> Outcome:
        if artifact.get("seq", -1) == 4:
            raise RuntimeError("record 4 fails")
        return artifact

    def wait(artifact: Artifact) -> None:
        if artifact.get("seq", -1) > 4:
            later.wait(WAIT)  # records 5-7 finish after record 4 failed

    clock = ManualClock()
    stage = Stage(stage_options(kind, guarantee, error_policy="fail"), broker,
                  handler_of(kind, script, wait if kind in ("async", "threads") else None),
                  clock=clock)
    stage.start()
    error = drive(stage, clock, lambda: committed(broker) >= 8)
    later.set()
    time.sleep(0.05)  # records 5-7 finish now, before and during the close
    closed = close(stage)
    assert isinstance(error or closed, StageFailed), (error, closed)
    assert committed(broker) <= 4, (
        f"committed {committed(broker)} of 8 past record 4, on which the handler failed "
        f"(error_policy fail)")
    recover(broker, kind, guarantee, 8)


# --- 3. CancelledError out of a handler ---------------------------------------------------


@pytest.mark.parametrize("guarantee", GUARANTEES)
@pytest.mark.parametrize("kind", KINDS)
def test_cancelled_error_out_of_a_handler_neither_hangs_nor_loses(kind: str,
                                                                  guarantee: str) -> None:
    broker = make_broker()
    feed(broker, 5)

    def script(artifact: Artifact) -> Outcome:
        if artifact.get("seq", -1) == 2:
            raise asyncio.CancelledError("cancelled inside the handler")
        return artifact

    if kind == "batch":
        def batch(artifacts: list[Artifact]) -> list[BatchOutcome]:
            return [script(a) for a in artifacts]  # the BaseException escapes the call
        handler: AnyHandler = batch
    else:
        handler = handler_of(kind, script)
    clock = ManualClock()
    stage = Stage(stage_options(kind, guarantee), broker, handler, clock=clock)
    stage.start()
    # It must stop (a fatal error) or finish every record; it must not hang.
    error = drive(stage, clock, all_finished(stage, 5))
    close(stage)
    if error is None:
        # Finished: record 2 cannot have an output, so it must be dead-lettered.
        assert m.seen(broker).dead[2] == 1
    else:
        assert committed(broker) <= 2, f"committed {committed(broker)} past record 2"
    recover(broker, kind, guarantee, 5)


# --- 4. a fatal record released together with finished records of other partitions ------


@pytest.mark.parametrize("failure", ["error-policy-fail", "cancelled-error"])
@pytest.mark.parametrize("guarantee", GUARANTEES)
@pytest.mark.parametrize("kind", ["async", "threads"])
def test_a_fatal_record_does_not_commit_records_left_unemitted_behind_it(
        kind: str, guarantee: str, failure: str) -> None:
    """Record B (partition 0) fails fatally and record A (partition 1) finishes just
    after it, so that one collect of results releases both, B first. The emission stops
    at B; A's output is never produced, so A's offset must not be committed either.
    (Found by the stage model: `test_stage_model.py`, threads, at-least-once.)"""
    broker = MemoryBroker()
    admin = broker.admin()
    admin.create_topic("in", partitions=2)
    admin.create_topic("out", partitions=1)
    admin.create_topic("dlq", partitions=1)
    producer = broker.producer()
    producer.produce("in", m.make_input(0, m.SAME), b"a", partition=1)  # A
    producer.produce("in", m.make_input(1, m.BOOM), b"b", partition=0)  # B
    producer.flush()
    b_done = threading.Event()

    def script(artifact: Artifact) -> Outcome:
        if artifact.get("seq", -1) == 1:
            b_done.set()
            if failure == "cancelled-error":
                raise asyncio.CancelledError("cancelled inside the handler")
            raise RuntimeError("record B fails")
        return artifact

    def wait(artifact: Artifact) -> None:
        if artifact.get("seq", -1) == 0:
            b_done.wait(WAIT)
            time.sleep(0.05)  # B's result is reported first

    clock = ManualClock()
    stage = Stage(stage_options(kind, guarantee, error_policy="fail"), broker,
                  handler_of(kind, script, wait), clock=clock)
    stage.start()
    stage.run_once()  # both records handed to the handler
    time.sleep(0.3)  # both calls are over: one collect takes both results, B first
    error = drive(stage, clock, lambda: committed_in(broker, 1) >= 1)
    closed = close(stage)
    assert isinstance(error or closed, StageFailed), (error, closed)
    a_out = 0 in m.seen(broker).outputs
    assert committed_in(broker, 1) == 0 or a_out, (
        "record A (in[1]@0) committed although its output was never produced")


def committed_in(broker: MemoryBroker, partition: int) -> int:
    return broker.admin().group_offsets("g", ["in"]).get(TopicPartition("in", partition), 0)
