"""Consumer groups: partitions split between members, rebalances and their callbacks."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from processor.backends.abstract import Broker, Consumer, Message, TopicPartition
from tests.conformance.helpers import (
    consume_until,
    payloads,
    produce_values,
    wait_assigned,
    wait_for,
)

NewTopic = Callable[[int], str]
Name = Callable[[str], str]


class Recorder:
    """Collects the rebalance callbacks of one member."""

    def __init__(self) -> None:
        self.assigned: list[list[TopicPartition]] = []
        self.revoked: list[list[TopicPartition]] = []

    def on_assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned.append(sorted(partitions))

    def on_revoke(self, partitions: list[TopicPartition]) -> None:
        self.revoked.append(sorted(partitions))


def all_partitions(topic: str, count: int) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in range(count)]


def test_second_member_splits_the_partitions(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    topic = new_topic(4)
    group = unique_name("group")
    first_calls, second_calls = Recorder(), Recorder()
    first = broker.consumer(group)
    first.subscribe([topic], on_assign=first_calls.on_assign, on_revoke=first_calls.on_revoke)
    assert sorted(wait_assigned(first)) == all_partitions(topic, 4)
    assert first_calls.assigned == [all_partitions(topic, 4)]

    second = broker.consumer(group)
    second.subscribe([topic], on_assign=second_calls.on_assign, on_revoke=second_calls.on_revoke)
    members = [first, second]
    wait_for(
        lambda: len(first.assignment()) == 2 and len(second.assignment()) == 2,
        members,
        what="a 2/2 split",
    )
    one, two = set(first.assignment()), set(second.assignment())
    assert not one & two, "a partition is assigned twice"
    assert sorted(one | two) == all_partitions(topic, 4)
    assert first_calls.revoked and first_calls.revoked[0], "first member never revoked"
    assert second_calls.assigned and sorted(two) == second_calls.assigned[-1]
    assert sorted(one) == first_calls.assigned[-1]
    second.close()
    first.close()


def test_survivor_takes_all_partitions_when_a_member_leaves(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    topic = new_topic(3)
    group = unique_name("group")
    survivor_calls = Recorder()
    survivor = broker.consumer(group)
    survivor.subscribe(
        [topic], on_assign=survivor_calls.on_assign, on_revoke=survivor_calls.on_revoke
    )
    leaver = broker.consumer(group)
    leaver_calls = Recorder()
    leaver.subscribe([topic], on_assign=leaver_calls.on_assign, on_revoke=leaver_calls.on_revoke)
    wait_for(
        lambda: bool(survivor.assignment()) and bool(leaver.assignment()),
        [survivor, leaver],
        what="both members assigned",
    )
    held_by_leaver = sorted(leaver.assignment())

    leaver.close()
    assert leaver_calls.revoked[-1] == held_by_leaver, "close() must revoke the assignment"
    wait_for(
        lambda: sorted(survivor.assignment()) == all_partitions(topic, 3),
        [survivor],
        what="the survivor owning every partition",
    )
    assert survivor_calls.assigned[-1] == all_partitions(topic, 3)
    survivor.close()


@pytest.mark.parametrize("commit_timeout", [None, 10.0], ids=["unbounded", "bounded"])
def test_no_record_lost_or_repeated_when_revoke_commits(
    broker: Broker, new_topic: NewTopic, unique_name: Name, commit_timeout: float | None
) -> None:
    """A commit inside the revocation callback lands, bounded or not (a stage bounds
    its commits: on Kafka a bounded commit must not be held until the revocation ends,
    which would be never, since the callback waits for it)."""
    topic = new_topic(4)
    group = unique_name("group")
    total = 80
    producer = broker.producer()
    for i in range(total):
        producer.produce(topic, b"%03d" % i, key=b"k%d" % i)
    assert producer.flush(30) == 0

    def committing(consumer_box: list[Consumer]) -> Callable[[list[TopicPartition]], None]:
        def on_revoke(partitions: list[TopicPartition]) -> None:
            consumer = consumer_box[0]
            offsets = {}
            for tp in partitions:
                position = consumer.position(tp)
                if position is not None:
                    offsets[tp] = position
            if offsets:
                consumer.commit(offsets, commit_timeout)

        return on_revoke

    first_box: list[Consumer] = []
    first = broker.consumer(group)
    first_box.append(first)
    first.subscribe([topic], on_revoke=committing(first_box))
    seen: list[Message] = consume_until(first, total // 2)
    assert len(seen) == total // 2

    second_box: list[Consumer] = []
    second = broker.consumer(group)
    second_box.append(second)
    second.subscribe([topic], on_revoke=committing(second_box))
    sink: dict[int, list[Message]] = {}
    wait_for(
        lambda: len(seen) + sum(len(v) for v in sink.values()) >= total
        and bool(first.assignment())
        and bool(second.assignment()),
        [first, second],
        what="every record consumed by the pair",
        sink=sink,
    )
    seen += sink.get(0, []) + sink.get(1, [])
    keys = sorted(payloads(seen))
    assert keys == sorted(b"%03d" % i for i in range(total)), "records lost or repeated"
    second.close()
    first.close()


def test_member_of_two_topics_gets_both(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    left, right = new_topic(1), new_topic(2)
    producer = broker.producer()
    produce_values(producer, left, [b"left"])
    produce_values(producer, right, [b"right"], partition=1)
    consumer = broker.consumer(unique_name("group"))
    consumer.subscribe([left, right])
    got = consume_until(consumer, 2)
    assert sorted((m.topic(), m.value()) for m in got) == sorted(
        [(left, b"left"), (right, b"right")]
    )
    assert sorted(consumer.assignment()) == sorted(
        [TopicPartition(left, 0), TopicPartition(right, 0), TopicPartition(right, 1)]
    )
    consumer.close()
