"""Async, threaded and batch handlers in a stage on the in-memory broker: outputs in order
per key, every record accounted for, retries, dead letters, offsets, revocation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from collections.abc import Callable

import pytest

from processor.backends.abstract import Message, TopicPartition
from processor.core.artifact import Artifact
from processor.core.errors import InvalidArtifact, RetryableError
from processor.core.handlers import BatchOutcome, Outcome, is_async_handler, is_batch_handler
from processor.core.options import RetryPolicy
from processor.runtime.concurrent import HELD_FACTOR, runs_concurrently
from processor.runtime.inflight import Entry, InFlight
from processor.runtime.stage import Stage
from tests.unit.stage_support import (
    CODEC,
    artifacts,
    committed,
    feed,
    make_broker,
    options,
    read_all,
    seqs,
)
from tests.unit.test_stage_rewind import fail_next_commit


def keyed_feed(n: int, keys: int = 7) -> tuple[list[bytes], list[bytes]]:
    values = [CODEC.encode(a) for a in artifacts(n)]
    return values, [str(i % keys).encode() for i in range(n)]


def by_key(messages: list[Message]) -> dict[bytes | None, list[int]]:
    out: dict[bytes | None, list[int]] = defaultdict(list)
    for m, seq in zip(messages, seqs(messages), strict=True):
        out[m.key()].append(seq)
    return out


def run_until_idle(stage: Stage) -> None:
    """Run until nothing was read for a moment and no call is in flight, then close. Not
    a race: the input is all there before the stage starts, and a stage with records in
    flight, or with records still to read, is never idle."""
    stage.run(idle_timeout=0.3)


GENEROUS = 30.0
"""Seconds of real time a test waits at most for something that happens at once (a
thread starting, a handler returning): reached only when something is broken, never a
race on a loaded machine."""


def results_waiting(stage: Stage, n: int) -> None:
    """Block until at least `n` finished calls wait for the stage to collect them. The
    calls of a threaded handler report one by one: with `n` = `calls - k`, every call in
    flight has finished but `k` stuck ones."""
    assert stage.concurrent is not None
    completed = stage.concurrent.completed
    deadline = time.monotonic() + GENEROUS
    while completed.qsize() < n:
        assert time.monotonic() < deadline, f"{n} results expected, {completed.qsize()} came"
        time.sleep(0.001)


def a_result_waits(stage: Stage) -> None:
    """With calls in flight, block until one of them reported: the next turn then
    collects something, however slow the handler threads are."""
    assert stage.concurrent is not None
    if stage.concurrent.calls:
        results_waiting(stage, 1)


def turn_until(stage: Stage, done: Callable[[], bool], what: str, turns: int = 100,
               before: Callable[[], None] | None = None) -> None:
    """Call `stage.run_once()` until `done()`, for at most `turns` turns; before each turn
    `before()` (default `a_result_waits`), so that every turn makes progress: the bound
    is a count of turns, never a time."""
    for _ in range(turns):
        if done():
            return
        if before is None:
            a_result_waits(stage)
        else:
            before()
        stage.run_once()
    assert done(), f"{what}: not reached within {turns} turns"


async def slow_reverse(a: Artifact) -> Outcome:
    """Later records finish first: a delay that shrinks as `seq` grows."""
    await asyncio.sleep(0.002 * (10 - a.get("seq", 0) % 10))
    return a.with_payload(b"done %d" % a.get("seq", 0))


def test_kinds_of_handler_are_recognised() -> None:
    def batch(artifacts: list[Artifact]) -> list[BatchOutcome]:
        return list(artifacts)

    async def batch_async(artifacts: list[Artifact]) -> list[BatchOutcome]:
        return list(artifacts)

    def plain(a: Artifact) -> Outcome:
        return a

    assert is_async_handler(slow_reverse) and not is_batch_handler(slow_reverse)
    assert is_batch_handler(batch) and not is_async_handler(batch)
    assert is_batch_handler(batch_async) and is_async_handler(batch_async)
    assert not is_batch_handler(plain) and not is_async_handler(plain)
    assert not runs_concurrently(plain, options())
    assert runs_concurrently(plain, options(handler_mode="threads"))
    assert runs_concurrently(slow_reverse, options())


@pytest.mark.parametrize("order", ["key", "partition"])
def test_async_outputs_keep_input_order_per_key(order: str) -> None:
    broker = make_broker(partitions=3)
    values, keys = keyed_feed(300)
    feed(broker, values, keys)
    stage = Stage(options(order=order, max_concurrency=50), broker, slow_reverse)
    run_until_idle(stage)
    out = read_all(broker, "out")
    assert sorted(seqs(out)) == list(range(300))
    for key, got in by_key(out).items():
        assert got == sorted(got), key
    if order == "partition":
        # Outputs of one input partition left in its order: within every output
        # partition, the records of each input partition are in input order.
        source = {s: m.partition() for m, s in zip(read_all(broker, "in"),
                                                  seqs(read_all(broker, "in")), strict=True)}
        lanes: dict[tuple[int, int], list[int]] = defaultdict(list)
        for m, seq in zip(out, seqs(out), strict=True):
            lanes[(m.partition(), source[seq])].append(seq)
        for got in lanes.values():
            assert got == sorted(got)
    assert stage.stats.passed == 300
    assert sum(committed(broker).values()) == 300


def test_threaded_handler_runs_calls_at_once() -> None:
    broker = make_broker(partitions=2)
    values, keys = keyed_feed(40, keys=40)
    feed(broker, values, keys)
    at_once = 0
    running = 0
    lock = threading.Lock()
    gate = threading.Barrier(4, timeout=GENEROUS)

    def blocking(a: Artifact) -> Outcome:
        nonlocal at_once, running
        with lock:
            running += 1
            at_once = max(at_once, running)
        if a.get("seq", 0) < 4:
            gate.wait()  # the first four only return once all four run together
        with lock:
            running -= 1
        return a

    stage = Stage(options(handler_mode="threads", max_concurrency=40), broker, blocking)
    run_until_idle(stage)
    assert at_once >= 4
    assert sorted(seqs(read_all(broker, "out"))) == list(range(40))


def test_retries_dead_letters_and_drops_in_order() -> None:
    broker = make_broker(partitions=1)
    values, keys = keyed_feed(30, keys=1)
    feed(broker, values, keys)
    failures: dict[int, int] = defaultdict(int)

    async def handler(a: Artifact) -> Outcome:
        seq = a.get("seq", 0)
        if seq == 3:
            failures[seq] += 1
            if failures[seq] < 3:
                raise RetryableError("later")
        if seq == 5:
            raise RetryableError("never")
        if seq == 7:
            raise InvalidArtifact("bad")
        if seq == 9:
            raise ValueError("boom")
        if seq == 11:
            return None
        return a

    retry = RetryPolicy(max_attempts=4, initial_backoff=0.01, jitter=0)
    stage = Stage(options(retry=retry), broker, handler)
    run_until_idle(stage)
    out = seqs(read_all(broker, "out"))
    assert out == [s for s in range(30) if s not in (5, 7, 9, 11)]
    dead = read_all(broker, "dlq")
    reasons = {CODEC.decode(m.value() or b"").get("seq", -1): dict(m.headers() or [])[
        "dlq.reason"] for m in dead}
    assert reasons == {5: b"retries-exhausted", 7: b"invalid", 9: b"handler-error"}
    assert failures[3] == 3
    assert stage.stats.retried == 2 + 3
    assert stage.stats.dropped == 1
    assert committed(broker) == {TopicPartition("in", 0): 30}


def test_undecodable_input_is_dead_lettered_in_its_turn() -> None:
    broker = make_broker(partitions=1)
    feed(broker, [CODEC.encode(artifacts(1)[0]), b"not avro", CODEC.encode(artifacts(3)[2])],
         [b"k", b"k", b"k"])
    stage = Stage(options(), broker, slow_reverse)
    run_until_idle(stage)
    assert seqs(read_all(broker, "out")) == [0, 2]
    assert len(read_all(broker, "dlq")) == 1
    assert committed(broker) == {TopicPartition("in", 0): 3}


def test_batch_handler_gets_lists_and_answers_per_record() -> None:
    broker = make_broker(partitions=2)
    values, keys = keyed_feed(250)
    feed(broker, values, keys)
    sizes: list[int] = []

    def batch(items: list[Artifact]) -> list[BatchOutcome]:
        sizes.append(len(items))
        results: list[BatchOutcome] = []
        for a in items:
            seq = a.get("seq", 0)
            results.append(InvalidArtifact("odd one") if seq == 13 else
                           None if seq == 14 else a.with_payload(b"b"))
        return results

    stage = Stage(options(handler_batch_size=40, handler_batch_wait=0.01, batch_size=100),
                  broker, batch)
    run_until_idle(stage)
    assert max(sizes) == 40 and sum(sizes) == 250
    assert sorted(seqs(read_all(broker, "out"))) == [s for s in range(250) if s not in (13, 14)]
    assert len(read_all(broker, "dlq")) == 1
    assert sum(committed(broker).values()) == 250


def test_a_batch_handler_returning_the_wrong_count_fails_its_records() -> None:
    broker = make_broker(partitions=1)
    values, keys = keyed_feed(5)
    feed(broker, values, keys)

    async def short(items: list[Artifact]) -> list[BatchOutcome]:
        return list(items[:-1])

    stage = Stage(options(), broker, short)
    run_until_idle(stage)
    assert read_all(broker, "out") == []
    assert len(read_all(broker, "dlq")) == 5


def test_commit_stops_at_the_lowest_record_still_in_flight() -> None:
    broker = make_broker(partitions=1)
    values, keys = keyed_feed(10, keys=10)
    feed(broker, values, keys)
    release = threading.Event()

    def handler(a: Artifact) -> Outcome:
        if a.get("seq", 0) == 4:
            release.wait(GENEROUS)
        return a

    stage = Stage(options(handler_mode="threads", max_concurrency=20), broker, handler)
    stage.start()
    turn_until(stage, lambda: stage.stats.passed == 9, "every record but 4 out")
    stage.commit()
    # Keys differ: the other nine left, but the offset waits for record 4.
    assert sorted(seqs(read_all(broker, "out"))) == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert committed(broker) == {TopicPartition("in", 0): 4}
    release.set()
    stage.close()
    assert committed(broker) == {TopicPartition("in", 0): 10}


def test_shutdown_cancels_calls_past_the_drain_timeout_and_commits_before_them() -> None:
    broker = make_broker(partitions=1)
    values, keys = keyed_feed(6, keys=6)
    feed(broker, values, keys)

    cancelled = threading.Event()

    async def handler(a: Artifact) -> Outcome:
        if a.get("seq", 0) == 2:
            try:
                await asyncio.Event().wait()  # never set: only a cancellation ends it
            except asyncio.CancelledError:
                cancelled.set()
                raise
        return a

    stage = Stage(options(drain_timeout=0.2), broker, handler)
    stage.start()
    turn_until(stage, lambda: stage.stats.passed == 5, "every record but 2 out")
    started = time.monotonic()
    stage.close()
    # The call of record 2 never returns by itself: the close cancelled it, not waited.
    assert time.monotonic() - started < 5
    assert cancelled.is_set()
    assert sorted(seqs(read_all(broker, "out"))) == [0, 1, 3, 4, 5]
    assert committed(broker) == {TopicPartition("in", 0): 2}


def test_exactly_once_with_an_async_handler_delivers_each_record_once() -> None:
    broker = make_broker(partitions=1)
    values, keys = keyed_feed(20, keys=3)
    feed(broker, values, keys)
    stage = Stage(options(guarantee="exactly-once", order="key"), broker, slow_reverse)
    run_until_idle(stage)
    out = read_all(broker, "out", read_committed=True)
    assert sorted(seqs(out)) == list(range(20))
    # Exactly-once keeps partition order: the output is in input order.
    assert committed(broker) == {TopicPartition("in", 0): 20}


def test_inflight_releases_by_lane_and_commits_the_prefix() -> None:
    tp = TopicPartition("in", 0)
    flight = InFlight(by_key=True)

    class Msg:
        def __init__(self, offset: int) -> None:
            self._offset = offset

        def offset(self) -> int:
            return self._offset

    entries = [Entry(Msg(i), tp, (tp, b"a" if i % 2 else b"b"), None)  # type: ignore[arg-type]
               for i in range(4)]
    for e in entries:
        flight.add(e)
    entries[1].done = True
    released, moved = flight.release([entries[1]])
    assert released == [entries[1]] and moved == {}
    entries[0].done = True
    released, moved = flight.release([entries[0]])
    assert released == [entries[0]] and moved == {tp: 2}
    assert flight.first_offsets() == {tp: 2} and len(flight) == 2


def test_an_aborted_transaction_drops_calls_in_flight_and_reads_them_again() -> None:
    broker = make_broker(partitions=1)
    values, keys = keyed_feed(12, keys=12)
    feed(broker, values, keys)
    release = threading.Event()
    running = threading.Event()
    calls: dict[int, int] = defaultdict(int)
    lock = threading.Lock()

    def handler(a: Artifact) -> Outcome:
        seq = a.get("seq", 0)
        with lock:
            calls[seq] += 1
            first = calls[seq] == 1
        if seq == 6 and first:
            running.set()
            release.wait(GENEROUS)  # in flight across the failing commit
        return a

    stage = Stage(options(guarantee="exactly-once", handler_mode="threads",
                          max_concurrency=20, commit_interval=3600), broker, handler)
    failures = fail_next_commit(stage)
    stage.start()
    # Records 0-5 out (in the transaction), 6 running: its call must have started, or
    # the abort would drop it before any thread took it, and it would run only once.
    turn_until(stage, lambda: stage.stats.passed == 6, "records 0-5 out")
    assert running.wait(GENEROUS), "the call of record 6 did not start"
    concurrent = stage.concurrent
    assert concurrent is not None and concurrent.busy
    stage.commit()  # fails: aborted, rewound, the calls in flight dropped
    assert failures == [1]
    assert not concurrent.busy
    release.set()
    # Read again from the rewind (the seek; no new subscription), each record once more.
    turn_until(stage, lambda: stage.stats.consumed == 24 and not concurrent.busy,
               "the 12 records read again and out")
    stage.close()
    out = read_all(broker, "out", read_committed=True)
    assert sorted(seqs(out)) == list(range(12))  # each once: the aborted ones are gone
    assert calls[6] == 2 and calls[0] == 2
    assert committed(broker) == {TopicPartition("in", 0): 12}


def test_every_slot_taken_by_a_stuck_call_pauses_the_partitions_until_it_returns() -> None:
    broker = make_broker(partitions=1)
    values, keys = keyed_feed(40, keys=40)
    feed(broker, values, keys)
    release = threading.Event()

    def handler(a: Artifact) -> Outcome:
        if a.get("seq", 0) == 0:
            release.wait(GENEROUS)
        return a

    stage = Stage(options(handler_mode="threads", max_concurrency=5, poll_timeout=0.01),
                  broker, handler)
    concurrent = stage.concurrent
    assert concurrent is not None

    def others_reported() -> None:
        # Before each turn, every call in flight but the stuck one has finished: a turn
        # then never finds its slots taken by calls that are merely slow (it would pause
        # the partition after `poll_timeout`, with fewer records in flight).
        results_waiting(stage, concurrent.calls - 1)

    stage.start()
    turn_until(stage, lambda: bool(stage.consumer.paused()), "the partition paused",
               before=others_reported)
    assert stage.consumer.paused() == [TopicPartition("in", 0)]
    # One call stuck at the head of the partition: the records behind it finish but may
    # not leave; they take up to HELD_FACTOR * max_concurrency records of room.
    assert len(concurrent.inflight) == HELD_FACTOR * 5
    assert concurrent.calls == 1
    release.set()
    turn_until(stage, lambda: not stage.consumer.paused(), "the partition resumed",
               before=lambda: results_waiting(stage, concurrent.calls))
    assert stage.consumer.paused() == []
    turn_until(stage, lambda: stage.stats.consumed == 40 and not concurrent.busy,
               "every record out", before=lambda: results_waiting(stage, concurrent.calls))
    stage.close()
    assert sorted(seqs(read_all(broker, "out"))) == list(range(40))
    assert committed(broker) == {TopicPartition("in", 0): 40}


def test_an_async_handler_is_refused_in_a_chain() -> None:
    from processor.core.errors import ConfigError
    from processor.core.handlers import chain
    from tests.unit.stage_support import identity

    with pytest.raises(ConfigError, match="runs alone"):
        chain(identity, slow_reverse)  # type: ignore[arg-type]


def test_a_batch_handler_retries_only_the_records_that_asked_for_it() -> None:
    broker = make_broker(partitions=1)
    values, keys = keyed_feed(20, keys=1)
    feed(broker, values, keys)
    seen: list[list[int]] = []

    def batch(items: list[Artifact]) -> list[BatchOutcome]:
        seqs_in = [a.get("seq", 0) for a in items]
        seen.append(seqs_in)
        first = len(seen) == 1
        return [RetryableError("busy") if first and a.get("seq", 0) in (3, 4) else a
                for a in items]

    stage = Stage(options(handler_batch_size=20, handler_batch_wait=0.0, batch_size=20,
                          retry=RetryPolicy(max_attempts=3, initial_backoff=0.01, jitter=0)),
                  broker, batch)
    run_until_idle(stage)
    assert seen[0] == list(range(20)) and seen[1] == [3, 4]
    assert seqs(read_all(broker, "out")) == list(range(20))  # one key: in order
    assert stage.stats.retried == 2
    assert committed(broker) == {TopicPartition("in", 0): 20}


def test_a_handler_mode_that_does_not_fit_the_handler_is_a_config_error() -> None:
    from processor.core.errors import ConfigError

    broker = make_broker()
    with pytest.raises(ConfigError, match="needs an async def handler"):
        Stage(options(handler_mode="async"), broker, lambda a: a)
    with pytest.raises(ConfigError, match="cannot run with handler_mode threads"):
        Stage(options(handler_mode="threads"), broker, slow_reverse)
