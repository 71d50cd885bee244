"""`build_stage`: a stage from its configuration, with its handler, metrics (labelled with
its guarantee), health and, on Kafka, librdkafka statistics."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping

import pytest

from processor.backends.memory import MemoryBroker, MemoryConsumer
from processor.core.artifact import Artifact
from processor.core.errors import ConfigError
from processor.core.handlers import Outcome, Routed
from processor.ops.metrics import LIBRDKAFKA_STATS_INTERVAL_MS, REGISTRY, NullMetrics
from processor.ops.settings import StageConfig, load_config
from processor.runtime.build import StageSetup, build_stage, check_topics
from processor.runtime.commit import AtLeastOnce, ExactlyOnce
from tests.unit.stage_support import (
    CODEC,
    KafkaWithoutKafka,
    artifacts,
    feed,
    make_broker,
    options,
)


def shout(a: Artifact) -> Outcome:
    """Upper-cases the payload; every third artifact also goes to the `audit` output."""
    out = a.with_payload(a.payload.upper())
    return [out, Routed("audit", a)] if a.get("seq", 0) % 3 == 0 else out


def config(name: str, **env: str) -> StageConfig:
    base = {
        "PROCESSOR_NAME": name, "PROCESSOR_INPUT_TOPIC": "in", "PROCESSOR_OUTPUT_TOPIC": "out",
        "PROCESSOR_GROUP": "g", "PROCESSOR_DLQ_TOPIC": "dlq", "PROCESSOR_OUTPUTS": "audit=audit",
        "PROCESSOR_HANDLERS": "tests.unit.test_build:shout", "PROCESSOR_POLL_TIMEOUT": "0",
        # Required by the settings; never dialled: these stages get the in-memory broker.
        "PROCESSOR_BOOTSTRAP_SERVERS": "127.0.0.1:9",
    }
    base.update(env)
    return load_config(None, base, {})


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_the_guarantee_of_the_configuration_reaches_the_stage_and_its_metrics(
    guarantee: str,
) -> None:
    name = f"b-{uuid.uuid4().hex[:8]}"
    stage = build_stage(config(name, PROCESSOR_GUARANTEE=guarantee), make_broker(extra=("audit",)))
    assert stage.options.guarantee == guarantee
    assert isinstance(stage.commits, ExactlyOnce if guarantee == "exactly-once" else AtLeastOnce)
    info = {"stage": name, "input_topic": "in", "output_topic": "out"}
    assert value("processor_stage_info", **info, guarantee=guarantee) == 1
    other = "at-least-once" if guarantee == "exactly-once" else "exactly-once"
    assert value("processor_stage_info", **info, guarantee=other) is None


def test_a_configured_stage_runs_its_registry_handler_and_counts_by_topic() -> None:
    name = f"b-{uuid.uuid4().hex[:8]}"
    broker = make_broker(extra=("audit",))
    stage = build_stage(config(name), broker)
    # Every topic the stage writes to has its series from the start, at zero.
    for topic in ("out", "audit", "dlq"):
        assert value("processor_produced_total", stage=name, topic=topic) == 0
    feed(broker, [CODEC.encode(a) for a in artifacts(30)])
    stage.run(max_records=30, idle_timeout=0.5)
    assert stage.stats.produced == 40
    assert value("processor_consumed_total", stage=name, topic="in") == 30
    assert value("processor_produced_total", stage=name, topic="out") == 30
    assert value("processor_produced_total", stage=name, topic="audit") == 10
    assert value("processor_produced_total", stage=name, topic="dlq") == 0
    assert stage.health.assigned == 0  # closed: nothing assigned any more


def test_options_and_a_handler_given_in_code() -> None:
    broker = make_broker()
    stage = build_stage(StageSetup(options()), broker, handler=lambda a: None,
                        metrics=NullMetrics(), transactional_id="ignored-at-least-once")
    feed(broker, [CODEC.encode(a) for a in artifacts(5)])
    stage.run(max_records=5, idle_timeout=0.5)
    assert stage.stats.dropped == 5
    assert stage.options.transactional_id == "ignored-at-least-once"


def test_what_is_missing_is_named() -> None:
    with pytest.raises(ConfigError, match="at least one --handler"):
        build_stage(StageSetup(options()), MemoryBroker())
    broker = MemoryBroker()
    broker.admin().create_topic("in")
    with pytest.raises(ConfigError, match="out, dlq do not exist"):
        check_topics(broker, options())


STATS = {"name": "rdkafka#consumer-1", "type": "consumer", "replyq": 2,
         "brokers": {"127.0.0.1:9092/1": {"name": "127.0.0.1:9092/1", "nodeid": 1,
                                          "rtt": {"avg": 2000, "p99": 4000, "cnt": 3}}}}


def test_kafka_stages_feed_librdkafka_statistics_to_their_metrics() -> None:
    name = f"b-{uuid.uuid4().hex[:8]}"
    broker = KafkaWithoutKafka()
    build_stage(StageSetup(options(name=name), handlers=("tests.unit.test_build:shout",)),
                broker, producer_settings={"linger.ms": 5})
    consumer, producer = broker.given["consumer"], broker.given["producer"]
    assert consumer["statistics.interval.ms"] == LIBRDKAFKA_STATS_INTERVAL_MS
    assert producer["statistics.interval.ms"] == LIBRDKAFKA_STATS_INTERVAL_MS
    assert producer["linger.ms"] == 5
    stats_cb = consumer["stats_cb"]
    assert callable(stats_cb)
    stats_cb(json.dumps(STATS))
    assert value("processor_librdkafka_broker_rtt_seconds", stage=name, client_type="consumer",
                 broker="127.0.0.1:9092/1") == pytest.approx(0.002)
    assert value("processor_librdkafka_reply_queue_ops", stage=name,
                 client_type="consumer") == 2


def test_statistics_follow_the_configured_interval_and_can_be_switched_off() -> None:
    broker = KafkaWithoutKafka({"statistics.interval.ms": 1000})
    build_stage(StageSetup(options(), handlers=("tests.unit.test_build:shout",)), broker)
    assert "statistics.interval.ms" not in broker.given["consumer"]  # the broker's own
    assert callable(broker.given["consumer"]["stats_cb"])
    off = KafkaWithoutKafka({"statistics.interval.ms": 0})
    build_stage(StageSetup(options(), handlers=("tests.unit.test_build:shout",)), off)
    assert "stats_cb" not in off.given["consumer"]
    assert "stats_cb" not in off.given["producer"]


def test_memory_stages_get_no_librdkafka_settings() -> None:
    seen: list[Mapping[str, object] | None] = []

    class Watching(MemoryBroker):
        def consumer(self, group: str, *, read_committed: bool = False,
                     auto_offset_reset: str = "earliest", client_id: str | None = None,
                     settings: Mapping[str, object] | None = None) -> MemoryConsumer:
            seen.append(settings)
            return super().consumer(group, read_committed=read_committed, client_id=client_id)

    build_stage(StageSetup(options(), handlers=("tests.unit.test_build:shout",)), Watching())
    assert seen == [{}]
