"""Committed offsets: resuming a group, auto_offset_reset, commit inspection."""

from __future__ import annotations

from collections.abc import Callable

from processor.backends.abstract import Broker, TopicPartition
from tests.conformance.helpers import (
    consume_for,
    consume_until,
    produce_values,
    quiet_period,
    values,
    wait_assigned,
)

NewTopic = Callable[[int], str]
Name = Callable[[str], str]


def test_new_member_resumes_at_committed_offset(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    topic = new_topic(1)
    tp = TopicPartition(topic, 0)
    group = unique_name("group")
    produce_values(broker.producer(), topic, [b"%d" % i for i in range(10)])

    first = broker.consumer(group)
    first.subscribe([topic])
    got = consume_until(first, 4, batch=4)
    assert [m.offset() for m in got] == [0, 1, 2, 3]
    last = got[-1].offset()
    assert last is not None
    first.commit({tp: last + 1})
    assert first.committed([tp]) == {tp: 4}
    first.close()

    second = broker.consumer(group)
    second.subscribe([topic])
    rest = consume_until(second, 6)
    assert [m.offset() for m in rest] == [4, 5, 6, 7, 8, 9]
    assert second.committed([tp]) == {tp: 4}
    second.close()


def test_uncommitted_progress_is_read_again(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    topic = new_topic(1)
    group = unique_name("group")
    produce_values(broker.producer(), topic, [b"a", b"b", b"c"])
    first = broker.consumer(group)
    first.subscribe([topic])
    assert values(consume_until(first, 3)) == [b"a", b"b", b"c"]
    first.close()  # nothing committed

    second = broker.consumer(group)
    second.subscribe([topic])
    assert values(consume_until(second, 3)) == [b"a", b"b", b"c"]
    second.close()


def test_committed_is_none_before_any_commit(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    topic = new_topic(2)
    consumer = broker.consumer(unique_name("group"))
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    assert consumer.committed(tps) == {tps[0]: None, tps[1]: None}
    consumer.close()


def test_groups_keep_separate_offsets(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    topic = new_topic(1)
    tp = TopicPartition(topic, 0)
    produce_values(broker.producer(), topic, [b"a", b"b"])
    one = broker.consumer(unique_name("group"))
    one.subscribe([topic])
    assert len(consume_until(one, 2)) == 2
    one.commit({tp: 2})
    one.close()

    other = broker.consumer(unique_name("group"))
    other.subscribe([topic])
    assert values(consume_until(other, 2)) == [b"a", b"b"]
    assert other.committed([tp]) == {tp: None}
    other.close()


def test_admin_sees_group_offsets(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    topic = new_topic(2)
    group = unique_name("group")
    producer = broker.producer()
    produce_values(producer, topic, [b"a", b"b", b"c"], partition=0)
    produce_values(producer, topic, [b"d"], partition=1)
    consumer = broker.consumer(group)
    consumer.subscribe([topic])
    assert len(consume_until(consumer, 4)) == 4
    consumer.commit({TopicPartition(topic, 0): 3, TopicPartition(topic, 1): 1})
    consumer.close()

    admin = broker.admin()
    assert admin.group_offsets(group, [topic]) == {
        TopicPartition(topic, 0): 3,
        TopicPartition(topic, 1): 1,
    }
    assert admin.group_offsets(unique_name("never-used"), [topic]) == {}


def test_auto_offset_reset_earliest_reads_existing_records(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    topic = new_topic(1)
    produce_values(broker.producer(), topic, [b"old-1", b"old-2"])
    consumer = broker.consumer(unique_name("group"), auto_offset_reset="earliest")
    consumer.subscribe([topic])
    assert values(consume_until(consumer, 2)) == [b"old-1", b"old-2"]
    consumer.close()


def test_auto_offset_reset_latest_skips_existing_records(
    broker: Broker, new_topic: NewTopic, unique_name: Name, backend_name: str
) -> None:
    topic = new_topic(1)
    tp = TopicPartition(topic, 0)
    producer = broker.producer()
    produce_values(producer, topic, [b"old-1", b"old-2"])
    consumer = broker.consumer(unique_name("group"), auto_offset_reset="latest")
    consumer.subscribe([topic])
    wait_assigned(consumer)
    assert consumer.position(tp) == 2
    produce_values(producer, topic, [b"new-1"])
    assert values(consume_until(consumer, 1)) == [b"new-1"]
    assert consume_for(consumer, quiet_period(backend_name)) == []
    consumer.close()


def test_committed_offset_wins_over_auto_offset_reset(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    topic = new_topic(1)
    tp = TopicPartition(topic, 0)
    group = unique_name("group")
    produce_values(broker.producer(), topic, [b"a", b"b", b"c"])
    first = broker.consumer(group)
    first.subscribe([topic])
    assert len(consume_until(first, 3)) == 3
    first.commit({tp: 1})
    first.close()

    latest = broker.consumer(group, auto_offset_reset="latest")
    latest.subscribe([topic])
    assert values(consume_until(latest, 2)) == [b"b", b"c"]
    latest.close()
