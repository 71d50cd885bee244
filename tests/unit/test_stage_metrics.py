"""What a stage reports to its metrics, on the in-memory broker, with metrics that record
every call: every count moves by what happened, under the right label."""

from __future__ import annotations

from processor.core.artifact import Artifact
from processor.core.errors import InvalidArtifact, RetryableError
from processor.core.handlers import Outcome
from processor.core.options import RetryPolicy
from processor.ops.metrics import LATENCY_SAMPLE_EVERY, PAUSE_BACKPRESSURE, PAUSE_RETRY
from processor.runtime.stage import Stage
from tests.unit.stage_support import (
    CODEC,
    ManualClock,
    RecordingMetrics,
    artifacts,
    feed,
    identity,
    make_broker,
    options,
    read_all,
    route_by_seq,
)


def drain(stage: Stage, records: int, turns: int = 200) -> None:
    stage.start()
    for _ in range(turns):
        stage.run_once()
        if stage.stats.consumed >= records and not stage.retries:
            break


def test_every_sampled_record_is_observed_not_only_the_last_of_a_batch() -> None:
    count = LATENCY_SAMPLE_EVERY * 4
    broker = make_broker(partitions=1)
    feed(broker, [CODEC.encode(a) for a in artifacts(count)], keys=[b"k"] * count)
    metrics = RecordingMetrics()
    stage = Stage(options(batch_size=count), broker, identity, metrics=metrics)
    stage.start()
    while stage.stats.consumed < count:
        stage.run_once()
    assert metrics.observed["batch"] == [count]  # one batch
    assert len(metrics.observed["handler"]) == 4
    assert len(metrics.observed["e2e"]) == 4
    assert all(seconds >= 0 for seconds in metrics.observed["handler"])


def test_outputs_are_counted_under_the_topic_they_went_to() -> None:
    broker = make_broker(extra=("audit",))
    route = route_by_seq
    feed(broker, [CODEC.encode(a) for a in artifacts(30)])
    metrics = RecordingMetrics()
    stage = Stage(options(outputs={"audit": "audit"}), broker, route, metrics=metrics)
    stage.run(max_records=30, idle_timeout=0.5)
    out, audit = read_all(broker, "out"), read_all(broker, "audit")
    assert dict(metrics.produced_by_topic) == {"out": 20, "audit": 10}
    assert metrics.produced_bytes_by_topic["out"] == sum(len(m.value() or b"") for m in out)
    assert metrics.produced_bytes_by_topic["audit"] == sum(len(m.value() or b"") for m in audit)
    assert metrics.counts["dropped"] == 10


def test_counts_dead_letters_failures_and_state() -> None:
    broker = make_broker(partitions=3)
    good = [CODEC.encode(a) for a in artifacts(40)]
    invalid = CODEC.encode(Artifact.new("reject me"))
    crash = CODEC.encode(Artifact.new("crash"))
    values = [*good, b"\x00 not avro", invalid, crash]
    feed(broker, values)

    def strict(a: Artifact) -> Outcome:
        if a.payload == b"reject me":
            raise InvalidArtifact("no")
        if a.payload == b"crash":
            raise ZeroDivisionError("bad math")
        return a

    metrics = RecordingMetrics()
    stage = Stage(options(commit_interval=3600), broker, strict, metrics=metrics)
    drain(stage, len(values))
    assert metrics.counts["consumed"] == len(values) == stage.stats.consumed
    assert metrics.counts["consumed_bytes"] == sum(len(v) for v in values)
    assert sum(metrics.observed["batch"]) == len(values)
    assert dict(metrics.dead_by_reason) == {"decode": 1, "invalid": 1, "handler-error": 1}
    assert metrics.counts["failed"] == 1
    dlq = read_all(broker, "dlq")
    assert metrics.produced_by_topic["dlq"] == 3 == len(dlq)
    assert metrics.produced_bytes_by_topic["dlq"] == sum(len(m.value() or b"") for m in dlq)
    assert metrics.produced_by_topic["out"] == 40
    assert metrics.gauges["assigned"] == 3
    assert metrics.rebalances["assign"] == 1
    assert metrics.gauges["in_flight"] == 43  # 40 outputs and 3 dead letters, uncommitted
    assert metrics.observed["commit"] == []

    stage.commit()
    assert metrics.gauges["in_flight"] == 0
    assert len(metrics.observed["commit"]) == 1
    assert metrics.observed["transaction"] == []


def test_a_retried_record_counts_once_and_its_partition_shows_as_paused_for_retry() -> None:
    broker = make_broker(partitions=1)
    values = [CODEC.encode(a) for a in artifacts(10)]
    feed(broker, values, keys=[b"k"] * 10)
    failures = {3: 2}

    def flaky(a: Artifact) -> Outcome:
        seq = a.get("seq", 0)
        if failures.get(seq, 0) > 0:
            failures[seq] -= 1
            raise RetryableError("later")
        return a

    clock = ManualClock()
    metrics = RecordingMetrics()
    retry = RetryPolicy(max_attempts=5, initial_backoff=1.0, jitter=0)
    stage = Stage(options(retry=retry), broker, flaky, metrics=metrics, clock=clock)
    stage.start()
    stage.run_once()
    assert metrics.paused_by_reason == {PAUSE_RETRY: 1, PAUSE_BACKPRESSURE: 0}
    assert metrics.counts["retried"] == 1
    clock.advance(1.0)
    stage.run_once()  # the second attempt fails too
    assert metrics.paused_by_reason[PAUSE_RETRY] == 1
    assert metrics.counts["retried"] == 2
    clock.advance(2.0)
    stage.run_once()  # the third succeeds, and the records behind it follow
    assert metrics.paused_by_reason[PAUSE_RETRY] == 0
    assert stage.stats.consumed == 10
    assert metrics.counts["consumed"] == 10
    assert metrics.counts["consumed_bytes"] == sum(len(v) for v in values)
    assert sum(metrics.observed["batch"]) == 10  # retries are not batches
    assert metrics.produced_by_topic["out"] == 10


def test_lag_is_reported_per_partition_every_few_seconds() -> None:
    broker = make_broker(partitions=2)
    feed(broker, [CODEC.encode(a) for a in artifacts(40)])
    clock = ManualClock()
    metrics = RecordingMetrics()
    stage = Stage(options(batch_size=5), broker, identity, metrics=metrics, clock=clock)
    stage.start()
    stage.run_once()
    stage.run_once()
    assert metrics.lags == {}
    clock.advance(5.0)
    stage.run_once()
    assert set(metrics.lags) == {0, 1}
    assert sum(metrics.lags.values()) == 40 - stage.stats.consumed


def test_the_broker_probe_sets_readiness() -> None:
    broker = make_broker(partitions=2)
    stage = Stage(options(), broker, identity)
    stage.start()
    stage.run_once()  # joins the group: partitions assigned
    stage.health.set_broker_ok(False)
    stage.probe.probe()  # what the probe's thread does every few seconds
    assert stage.health.broker_ok
    stage.close()


def test_exactly_once_observes_transactions_not_commits() -> None:
    broker = make_broker()
    feed(broker, [CODEC.encode(a) for a in artifacts(20)])
    metrics = RecordingMetrics()
    stage = Stage(options(guarantee="exactly-once", commit_interval=3600), broker, identity,
                  metrics=metrics)
    drain(stage, 20)
    stage.commit()
    assert len(metrics.observed["transaction"]) == 1
    assert metrics.observed["commit"] == []
    assert metrics.gauges["in_flight"] == 0
