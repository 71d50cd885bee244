"""A delivery failure inside a stage, on the in-memory broker (`FaultInjector`): no
input offset past a failed output is ever committed, and nothing is lost."""

from __future__ import annotations

import pytest

from processor.backends.abstract import TopicPartition
from processor.backends.memory import FaultInjector
from processor.core.errors import DeliveryFailed
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


def test_at_least_once_commits_nothing_past_a_failed_output_not_even_at_shutdown() -> None:
    broker = make_broker(partitions=1)
    feed(broker, [CODEC.encode(a) for a in artifacts(20)], keys=[b"k"] * 20)
    FaultInjector(broker).fail_deliveries(1, "out", reason="disk full", retriable=False)
    clock = ManualClock()
    stage = Stage(options(commit_interval=1.0), broker, identity, clock=clock)
    stage.start()
    stage.run_once()
    assert stage.stats.consumed == 20
    clock.advance(1.0)
    with pytest.raises(DeliveryFailed, match="disk full"):
        stage.run_once()
    stage.close()  # the final commit must not commit the records of the failed output
    assert committed(broker).get(IN0, 0) == 0
    assert len(read_all(broker, "out")) == 19

    # The next owner of the partition handles every record again: nothing is lost.
    again = Stage(options(), broker, identity)
    again.run(idle_timeout=0.3)
    assert committed(broker)[IN0] == 20
    out = seqs(read_all(broker, "out"))
    assert set(out) == set(range(20))
    assert len(out) == 39  # the 19 delivered before the failure, twice


def test_a_delivery_failure_stops_a_running_stage_without_committing() -> None:
    broker = make_broker(partitions=2)
    feed(broker, [CODEC.encode(a) for a in artifacts(30)])
    FaultInjector(broker).fail_deliveries(1, "out")
    stage = Stage(options(), broker, identity)
    with pytest.raises(DeliveryFailed):
        stage.run(idle_timeout=5.0)
    assert stage.wait_stopped(0)
    assert sum(committed(broker).values()) == 0


def test_exactly_once_aborts_a_transaction_with_a_failed_output_and_reads_again() -> None:
    broker = make_broker(partitions=2)
    feed(broker, [CODEC.encode(a) for a in artifacts(30)])
    FaultInjector(broker).fail_deliveries(1, "out")
    metrics = RecordingMetrics()
    stage = Stage(options(guarantee="exactly-once", commit_interval=3600), broker, identity,
                  metrics=metrics)
    stage.start()
    while stage.stats.consumed < 30:
        stage.run_once()
    stage.commit()  # the transaction holds a failed output: aborted, input rewound
    assert metrics.observed["transaction"] == []
    assert sum(committed(broker).values()) == 0
    assert read_all(broker, "out", read_committed=True) == []
    while stage.stats.consumed < 60:
        stage.run_once()
    stage.commit()
    assert len(metrics.observed["transaction"]) == 1
    assert sum(committed(broker).values()) == 30
    assert sorted(seqs(read_all(broker, "out", read_committed=True))) == list(range(30))
