"""Exactly-once abort and rewind on the in-memory broker: a transaction that fails to
commit is aborted, the stage re-reads its input from where the transaction began, with
and without records held for a retry, and every output is committed exactly once."""

from __future__ import annotations

from collections.abc import Callable

from processor.backends.abstract import TopicPartition
from processor.core.artifact import Artifact
from processor.core.errors import RetryableError, TransactionError
from processor.core.handlers import Outcome
from processor.core.options import RetryPolicy
from processor.runtime.stage import Stage
from tests.unit.stage_support import (
    CODEC,
    ManualClock,
    RecordingMetrics,
    artifacts,
    committed,
    feed,
    identity,
    make_broker,
    options,
    read_all,
    seqs,
)

IN0 = TopicPartition("in", 0)
RETRY = RetryPolicy(max_attempts=5, initial_backoff=1.0, jitter=0)


def fail_next_commit(stage: Stage) -> list[int]:
    """Make the stage's next transaction commit fail (once); returns the failure count."""
    producer = stage.producer
    real: Callable[[float], None] = producer.commit_transaction
    failures: list[int] = []

    def commit_transaction(timeout: float = 30.0) -> None:
        if not failures:
            failures.append(1)
            raise TransactionError("injected: the coordinator moved")
        real(timeout)

    producer.commit_transaction = commit_transaction  # type: ignore[method-assign]
    return failures


def failing_once(*failing: int) -> Callable[[Artifact], Outcome]:
    """A handler raising RetryableError at the first attempt on each seq in `failing`."""
    left = set(failing)

    def handler(a: Artifact) -> Outcome:
        seq = a.get("seq", -1)
        if seq in left:
            left.discard(seq)
            raise RetryableError(f"{seq} not yet")
        return a

    return handler


def test_an_aborted_transaction_is_read_again_and_committed_once() -> None:
    broker = make_broker(partitions=2)
    feed(broker, [CODEC.encode(a) for a in artifacts(30)])
    metrics = RecordingMetrics()
    stage = Stage(options(guarantee="exactly-once", commit_interval=3600), broker, identity,
                  metrics=metrics)
    failures = fail_next_commit(stage)
    stage.start()
    while stage.stats.consumed < 30:
        stage.run_once()
    stage.commit()
    assert failures == [1]
    assert sum(committed(broker).values()) == 0
    assert read_all(broker, "out", read_committed=True) == []
    assert metrics.gauges["in_flight"] == 0
    while stage.stats.consumed < 60:  # everything read again
        stage.run_once()
    stage.commit()
    assert sum(committed(broker).values()) == 30
    assert sorted(seqs(read_all(broker, "out", read_committed=True))) == list(range(30))


def test_abort_with_a_record_held_for_retry_rewinds_to_the_transaction_start() -> None:
    broker = make_broker(partitions=1)
    feed(broker, [CODEC.encode(a) for a in artifacts(10)], keys=[b"k"] * 10)
    clock = ManualClock()
    metrics = RecordingMetrics()
    stage = Stage(options(guarantee="exactly-once", commit_interval=3600, retry=RETRY),
                  broker, failing_once(3), clock=clock, metrics=metrics)
    failures = fail_next_commit(stage)
    stage.start()
    stage.run_once()  # 0..2 produced, 3 held, 4..9 behind it
    assert IN0 in stage.retries
    assert stage.consumer.paused() == [IN0]
    stage.commit()  # fails: aborted, rewound to offset 0, the hold dropped
    assert failures == [1]
    assert not stage.retries
    assert stage.consumer.paused() == []
    assert metrics.paused_by_reason["retry"] == 0
    assert committed(broker).get(IN0, 0) == 0
    for _ in range(3):
        stage.run_once()  # 0..9 again; 3 passes this time
    stage.commit()
    assert committed(broker)[IN0] == 10
    assert seqs(read_all(broker, "out", read_committed=True)) == list(range(10))


def test_abort_after_a_commit_that_left_a_record_held_rewinds_to_the_held_record() -> None:
    broker = make_broker(partitions=1)
    feed(broker, [CODEC.encode(a) for a in artifacts(10)], keys=[b"k"] * 10)
    clock = ManualClock()
    stage = Stage(options(guarantee="exactly-once", commit_interval=3600, retry=RETRY),
                  broker, failing_once(3), clock=clock)
    stage.start()
    stage.run_once()  # 0..2 produced, 3 held
    stage.commit()  # 0..2 committed; 3..9 belong to the next transaction
    assert committed(broker)[IN0] == 3
    assert seqs(read_all(broker, "out", read_committed=True)) == [0, 1, 2]
    assert stage.commits.rewind_to == {IN0: 3}
    clock.advance(RETRY.initial_backoff)
    stage.run_once()  # the retry passes: 3..9 produced in a new transaction
    assert not stage.retries
    failures = fail_next_commit(stage)
    stage.commit()  # aborted: back to offset 3
    assert failures == [1]
    assert committed(broker)[IN0] == 3
    for _ in range(3):
        stage.run_once()
    stage.commit()
    assert committed(broker)[IN0] == 10
    assert seqs(read_all(broker, "out", read_committed=True)) == list(range(10))
