"""Revocation while records are held for a retry, on the in-memory broker: the stage
commits up to the held record, drops what it held, and the partition's new owner
handles the held record and those behind it; nothing is lost or produced twice."""

from __future__ import annotations

from processor.backends.abstract import Broker, TopicPartition
from processor.core.artifact import Artifact
from processor.core.errors import RetryableError
from processor.core.handlers import Outcome
from processor.core.options import RetryPolicy
from processor.ops.metrics import PAUSE_RETRY
from processor.runtime.stage import Stage
from tests.unit.stage_support import (
    CODEC,
    ManualClock,
    RecordingMetrics,
    artifacts,
    committed,
    make_broker,
    options,
    read_all,
    seqs,
)

IN0, IN1 = TopicPartition("in", 0), TopicPartition("in", 1)
RETRY = RetryPolicy(max_attempts=5, initial_backoff=1.0, jitter=0)


def feed_partitions(broker: Broker) -> None:
    """seq 0..4 to partition 0, seq 5..9 to partition 1."""
    producer = broker.producer()
    for a in artifacts(10):
        seq = a.get("seq", 0)
        producer.produce("in", CODEC.encode(a), b"k", partition=0 if seq < 5 else 1)
    producer.flush()


def test_a_revoked_partition_drops_its_held_records_for_the_new_owner() -> None:
    broker = make_broker(partitions=2)
    feed_partitions(broker)
    once = {6}

    def flaky(a: Artifact) -> Outcome:
        seq = a.get("seq", -1)
        if seq in once:
            once.discard(seq)
            raise RetryableError("not yet")
        return a

    clock = ManualClock()
    metrics = RecordingMetrics()
    first = Stage(options(name="first", retry=RETRY, commit_interval=3600), broker, flaky,
                  clock=clock, metrics=metrics)
    first.start()
    first.run_once()  # partition 0 done; in partition 1, 5 done, 6 held, 7..9 behind it
    assert IN1 in first.retries
    assert metrics.paused_by_reason[PAUSE_RETRY] == 1

    second = Stage(options(name="second", retry=RETRY), broker, flaky)
    second.start()  # joins the group: the first member revokes in its next poll
    first.run_once()
    assert committed(broker) == {IN0: 5, IN1: 1}  # up to the held record (seq 6), not past
    assert not first.retries
    assert metrics.paused_by_reason[PAUSE_RETRY] == 0
    assert metrics.rebalances["revoke"] == 1
    assert first.consumer.assignment() == [IN0]

    clock.advance(RETRY.initial_backoff)  # the old retry would be due now
    for _ in range(3):
        first.run_once()
    assert first.stats.produced == 6  # 0..5 only: it never retries what it gave away

    for _ in range(10):
        second.run_once()
        if second.stats.consumed == 4 and not second.retries:
            break
    assert second.stats.consumed == 4
    assert second.stats.retried == 0  # the failure was used up by the first member
    second.close()
    first.close()
    assert committed(broker) == {IN0: 5, IN1: 5}
    assert sorted(seqs(read_all(broker, "out"))) == list(range(10))
