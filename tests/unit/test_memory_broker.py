"""The in-memory broker's own behaviour: partitioning, records, settings and offsets.

Shared behaviour is in tests/conformance; groups, transactions and time are in the
other test_memory_*.py files.
"""

from __future__ import annotations

import time
import zlib

import pytest

from processor.backends.abstract import TopicPartition
from processor.backends.memory import FaultInjector, ManualClock, MemoryBroker, murmur2
from processor.core.errors import (
    BackendError,
    ConfigError,
    OffsetOutOfRange,
    RebalanceInProgress,
    UnknownTopic,
)
from tests.unit.memory_support import make, member, tps

# --- partitioning --------------------------------------------------------------------------

# Kafka's own murmur2 test vectors (org.apache.kafka.common.utils.UtilsTest), signed 32-bit.
KAFKA_MURMUR2 = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]


@pytest.mark.parametrize(("key", "signed"), KAFKA_MURMUR2)
def test_murmur2_matches_kafka(key: bytes, signed: int) -> None:
    assert murmur2(key) == signed & 0xFFFFFFFF


@pytest.mark.parametrize(("key", "signed"), KAFKA_MURMUR2)
def test_keys_land_where_the_java_client_puts_them(key: bytes, signed: int) -> None:
    broker, topic = make(partitions=7)
    broker.producer().produce(topic, b"v", key=key)
    expected = (signed & 0x7FFFFFFF) % 7
    marks = broker.admin().high_watermarks(topic)
    assert [tp.partition for tp, high in marks.items() if high] == [expected]


def test_consistent_partitioner_uses_crc32() -> None:
    broker, topic = make(partitions=5)
    producer = broker.producer(settings={"partitioner": "consistent_random"})
    keys = [b"alpha", b"beta", b"gamma", b"delta"]
    for key in keys:
        producer.produce(topic, key, key=key)
    consumer = member(broker, topic)
    got = {m.key(): m.partition() for m in consumer.consume(10, 0)}
    assert got == {key: zlib.crc32(key) % 5 for key in keys}


def test_unknown_partitioner_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="partitioner"):
        MemoryBroker().producer(settings={"partitioner": "random"})


def test_keyless_records_go_round_robin() -> None:
    broker, topic = make(partitions=3)
    producer = broker.producer()
    for i in range(7):
        producer.produce(topic, b"%d" % i)
    consumer = member(broker, topic)
    got = sorted((m.partition(), m.value()) for m in consumer.consume(10, 0))
    assert got == [(0, b"0"), (0, b"3"), (0, b"6"), (1, b"1"), (1, b"4"), (2, b"2"), (2, b"5")]


def test_produce_to_a_missing_partition_raises() -> None:
    broker, topic = make(partitions=2)
    with pytest.raises(UnknownTopic, match="partition 2"):
        broker.producer().produce(topic, b"v", partition=2)


# --- records -------------------------------------------------------------------------------


def test_timestamps_come_from_the_injected_clock() -> None:
    clock = ManualClock(1234.5678)
    broker, topic = make(clock=clock)
    producer = broker.producer()
    producer.produce(topic, b"v")
    clock.advance(1.5)
    producer.produce(topic, b"w")
    producer.produce(topic, b"x", timestamp=42)
    got = member(broker, topic).consume(3, 0)
    assert [m.timestamp() for m in got] == [(1, 1234567), (1, 1236067), (1, 42)]


def test_headers_returned_are_a_copy() -> None:
    broker, topic = make()
    broker.producer().produce(topic, b"v", headers=[("h", b"1")])
    first = member(broker, topic, group="a").consume(1, 0)[0]
    headers = first.headers()
    assert headers == [("h", b"1")]
    headers.append(("x", b"2"))
    second = member(broker, topic, group="b").consume(1, 0)[0]
    assert second.headers() == [("h", b"1")]
    assert first.headers() == [("h", b"1")]


def test_injected_delivery_failures_are_reported_not_written() -> None:
    broker, topic = make()
    producer = broker.producer()
    FaultInjector(broker).fail_deliveries(1, topic, reason="disk full", retriable=False)
    producer.produce(topic, b"lost", key=b"k")
    producer.produce(topic, b"kept")
    assert producer.flush() == 0
    (error,) = producer.take_delivery_errors()
    assert (error.topic, error.key, error.reason, error.retriable) == (
        topic,
        b"k",
        "disk full",
        False,
    )
    assert producer.take_delivery_errors() == []
    assert [m.value() for m in member(broker, topic).consume(10, 0)] == [b"kept"]


