"""Client life cycle and argument checks: the same error for the same mistake on both."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from processor.backends.abstract import Broker, TopicPartition
from processor.core.errors import BackendError, ConfigError
from tests.conformance.helpers import consume_until, produce_values

NewTopic = Callable[[int], str]
Name = Callable[[str], str]


@pytest.mark.parametrize("reset", ["smallest", "beginning", "sometimes", ""])
def test_auto_offset_reset_outside_earliest_latest_error_is_refused(
    broker: Broker, unique_name: Name, reset: str
) -> None:
    with pytest.raises(ConfigError, match="auto_offset_reset"):
        broker.consumer(unique_name("group"), auto_offset_reset=reset)


def test_a_consumer_needs_a_group(broker: Broker) -> None:
    with pytest.raises(ConfigError, match="group"):
        broker.consumer("")


def test_subscription_and_batch_size_are_checked(broker: Broker, unique_name: Name) -> None:
    consumer = broker.consumer(unique_name("group"))
    try:
        with pytest.raises(ConfigError, match="at least one topic"):
            consumer.subscribe([])
        with pytest.raises(TypeError, match="not one string"):
            consumer.subscribe("topic")
        with pytest.raises(ValueError, match="max_messages"):
            consumer.consume(0, 0.0)
    finally:
        consumer.close()


def test_a_closed_consumer_refuses_work(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    topic = new_topic(1)
    tp = TopicPartition(topic, 0)
    produce_values(broker.producer(), topic, [b"a"])
    consumer = broker.consumer(unique_name("group"))
    consumer.subscribe([topic])
    assert len(consume_until(consumer, 1)) == 1
    consumer.close()
    consumer.close()  # a second close does nothing

    calls: list[tuple[str, Callable[[], object]]] = [
        ("consume", lambda: consumer.consume(1, 0.0)),
        ("commit", lambda: consumer.commit({tp: 1})),
        ("committed", lambda: consumer.committed([tp])),
        ("position", lambda: consumer.position(tp)),
        ("seek", lambda: consumer.seek(tp, 0)),
        ("pause", lambda: consumer.pause([tp])),
        ("resume", lambda: consumer.resume([tp])),
        ("watermarks", lambda: consumer.watermarks(tp)),
        ("group_metadata", consumer.group_metadata),
        ("subscribe", lambda: consumer.subscribe([topic])),
    ]
    for name, call in calls:
        with pytest.raises(BackendError, match="closed"):
            call()
            pytest.fail(f"{name}() on a closed consumer did not raise")
    assert consumer.assignment() == []


def test_on_revoke_may_commit_while_the_consumer_closes(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    topic = new_topic(1)
    tp = TopicPartition(topic, 0)
    group = unique_name("group")
    produce_values(broker.producer(), topic, [b"a", b"b"])
    consumer = broker.consumer(group)
    revoked: list[list[TopicPartition]] = []

    def on_revoke(partitions: list[TopicPartition]) -> None:
        revoked.append(partitions)
        position = consumer.position(tp)
        assert position is not None
        consumer.commit({tp: position})

    consumer.subscribe([topic], on_revoke=on_revoke)
    assert len(consume_until(consumer, 2)) == 2
    consumer.close()
    assert revoked == [[tp]]
    assert broker.admin().group_offsets(group, [topic]) == {tp: 2}


def test_a_closed_producer_refuses_to_produce(broker: Broker, new_topic: NewTopic) -> None:
    topic = new_topic(1)
    producer = broker.producer()
    produce_values(producer, topic, [b"kept"])
    producer.close()
    producer.close()  # a second close does nothing
    with pytest.raises(BackendError, match="closed"):
        producer.produce(topic, b"late")
    assert broker.admin().high_watermarks(topic) == {TopicPartition(topic, 0): 1}
