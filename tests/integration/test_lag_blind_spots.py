"""Lag without blind spots, on a real Kafka: `processor lag` and a stage's lag metric count
the partitions of the group's topics that have no committed offset yet."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable

import pytest

from processor.backends.abstract import TopicPartition
from processor.backends.kafka import KafkaBroker
from processor.cli.main import main
from processor.ops.lag import collect_lag
from processor.runtime.stage import Stage
from tests.procs import produce_artifacts
from tests.unit.stage_support import RecordingMetrics, identity, options

pytestmark = [pytest.mark.kafka]

PARTITIONS = 3


def per_partition(broker: KafkaBroker, topic: str, counts: list[int]) -> None:
    producer = broker.producer()
    for partition, count in enumerate(counts):
        for i in range(count):
            producer.produce(topic, b"x%d" % i, None, partition=partition)
    assert producer.flush(30) == 0
    producer.close()


def test_partitions_without_a_committed_offset_count_as_lag(
        kafka_bootstrap: str, unique_name: Callable[[str], str]) -> None:
    broker = KafkaBroker(kafka_bootstrap)
    topic, group = unique_name("lag-blind"), unique_name("lag-blind-g")
    broker.admin().create_topic(topic, partitions=PARTITIONS)
    per_partition(broker, topic, [10, 20, 30])
    # The group committed in partition 0 only, as a consumer that has read only there.
    consumer = broker.consumer(group)
    consumer.commit({TopicPartition(topic, 0): 4})
    consumer.close()

    rows = {r.partition: r for r in collect_lag(kafka_bootstrap, group)}
    assert sorted(rows) == [0, 1, 2]  # before: partition 0 only
    assert [rows[p].committed for p in range(3)] == [4, None, None]
    assert [rows[p].lag for p in range(3)] == [6, 20, 30]
    latest = {r.partition: r.lag for r in collect_lag(kafka_bootstrap, group,
                                                      offset_reset="latest")}
    assert latest == {0: 6, 1: 0, 2: 0}

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["lag", "--bootstrap-servers", kafka_bootstrap, "--group", group]) == 0
    lines = out.getvalue().splitlines()
    assert lines[-1].split() == ["total", "56"]
    assert lines[2].split() == [topic, "1", "-", "20", "20"]


def test_a_running_group_without_commits_is_not_unknown(
        kafka_bootstrap: str, unique_name: Callable[[str], str]) -> None:
    """A stage that joined and has not committed yet: its topic's lag is all of it."""
    broker = KafkaBroker(kafka_bootstrap)
    topic, group = unique_name("lag-new"), unique_name("lag-new-g")
    broker.admin().create_topic(topic, partitions=PARTITIONS)
    per_partition(broker, topic, [5, 6, 7])
    consumer = broker.consumer(group)
    assigned: list[TopicPartition] = []
    consumer.subscribe([topic], on_assign=assigned.extend)
    try:
        for _ in range(100):
            consumer.consume(1, 0.2)
            if len(assigned) == PARTITIONS:
                break
        assert len(assigned) == PARTITIONS
        rows = collect_lag(kafka_bootstrap, group)
        assert sum(r.lag for r in rows) == 18
        assert {r.committed for r in rows} == {None}
    finally:
        consumer.close()


class LagAtAssignment(Stage):
    """Reports its lag the moment partitions are assigned, before any is fetched."""

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        super()._on_assign(partitions)
        self._report_lag()


def test_the_stage_metric_counts_every_assigned_partition(
        kafka_bootstrap: str, unique_name: Callable[[str], str]) -> None:
    broker = KafkaBroker(kafka_bootstrap)
    source, sink = unique_name("lag-stage-in"), unique_name("lag-stage-out")
    admin = broker.admin()
    admin.create_topic(source, partitions=PARTITIONS)
    admin.create_topic(sink, partitions=1)
    produce_artifacts(broker, source, 300, keys=30)
    metrics = RecordingMetrics()
    stage = LagAtAssignment(
        options(input_topic=source, output_topic=sink, dlq_topic=None,
                group=unique_name("lag-stage-g"), batch_size=1, commit_interval=1000.0,
                poll_timeout=0.5),
        broker, identity, metrics=metrics)
    try:
        stage.start()
        for _ in range(60):
            if stage.run_once():
                break
        # Reported at the assignment, when the client knew no end offset yet.
        assert sorted(metrics.lags) == [0, 1, 2]
        assert sum(metrics.lags.values()) == 300
    finally:
        stage.close()
