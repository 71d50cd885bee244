"""Topic administration."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from processor.backends.abstract import Broker, TopicPartition
from processor.core.errors import BackendError, UnknownTopic
from tests.conformance.helpers import consume_until, produce_values, values, wait_for

NewTopic = Callable[[int], str]
Name = Callable[[str], str]


def test_create_and_list_topics(broker: Broker, unique_name: Name) -> None:
    admin = broker.admin()
    name = unique_name("topic")
    assert name not in admin.list_topics()
    admin.create_topic(name, partitions=3)
    wait_for(lambda: admin.list_topics().get(name) == 3, what="topic listed")


def test_creating_an_existing_topic_leaves_it_as_it_is(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    topic = new_topic(2)
    produce_values(broker.producer(), topic, [b"kept"], partition=1)
    admin = broker.admin()
    admin.create_topic(topic, partitions=5)
    assert admin.list_topics()[topic] == 2
    assert admin.high_watermarks(topic) == {
        TopicPartition(topic, 0): 0,
        TopicPartition(topic, 1): 1,
    }
    consumer = broker.consumer(unique_name("group"))
    consumer.subscribe([topic])
    assert values(consume_until(consumer, 1)) == [b"kept"]
    consumer.close()


def test_delete_topic(broker: Broker, new_topic: NewTopic) -> None:
    topic = new_topic(1)
    admin = broker.admin()
    admin.delete_topic(topic)
    wait_for(lambda: topic not in admin.list_topics(), what="topic gone")


def test_delete_missing_topic_raises_unknown_topic(broker: Broker, unique_name: Name) -> None:
    with pytest.raises(UnknownTopic):
        broker.admin().delete_topic(unique_name("missing"))


def test_high_watermarks(broker: Broker, new_topic: NewTopic) -> None:
    topic = new_topic(3)
    producer = broker.producer()
    produce_values(producer, topic, [b"a", b"b"], partition=0)
    produce_values(producer, topic, [b"c"], partition=2)
    assert broker.admin().high_watermarks(topic) == {
        TopicPartition(topic, 0): 2,
        TopicPartition(topic, 1): 0,
        TopicPartition(topic, 2): 1,
    }


def test_high_watermarks_of_missing_topic_raise(broker: Broker, unique_name: Name) -> None:
    with pytest.raises(UnknownTopic):
        broker.admin().high_watermarks(unique_name("missing"))


@pytest.mark.parametrize(("name", "partitions"), [("no spaces", 1), ("valid", 0)])
def test_invalid_topics_are_refused(
    broker: Broker, unique_name: Name, name: str, partitions: int
) -> None:
    topic = unique_name(name)
    with pytest.raises(BackendError):
        broker.admin().create_topic(topic, partitions=partitions)
    assert topic not in broker.admin().list_topics()


def test_describe_topic(broker: Broker, unique_name: Name) -> None:
    name = unique_name("described")
    admin = broker.admin()
    admin.create_topic(name, partitions=2, replication=1, config={"retention.ms": "3600000"})
    described = admin.describe_topic(name)
    assert described.name == name
    assert [p.partition for p in described.partitions] == [0, 1]
    assert described.replication == 1
    for p in described.partitions:
        assert len(p.replicas) == 1
        assert p.leader in p.replicas
        assert p.in_sync == p.replicas
    assert dict(described.config) == {"retention.ms": "3600000"}


def test_a_topic_without_settings_describes_none(broker: Broker, new_topic: NewTopic) -> None:
    described = broker.admin().describe_topic(new_topic(1))
    assert dict(described.config) == {}
    assert len(described.partitions) == 1


def test_create_topic_with_the_cluster_defaults(broker: Broker, unique_name: Name) -> None:
    name = unique_name("defaults")
    admin = broker.admin()
    admin.create_topic(name, partitions=None, replication=None)
    described = admin.describe_topic(name)
    assert len(described.partitions) >= 1
    assert described.replication >= 1
    assert all(p.leader >= 0 for p in described.partitions)
    assert admin.list_topics()[name] == len(described.partitions)


def test_describe_missing_topic_raises_unknown_topic(broker: Broker, unique_name: Name) -> None:
    with pytest.raises(UnknownTopic):
        broker.admin().describe_topic(unique_name("missing"))
