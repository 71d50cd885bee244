"""What only the Kafka backend has: settings it refuses, an unreachable cluster, a full
local producer queue, and a three-node cluster losing a node (all on real brokers)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import pytest

from processor.backends.abstract import TopicPartition
from processor.backends.kafka import KafkaBroker
from processor.core.errors import BrokerUnavailable, ConfigError
from processor.devtools.local_kafka import LocalKafka, free_ports
from processor.runtime.flow import Backpressure
from tests.conformance.helpers import payloads

Name = Callable[[str], str]

# A port nothing listens on: settings are refused before any connection is tried.
NOWHERE = f"127.0.0.1:{free_ports(1)[0]}"


@pytest.mark.parametrize(
    ("settings", "read_committed", "message"),
    [
        ({"enable.auto.commit": True}, False, "enable.auto.commit"),
        ({"enable.auto.commit": "true"}, False, "enable.auto.commit"),
        ({"enable.auto.offset.store": "true"}, False, "enable.auto.offset.store"),
        ({"isolation.level": "read_uncommitted"}, True, "isolation.level"),
        ({"isolation.level": "read_committed"}, False, "isolation.level"),
        ({"group.id": "someone-else"}, False, "group.id"),
        ({"auto.offset.reset": "latest"}, False, "auto.offset.reset"),
        ({"enable.auto.commit": "maybe"}, False, "true or false"),
    ],
)
def test_unsafe_consumer_settings_are_refused(
    settings: Mapping[str, object], read_committed: bool, message: str
) -> None:
    broker = KafkaBroker(NOWHERE)
    with pytest.raises(ConfigError, match=message):
        broker.consumer("group", read_committed=read_committed, settings=settings)
    with pytest.raises(ConfigError, match=message):
        KafkaBroker(NOWHERE, settings).consumer("group", read_committed=read_committed)


@pytest.mark.parametrize(
    ("settings", "transactional_id", "message"),
    [
        ({"enable.idempotence": False}, "txn-1", "enable.idempotence=false"),
        ({"enable.idempotence": "false"}, "txn-1", "enable.idempotence=false"),
        ({"acks": "1"}, None, "acks=1"),
        ({"acks": 0}, "txn-1", "acks=0"),
        ({"transactional.id": "sneaky"}, None, "transactional.id"),
    ],
)
def test_unsafe_producer_settings_are_refused(
    settings: Mapping[str, object], transactional_id: str | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        KafkaBroker(NOWHERE).producer(transactional_id=transactional_id, settings=settings)


def test_conflicting_bootstrap_setting_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"bootstrap\.servers"):
        KafkaBroker(NOWHERE, {"bootstrap.servers": "elsewhere:9092"})
    with pytest.raises(ConfigError, match="empty"):
        KafkaBroker(" ")


@pytest.mark.timeout(30)
def test_unreachable_cluster_raises_broker_unavailable_quickly() -> None:
    broker = KafkaBroker(NOWHERE, connect_timeout=2.0)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=NOWHERE.replace(".", r"\.")):
        broker.admin()
    with pytest.raises(BrokerUnavailable):
        broker.producer()
    with pytest.raises(BrokerUnavailable):
        broker.consumer("group")
    assert time.monotonic() - started < 15


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_other_librdkafka_settings_pass_through(kafka_broker: KafkaBroker) -> None:
    producer = kafka_broker.producer(settings={"linger.ms": 50, "compression.type": "zstd"})
    producer.close()
    consumer = kafka_broker.consumer("g", settings={"fetch.wait.max.ms": 50,
                                                    "partition.assignment.strategy": "range"})
    consumer.close()
    with pytest.raises(ConfigError, match=r"no\.such\.setting"):
        kafka_broker.producer(settings={"no.such.setting": 1})


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_full_local_queue_blocks_instead_of_dropping(
    kafka_broker: KafkaBroker, unique_name: Name
) -> None:
    topic = unique_name("topic")
    kafka_broker.admin().create_topic(topic, partitions=2)
    producer = kafka_broker.producer(settings={"queue.buffering.max.messages": 5})
    for i in range(3000):
        producer.produce(topic, b"%d" % i)
    assert producer.flush(60) == 0
    assert producer.take_delivery_errors() == []
    assert sum(kafka_broker.admin().high_watermarks(topic).values()) == 3000
    producer.close()


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_three_node_cluster_survives_losing_a_node(unique_name: Name) -> None:
    """acks=all with min.insync.replicas=2 keeps producing, without loss or duplicates,
    while one node of three is down; the node rejoins afterwards."""
    with LocalKafka(nodes=3) as cluster:
        broker = KafkaBroker(cluster.bootstrap_servers)
        admin = broker.admin()
        topic = unique_name("topic")
        admin.create_topic(topic, partitions=3, replication=3)
        producer = broker.producer(settings={"message.timeout.ms": 60_000})
        sent = 0

        def produce(count: int) -> None:
            nonlocal sent
            for _ in range(count):
                producer.produce(topic, b"%06d" % sent, key=b"k%d" % (sent % 17))
                sent += 1
            assert producer.flush(90) == 0
            assert producer.take_delivery_errors() == []

        produce(500)
        cluster.kill_node(1)
        produce(1000)  # two in-sync replicas remain: acks=all still succeeds

        group = unique_name("group")
        consumer = broker.consumer(group)
        consumer.subscribe([topic])
        seen: list[bytes] = []
        deadline = time.monotonic() + 90
        while len(seen) < sent and time.monotonic() < deadline:
            seen.extend(payloads(consumer.consume(500, 0.5)))
        assert len(seen) == sent, f"{sent - len(seen)} records missing"
        assert sorted(seen) == [b"%06d" % i for i in range(sent)], "lost or duplicated"
        consumer.commit({TopicPartition(topic, p): h
                         for p, h in enumerate(consumer_highs(broker, topic))})
        consumer.close()

        cluster.start_node(1)
        produce(200)
        assert sum(admin.high_watermarks(topic).values()) == sent
        assert sum(admin.group_offsets(group, [topic]).values()) == sent - 200
        producer.close()


def consumer_highs(broker: KafkaBroker, topic: str) -> list[int]:
    highs = broker.admin().high_watermarks(topic)
    return [highs[TopicPartition(topic, p)] for p in range(len(highs))]


def _refill_stalls(kafka_broker: KafkaBroker, topic: str, group: str,
                   settings: Mapping[str, object], records: int, stop_at: int) -> int:
    """Read `records` through a local queue of about 50 records (and fetches of about as
    many), 50 at a time, 10 ms apart; counts the `consume` calls that found nothing within
    0.4 s while records were still to come (the fetcher idle with the broker holding a
    backlog). Stops at `stop_at` stalls."""
    consumer = kafka_broker.consumer(group, settings={
        "queued.min.messages": 50, "max.partition.fetch.bytes": 16_384, **settings})
    try:
        consumer.subscribe([topic])
        seen = stalls = 0
        deadline = time.monotonic() + 60
        while seen < records and stalls < stop_at and time.monotonic() < deadline:
            got = len(consumer.consume(50, 0.4))
            if got == 0 and seen > 0:
                stalls += 1
            seen += got
            time.sleep(0.01)  # the stage's work on them: the fetcher finds the queue full
        assert seen == records or stalls >= stop_at
        return stalls
    finally:
        consumer.close()


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_consumer_refills_its_local_queue_without_stalling(
    kafka_broker: KafkaBroker, unique_name: Name
) -> None:
    """A consumer whose local queue is full looks again after `fetch.queue.backoff.ms`:
    the default here (10 ms) keeps a stage that works slower than the fetcher fed, where
    librdkafka's own default (1000 ms) leaves it idle up to a second at each refill."""
    topic = unique_name("topic")
    kafka_broker.admin().create_topic(topic, partitions=1)
    # Small record batches: a fetch returns whole batches, whatever its size limit.
    producer = kafka_broker.producer(settings={"batch.size": 16_384})
    for i in range(2000):
        producer.produce(topic, b"x" * 300, b"%d" % i)
    assert producer.flush(60) == 0
    producer.close()
    assert _refill_stalls(kafka_broker, topic, unique_name("group"), {}, 2000, 5) == 0
    # The control: librdkafka's default, set explicitly, stalls.
    assert _refill_stalls(kafka_broker, topic, unique_name("group"),
                          {"fetch.queue.backoff.ms": 1000}, 2000, 2) >= 1


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_backpressure_counts_only_unacknowledged_output(
    kafka_broker: KafkaBroker, unique_name: Name
) -> None:
    """librdkafka counts a record until its delivery was served by a poll, acknowledged or
    not; a busy stage polls only at its commits. The producer's `outstanding()` serves the
    deliveries before it counts, so acknowledged output does not pause the stage."""
    topic = unique_name("topic")
    kafka_broker.admin().create_topic(topic, partitions=1)
    producer = kafka_broker.producer()
    consumer = kafka_broker.consumer(unique_name("group"))
    try:
        producer.produce(topic, b"first")  # the topic's metadata, then a clean count
        assert producer.flush(30) == 0
        for i in range(2000):
            producer.produce(topic, b"%d" % i)
        time.sleep(2.0)  # a local broker acknowledges them in milliseconds
        # librdkafka's own count: acknowledged, but not served yet.
        assert len(producer._p) >= 2000
        backpressure = Backpressure("stage", consumer, producer, limit=1000)
        tp = TopicPartition(topic, 0)
        assert backpressure.check({tp}, set()) is False
        assert not backpressure.active
        assert producer.outstanding() == 0
        assert sum(kafka_broker.admin().high_watermarks(topic).values()) == 2001
    finally:
        consumer.close()
        producer.close()
