"""Producing and consuming: order, partitioning, headers, timestamps, offsets, seek."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from processor.backends.abstract import Broker, TopicPartition
from processor.core.errors import UnknownTopic
from tests.conformance.helpers import (
    by_partition,
    consume_for,
    consume_until,
    consume_until_value,
    offsets,
    payloads,
    produce_values,
    quiet_period,
    values,
    wait_assigned,
)

NewTopic = Callable[[int], str]
Name = Callable[[str], str]


def test_records_round_trip_in_order_per_partition(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    topic = new_topic(3)
    producer = broker.producer()
    sent = [(b"k%d" % (i % 7), b"v%03d" % i) for i in range(120)]
    for key, value in sent:
        producer.produce(topic, value, key=key)
    assert producer.flush(30) == 0
    assert producer.take_delivery_errors() == []

    consumer = broker.consumer(unique_name("group"))
    consumer.subscribe([topic])
    got = consume_until(consumer, len(sent))
    consumer.close()

    assert sorted(payloads(got)) == sorted(v for _, v in sent)
    for partition, messages in by_partition(got).items():
        seen = offsets(messages)
        assert seen == sorted(seen), f"partition {partition} out of order"
        assert len(set(seen)) == len(seen)
        # Within a partition, records come back in the order they were produced.
        received = values(messages)
        produced = [v for v in (v for _, v in sent) if v in set(received)]
        assert received == produced
    for m in got:
        assert m.topic() == topic


def test_offsets_start_at_zero_and_are_consecutive(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    topic = new_topic(1)
    produce_values(broker.producer(), topic, [b"a", b"b", b"c", b"d"])
    consumer = broker.consumer(unique_name("group"))
    consumer.subscribe([topic])
    got = consume_until(consumer, 4)
    consumer.close()
    assert [(m.partition(), m.offset(), m.value()) for m in got] == [
        (0, 0, b"a"),
        (0, 1, b"b"),
        (0, 2, b"c"),
        (0, 3, b"d"),
    ]


def test_same_key_same_partition_and_keys_spread(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    topic = new_topic(4)
    producer = broker.producer()
    keys = [b"key-%d" % i for i in range(40)]
    for round_ in range(3):
        for key in keys:
            producer.produce(topic, b"%s/%d" % (key, round_), key=key)
    assert producer.flush(30) == 0

    consumer = broker.consumer(unique_name("group"))
    consumer.subscribe([topic])
    got = consume_until(consumer, 3 * len(keys))
    consumer.close()
    assert len(got) == 3 * len(keys)

    partitions_of_key: dict[bytes | None, set[int | None]] = {}
    for m in got:
        partitions_of_key.setdefault(m.key(), set()).add(m.partition())
    assert set(partitions_of_key) == set(keys)
    assert all(len(p) == 1 for p in partitions_of_key.values()), partitions_of_key
    used = set().union(*partitions_of_key.values())
    assert len(used) >= 3, f"40 keys landed in only {used}"


def test_explicit_partition_is_honoured(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    topic = new_topic(3)
    producer = broker.producer()
    producer.produce(topic, b"to-2", key=b"any", partition=2)
    producer.produce(topic, b"to-0", partition=0)
    assert producer.flush(30) == 0
    consumer = broker.consumer(unique_name("group"))
    consumer.subscribe([topic])
    got = consume_until(consumer, 2)
    consumer.close()
    assert sorted((m.value(), m.partition()) for m in got) == [(b"to-0", 0), (b"to-2", 2)]


def test_headers_and_keys_round_trip(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    topic = new_topic(1)
    headers = [("trace", b"abc"), ("attempt", b"2"), ("trace", b"def")]
    producer = broker.producer()
    producer.produce(topic, b"with", key=b"k1", headers=headers)
    producer.produce(topic, b"without")
    assert producer.flush(30) == 0
    consumer = broker.consumer(unique_name("group"))
    consumer.subscribe([topic])
    first, second = consume_until(consumer, 2)
    consumer.close()
    assert first.key() == b"k1"
    assert first.headers() == headers  # order and repeated names kept
    assert second.key() is None
    assert not second.headers()


def test_timestamps_given_and_defaulted(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    topic = new_topic(1)
    producer = broker.producer()
    given = 1_700_000_000_123
    before = int(time.time() * 1000)
    producer.produce(topic, b"given", timestamp=given)
    producer.produce(topic, b"default")
    assert producer.flush(30) == 0
    after = int(time.time() * 1000)
    consumer = broker.consumer(unique_name("group"))
    consumer.subscribe([topic])
    first, second = consume_until(consumer, 2)
    consumer.close()
    assert first.timestamp() == (1, given)
    kind, ms = second.timestamp()
    assert kind == 1
    assert before - 1000 <= ms <= after + 1000


def test_produce_to_missing_topic_raises_unknown_topic(
    broker: Broker, unique_name: Name
) -> None:
    producer = broker.producer()
    with pytest.raises(UnknownTopic):
        producer.produce(unique_name("missing"), b"x")
        producer.flush(30)


def test_produce_to_a_missing_partition_raises_unknown_topic(
    broker: Broker, new_topic: NewTopic
) -> None:
    topic = new_topic(2)
    producer = broker.producer()
    with pytest.raises(UnknownTopic):
        producer.produce(topic, b"x", partition=2)
        producer.flush(30)
    assert broker.admin().high_watermarks(topic) == {
        TopicPartition(topic, 0): 0,
        TopicPartition(topic, 1): 0,
    }


def test_max_messages_bounds_a_batch(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    topic = new_topic(1)
    produce_values(broker.producer(), topic, [b"%d" % i for i in range(10)])
    consumer = broker.consumer(unique_name("group"))
    consumer.subscribe([topic])
    seen: list[bytes | None] = []
    deadline = time.monotonic() + 30
    while len(seen) < 10 and time.monotonic() < deadline:
        batch = consumer.consume(3, 0.2)
        assert len(batch) <= 3
        seen.extend(values(batch))
    consumer.close()
    assert seen == [b"%d" % i for i in range(10)]


def test_consume_waits_for_records_produced_later(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    topic = new_topic(1)
    consumer = broker.consumer(unique_name("group"))
    consumer.subscribe([topic])
    wait_assigned(consumer)
    produce_values(broker.producer(), topic, [b"late"])
    assert values(consume_until(consumer, 1)) == [b"late"]
    consumer.close()


def test_seek_rereads_and_skips(
    broker: Broker, new_topic: NewTopic, unique_name: Name, backend_name: str
) -> None:
    topic = new_topic(1)
    tp = TopicPartition(topic, 0)
    produce_values(broker.producer(), topic, [b"%d" % i for i in range(6)])
    consumer = broker.consumer(unique_name("group"))
    consumer.subscribe([topic])
    assert len(consume_until(consumer, 6)) == 6
    assert consumer.position(tp) == 6

    consumer.seek(tp, 2)
    assert [m.offset() for m in consume_until(consumer, 4)] == [2, 3, 4, 5]
    consumer.seek(tp, 5)
    assert [m.offset() for m in consume_until(consumer, 1)] == [5]
    assert consume_for(consumer, quiet_period(backend_name)) == []
    consumer.close()


def test_watermarks_and_position(broker: Broker, new_topic: NewTopic, unique_name: Name) -> None:
    topic = new_topic(2)
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    consumer = broker.consumer(unique_name("group"))
    assert consumer.watermarks(tp0) == (0, 0)
    produce_values(broker.producer(), topic, [b"a", b"b", b"c"], partition=0)
    assert consumer.watermarks(tp0) == (0, 3)
    assert consumer.watermarks(tp1) == (0, 0)

    consumer.subscribe([topic])
    got = consume_until(consumer, 2, batch=1)
    assert [m.offset() for m in got] == [0, 1]
    assert consumer.position(tp0) == 2
    consume_until_value(consumer, b"c")
    assert consumer.position(tp0) == 3
    consumer.close()


def test_pause_and_resume(
    broker: Broker, new_topic: NewTopic, unique_name: Name, backend_name: str
) -> None:
    topic = new_topic(2)
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    consumer = broker.consumer(unique_name("group"))
    consumer.subscribe([topic])
    assert sorted(wait_assigned(consumer)) == [tp0, tp1]

    consumer.pause([tp0])
    assert consumer.paused() == [tp0]
    producer = broker.producer()
    produce_values(producer, topic, [b"p0-a", b"p0-b"], partition=0)
    produce_values(producer, topic, [b"p1-a"], partition=1)
    got = consume_until_value(consumer, b"p1-a")
    got += consume_for(consumer, quiet_period(backend_name))
    assert values(got) == [b"p1-a"]
    assert sorted(consumer.assignment()) == [tp0, tp1]

    consumer.resume([tp0])
    assert consumer.paused() == []
    assert values(consume_until(consumer, 2)) == [b"p0-a", b"p0-b"]
    consumer.close()