def test_closed_clients_refuse_work() -> None:
    broker, topic = make()
    consumer = member(broker, topic)
    consumer.close()
    consumer.close()  # idempotent
    with pytest.raises(BackendError, match="closed"):
        consumer.consume(1, 0)
    producer = broker.producer()
    producer.close()
    with pytest.raises(BackendError, match="closed"):
        producer.produce(topic, b"v")


def test_invalid_consumer_settings() -> None:
    broker = MemoryBroker()
    with pytest.raises(ConfigError, match="auto_offset_reset"):
        broker.consumer("g", auto_offset_reset="sometimes")
    with pytest.raises(ConfigError, match="strategy"):
        broker.consumer("g", settings={"partition.assignment.strategy": "sticky"})
    with pytest.raises(ConfigError, match=r"max\.poll"):
        broker.consumer("g", settings={"max.poll.interval.ms": "soon"})
    with pytest.raises(TypeError):
        broker.consumer("g").subscribe("t")


def test_invalid_topics() -> None:
    admin = MemoryBroker().admin()
    with pytest.raises(BackendError, match="invalid topic name"):
        admin.create_topic("no spaces")
    with pytest.raises(BackendError, match="partitions"):
        admin.create_topic("t", partitions=0)


# --- offsets -------------------------------------------------------------------------------


def test_auto_offset_reset_error_without_committed_offset() -> None:
    broker, topic = make()
    consumer = member(broker, topic, auto_offset_reset="error")
    with pytest.raises(OffsetOutOfRange):
        consumer.consume(1, 0)


def test_seek_past_the_end_resets_by_policy() -> None:
    broker, topic = make()
    producer = broker.producer()
    producer.produce(topic, b"a")
    consumer = member(broker, topic)
    assert len(consumer.consume(5, 0)) == 1
    consumer.seek(TopicPartition(topic, 0), 10)
    assert [m.value() for m in consumer.consume(5, 0)] == [b"a"]  # earliest
    with pytest.raises(OffsetOutOfRange):
        consumer.seek(TopicPartition(topic, 0), -1)
    with pytest.raises(BackendError, match="not assigned"):
        consumer.seek(TopicPartition(topic, 3), 0)


def test_commit_of_an_unassigned_partition_is_refused() -> None:
    broker, topic = make(partitions=3)
    first = member(broker, topic)
    second = member(broker, topic)
    for c in (first, second, first):
        c.consume(1, 0)
    assert (first.assignment(), second.assignment()) == (tps(topic, 0, 1), tps(topic, 2))
    with pytest.raises(BackendError, match="not assigned"):
        first.commit({TopicPartition(topic, 2): 0})

    third = member(broker, topic)
    third.consume(1, 0)
    first.consume(1, 0)  # revokes; the group still waits for `second`
    assert first.assignment() == []
    with pytest.raises(RebalanceInProgress, match="rebalancing"):
        first.commit({TopicPartition(topic, 0): 0})
    second.commit({TopicPartition(topic, 2): 0})  # not yet revoked: still its partition
    for c in (second, first, third):
        c.consume(1, 0)
    assert [c.assignment() for c in (first, second, third)] == [
        tps(topic, 0),
        tps(topic, 1),
        tps(topic, 2),
    ]
    first.commit({TopicPartition(topic, 0): 0})


def test_on_revoke_may_commit() -> None:
    broker, topic = make(partitions=2)
    for i in range(4):
        broker.producer().produce(topic, b"%d" % i, partition=i % 2)
    first = broker.consumer("g")

    def on_revoke(partitions: list[TopicPartition]) -> None:
        first.commit({tp: pos for tp in partitions if (pos := first.position(tp)) is not None})

    first.subscribe([topic], on_revoke=on_revoke)
    assert len(first.consume(10, 0)) == 4
    second = member(broker, topic)
    second.consume(1, 0)
    first.consume(1, 0)
    assert broker.admin().group_offsets("g") == dict.fromkeys(tps(topic, 0, 1), 2)


# --- cost ----------------------------------------------------------------------------------


def test_batches_cost_little_per_record() -> None:
    broker, topic = make()
    producer = broker.producer()
    total = 200_000
    for i in range(total):
        producer.produce(topic, b"x", partition=0, timestamp=i)
    consumer = member(broker, topic)
    consumer.consume(1, 0)
    started = time.perf_counter()
    count = 1
    while count < total:
        count += len(consumer.consume(10_000, 0))
    elapsed = time.perf_counter() - started
    assert count == total
    assert elapsed / total < 1e-6, f"{elapsed / total * 1e9:.0f} ns per record"
