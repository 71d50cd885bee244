"""The backend side of a bounded shutdown, the same on both backends.

A producer's deadline (`set_deadline`) only bounds a wait for room in a full local
queue: a record that finds room is queued whatever the deadline. After a consumer's
close no rebalance callback runs (`wait_callbacks`). The Kafka-only cases (a queue kept
full, a close that times out) are in `tests/integration/test_kafka_shutdown_bounds.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from processor.backends.abstract import Broker, TopicPartition
from tests.conformance.helpers import consume_until, payloads, produce_values, wait_assigned

NewTopic = Callable[[int], str]
Name = Callable[[str], str]


def test_a_past_deadline_does_not_refuse_a_record_that_finds_room(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    topic = new_topic(1)
    producer = broker.producer()
    producer.set_deadline(time.monotonic() - 1.0)
    produce_values(producer, topic, [b"a", b"b"])
    producer.set_deadline(None)
    produce_values(producer, topic, [b"c"])
    producer.close(10)

    consumer = broker.consumer(unique_name("group"))
    consumer.subscribe([topic])
    assert payloads(consume_until(consumer, 3)) == [b"a", b"b", b"c"]
    consumer.close(10)


def test_a_deadline_applies_inside_transactions_too(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    topic = new_topic(1)
    producer = broker.producer(transactional_id=unique_name("txn"))
    producer.init_transactions(30)
    producer.set_deadline(time.monotonic() - 1.0)
    producer.begin_transaction()
    producer.produce(topic, b"in-txn")
    producer.commit_transaction(30)
    assert producer.take_delivery_errors() == []
    producer.close(10)

    consumer = broker.consumer(unique_name("group"), read_committed=True)
    consumer.subscribe([topic])
    assert payloads(consume_until(consumer, 1)) == [b"in-txn"]
    consumer.close(10)


def test_no_callback_runs_after_close(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    topic = new_topic(2)
    consumer = broker.consumer(unique_name("group"))
    revoked: list[list[TopicPartition]] = []
    consumer.subscribe([topic], on_revoke=revoked.append)
    assigned = wait_assigned(consumer)
    assert consumer.wait_callbacks(0)
    consumer.close(30)
    assert consumer.wait_callbacks(0)
    assert [sorted(p) for p in revoked] == [sorted(assigned)]
