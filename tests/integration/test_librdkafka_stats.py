"""A Kafka stage built by `build_stage` records librdkafka's statistics in its metrics:
the `processor_librdkafka_*` gauges get values from the real clients of a real broker."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from processor.backends.kafka import KafkaBroker
from processor.core.options import StageOptions
from processor.ops.metrics import REGISTRY
from processor.runtime.build import StageSetup, build_stage
from tests.procs import produce_artifacts

pytestmark = [pytest.mark.kafka]

COUNT = 500


def samples(name: str, stage: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called `name` of `stage`, by its labels (without `stage`)."""
    found = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name and sample.labels.get("stage") == stage:
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "stage"))
                found[labels] = sample.value
    return found


def test_a_kafka_stage_records_librdkafka_statistics(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    source, sink, group = unique_name("stats-in"), unique_name("stats-out"), unique_name("g")
    name = unique_name("stats-stage")
    admin = KafkaBroker(kafka_bootstrap).admin()
    for topic in (source, sink):
        admin.create_topic(topic, partitions=2)
    produce_artifacts(KafkaBroker(kafka_bootstrap), source, COUNT)

    options = StageOptions(name=name, input_topic=source, output_topic=sink, group=group,
                           commit_interval=0.2, poll_timeout=0.1)
    stage = build_stage(StageSetup(
        options, handlers=("tests.integration.test_prometheus:identity",),
        bootstrap_servers=kafka_bootstrap, kafka={"statistics.interval.ms": 200},
    ), KafkaBroker(kafka_bootstrap, {"statistics.interval.ms": 200}))

    def rtt(client_type: str) -> list[float]:
        return [value for labels, value in
                samples("processor_librdkafka_broker_rtt_seconds", name).items()
                if ("client_type", client_type) in labels]

    def recorded() -> bool:
        return (stage.stats.consumed >= COUNT and bool(rtt("consumer"))
                and bool(rtt("producer"))
                and bool(samples("processor_librdkafka_producer_queue_messages", name)))

    stage.start()
    deadline = time.monotonic() + 60
    try:
        while not recorded() and time.monotonic() < deadline:
            stage.run_once()
    finally:
        stage.close()
    assert stage.stats.consumed == COUNT
    assert rtt("consumer") and all(0 <= seconds < 5 for seconds in rtt("consumer"))
    assert rtt("producer") and all(0 <= seconds < 5 for seconds in rtt("producer"))
    assert samples("processor_librdkafka_producer_queue_messages", name)
    reply = samples("processor_librdkafka_reply_queue_ops", name)
    assert {dict(labels)["client_type"] for labels in reply} == {"consumer", "producer"}
    assert samples("processor_librdkafka_stats_errors_total", name) == {}
