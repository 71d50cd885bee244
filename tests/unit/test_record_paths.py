"""Every handler kind follows the same rules, decided on the in-memory broker for sync,
async, threads and batch: the per-call deadline, too-large outputs, the bound on output
bytes in flight. (The confirmed losses of the concurrent paths are in
`test_fatal_paths.py`.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import pytest

from processor.core.artifact import Artifact
from processor.core.handlers import BatchOutcome, Outcome
from processor.core.options import EXACTLY_ONCE, RetryPolicy
from processor.runtime.stage import Stage
from tests.unit.stage_support import (
    CODEC,
    artifacts,
    committed,
    feed,
    make_broker,
    options,
    read_all,
)

KINDS = ("sync", "async", "threads", "batch")
GUARANTEES = ("at-least-once", EXACTLY_ONCE)


def handler_of(kind: str, fn: Callable[[Artifact], Outcome]) -> object:
    """`fn` as a handler of `kind` (the batch handler answers per record; an exception
    stands in for its record's outcome)."""
    if kind == "async":
        async def handle(a: Artifact) -> Outcome:
            return fn(a)
        return handle
    if kind == "batch":
        def handle_batch(batch: list[Artifact]) -> Sequence[BatchOutcome]:
            out: list[BatchOutcome] = []
            for a in batch:
                try:
                    out.append(fn(a))
                except BaseException as exc:
                    out.append(exc)
            return out
        return handle_batch
    return fn


def mode_of(kind: str) -> str:
    return {"sync": "sync", "async": "async", "threads": "threads", "batch": "sync"}[kind]


@pytest.mark.parametrize("kind", ["threads", "batch"])
def test_handler_timeout_applies_to_threads_and_batch_handlers(kind: str) -> None:
    """A call stuck past `handler_timeout` is retried, then dead-lettered, on the threads
    and batch paths too (it was ignored there); the other records pass."""
    release = threading.Event()

    def handler(a: Artifact) -> Outcome:
        if a.get("seq") == 3:
            release.wait(30)
        return a

    broker = make_broker(partitions=1)
    feed(broker, [CODEC.encode(a) for a in artifacts(8)], keys=[b"k%d" % i for i in range(8)])
    stage = Stage(options(handler_mode=mode_of(kind), handler_timeout=0.5,
                          retry=RetryPolicy(max_attempts=2, initial_backoff=0.01,
                                            max_backoff=0.01),
                          handler_batch_size=1, handler_batch_wait=0.0, max_concurrency=4),
                  broker, handler_of(kind, handler))  # type: ignore[arg-type]
    try:
        stage.run(idle_timeout=3.0)
    finally:
        release.set()
    dead = read_all(broker, "dlq")
    assert [CODEC.decode(m.value() or b"").get("seq") for m in dead] == [3]
    out = {CODEC.decode(m.value() or b"").get("seq") for m in read_all(broker, "out")}
    assert out == set(range(8)) - {3}
    assert committed(broker)


@pytest.mark.parametrize("guarantee", GUARANTEES)
@pytest.mark.parametrize("kind", ["async", "threads", "batch"])
def test_too_large_outputs_are_recovered_on_the_concurrent_paths(kind: str,
                                                                 guarantee: str) -> None:
    """Outputs refused as too large: a concurrent stage re-reads and dead-letters their
    inputs (`too-large`) and goes on, as the synchronous one does (it stopped before)."""
    from processor.runtime.dead_letters import H_REASON, header_dict
    from tests.unit.test_too_large import LIMIT, broker_with_small_output, feed_sizes, seq_of

    def grow(a: Artifact) -> Outcome:
        return a.with_payload(a.payload * 10)

    broker = broker_with_small_output()
    sizes = [10, 50, 9_000, 20, 200, 7_000, 30, 1_000, 5, 5_000] * 3
    feed_sizes(broker, sizes)
    stage = Stage(options(guarantee=guarantee, handler_mode=mode_of(kind), commit_interval=1000.0,
                          max_in_flight=20, handler_batch_wait=0.0, handler_batch_size=4),
                  broker, handler_of(kind, grow))  # type: ignore[arg-type]
    stage.start()
    give_up = time.monotonic() + 60  # a safety net only: the calls finish in their time
    while time.monotonic() < give_up:
        if not stage.run_once() and not (stage.concurrent and stage.concurrent.busy):
            stage.commit()
        if sum(committed(broker).values()) == len(sizes):
            break
    stage.close()
    too_big = {str(i) for i, size in enumerate(sizes) if size * 10 + 300 > LIMIT}
    fits = {str(i) for i in range(len(sizes))} - too_big
    out = [seq_of(m.value()) for m in read_all(broker, "out", read_committed=True)]
    dlq = read_all(broker, "dlq", read_committed=True)
    assert set(out) == fits
    assert sorted(seq_of(m.value()) for m in dlq) == sorted(too_big)  # each once
    assert {header_dict(m.headers())[H_REASON] for m in dlq} == {"too-large"}
    if guarantee == EXACTLY_ONCE:
        assert sorted(out) == sorted(fits)
    assert sum(committed(broker).values()) == len(sizes)
    assert not stage.oversize.singly


@pytest.mark.parametrize("kind", KINDS)
def test_output_bytes_since_the_last_commit_are_bounded(kind: str) -> None:
    """`max_in_flight_bytes` starts an early commit on every path: 40 outputs of 32 KB
    with a 100 KB bound commit many times, and never hold much more than the bound."""
    broker = make_broker(partitions=1)
    big = [Artifact.new(b"x" * 32_000, meta={"seq": i}) for i in range(40)]
    feed(broker, [CODEC.encode(a) for a in big], keys=[b"k%d" % i for i in range(40)])
    limit = 100_000
    stage = Stage(options(handler_mode=mode_of(kind), commit_interval=1000.0, batch_size=2,
                          max_in_flight_bytes=limit, handler_batch_size=2,
                          handler_batch_wait=0.0, max_concurrency=2),
                  broker, handler_of(kind, lambda a: a.with_meta(seen=True)))  # type: ignore[arg-type]
    stage.start()
    most = 0
    give_up = time.monotonic() + 30  # a safety net only: threads finish in their time
    while time.monotonic() < give_up:
        stage.run_once()
        most = max(most, stage.ledger.produced_bytes)
        if sum(committed(broker).values()) == 40:
            break
    stage.close()
    assert sum(committed(broker).values()) == 40
    assert stage.stats.commits >= 40 * 32_000 // (limit + 8 * 33_000)
    assert most < limit + 8 * 33_000  # the bound, plus what one turn may add


def test_backpressure_pauses_on_unacknowledged_bytes_and_resumes_at_half() -> None:
    from processor.backends.abstract import TopicPartition
    from processor.runtime.flow import Backpressure

    broker = make_broker(partitions=2)
    consumer = broker.consumer("g")
    consumer.subscribe(["in"])
    consumer.consume(1, 0.05)
    assigned = set(consumer.assignment())
    assert assigned == {TopicPartition("in", 0), TopicPartition("in", 1)}
    unacknowledged = [0]
    flow = Backpressure("s1", consumer, broker.producer(), limit=1_000_000,
                        byte_limit=1_000, unacknowledged_bytes=lambda: unacknowledged[0])
    assert not flow.check(assigned, set())
    unacknowledged[0] = 1_000
    assert flow.check(assigned, set()) and flow.paused == assigned
    assert set(consumer.paused()) == assigned
    unacknowledged[0] = 600  # above half: stays paused
    assert not flow.check(assigned, set())
    unacknowledged[0] = 500
    assert flow.check(assigned, set()) and not flow.paused
    assert not consumer.paused()
    consumer.close()
