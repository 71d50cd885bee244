"""Consumer groups of the in-memory broker: assignment, the eager rebalance, removal of
silent members (driven by a fake clock), and subscriptions that follow topics."""

from __future__ import annotations

import pytest

from processor.backends.abstract import TopicPartition
from processor.backends.memory import ManualClock, MemoryBroker
from processor.core.errors import RebalanceInProgress
from tests.unit.memory_support import make, member, tps

# --- groups --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "first", "second"),
    [("range", [0, 1, 2], [3, 4]), ("roundrobin", [0, 2, 4], [1, 3])],
)
def test_assignment_strategies(strategy: str, first: list[int], second: list[int]) -> None:
    broker, topic = make(partitions=5)
    settings = {"partition.assignment.strategy": strategy}
    one = member(broker, topic, settings=settings)
    two = member(broker, topic, settings=settings)
    for consumer in (one, two, one, two):
        consumer.consume(1, 0)
    assert one.assignment() == tps(topic, *first)
    assert two.assignment() == tps(topic, *second)


def test_rebalance_waits_for_every_member_to_revoke() -> None:
    broker, topic = make(partitions=2)
    first = member(broker, topic)
    first.consume(1, 0)
    second = member(broker, topic)
    second.consume(1, 0)
    assert second.assignment() == [], "assigned before the old owner revoked"
    assert first.assignment() == tps(topic, 0, 1)
    first.consume(1, 0)
    second.consume(1, 0)
    assert (first.assignment(), second.assignment()) == (tps(topic, 0), tps(topic, 1))


def test_silent_member_is_removed_and_learns_it_through_on_lost() -> None:
    clock = ManualClock(autojump=True)
    broker, topic = make(partitions=2, clock=clock)
    lost: list[list[TopicPartition]] = []
    silent = broker.consumer("g", settings={"max.poll.interval.ms": 30_000})
    silent.subscribe([topic], on_lost=lost.append)
    silent.consume(1, 0)  # polls at t=0
    broker.producer().produce(topic, b"v", partition=0)
    clock.advance(10.0)
    active = member(broker, topic)
    # Waits for `silent` until its poll interval runs out (t=30), then reads the record.
    assert [m.value() for m in active.consume(1, 300.0)] == [b"v"]
    assert clock.monotonic() == 30.0
    assert clock.waits == 1
    assert active.assignment() == tps(topic, 0, 1)
    with pytest.raises(RebalanceInProgress, match="no longer a member"):
        silent.commit({TopicPartition(topic, 0): 0})

    silent.consume(1, 0)
    assert lost == [tps(topic, 0, 1)]
    active.consume(1, 0)
    silent.consume(1, 0)
    assert sorted(silent.assignment() + active.assignment()) == tps(topic, 0, 1)
    assert silent.assignment() and active.assignment()


def test_a_member_that_polls_within_its_interval_stays() -> None:
    clock = ManualClock(autojump=True)
    broker, topic = make(partitions=2, clock=clock)
    lost: list[list[TopicPartition]] = []
    slow = broker.consumer("g", settings={"max.poll.interval.ms": 30_000})
    slow.subscribe([topic], on_lost=lost.append)
    slow.consume(1, 0)
    active = member(broker, topic)
    # The group waits for `slow`; `active` gives up waiting before slow's interval ends.
    assert active.consume(1, 29.0) == []
    assert clock.monotonic() == 29.0
    assert active.assignment() == []
    slow.consume(1, 0)  # polls at t=29: revokes, and the new generation is handed out
    active.consume(1, 0)
    assert lost == []
    assert (slow.assignment(), active.assignment()) == (tps(topic, 0), tps(topic, 1))


def test_poll_intervals_are_per_member() -> None:
    clock = ManualClock(autojump=True)
    broker, topic = make(partitions=2, clock=clock)
    patient = broker.consumer("g", settings={"max.poll.interval.ms": 60_000})
    hasty = broker.consumer("g", settings={"max.poll.interval.ms": 5_000})
    patient.subscribe([topic])
    hasty.subscribe([topic])
    for consumer in (patient, hasty, patient):
        consumer.consume(1, 0)
    assert patient.assignment() and hasty.assignment()
    third = member(broker, topic)
    # Both old members are awaited; `hasty` expires at t=5, `patient` only at t=60.
    assert third.consume(1, 10.0) == []
    assert clock.monotonic() == 10.0
    with pytest.raises(RebalanceInProgress, match="no longer a member"):
        hasty.commit({TopicPartition(topic, 1): 0})
    patient.consume(1, 0)
    third.consume(1, 0)
    assert (patient.assignment(), third.assignment()) == (tps(topic, 0), tps(topic, 1))


def test_pattern_subscription_follows_new_topics() -> None:
    broker = MemoryBroker()
    admin = broker.admin()
    admin.create_topic("orders-eu")
    admin.create_topic("other")
    consumer = broker.consumer("g")
    consumer.subscribe(["^orders-.*"])
    consumer.consume(1, 0)
    assert consumer.assignment() == tps("orders-eu", 0)
    admin.create_topic("orders-us", partitions=2)
    broker.producer().produce("orders-us", b"v", partition=1)
    assert [m.value() for m in consumer.consume(5, 0)] == [b"v"]
    assert consumer.assignment() == tps("orders-eu", 0) + tps("orders-us", 0, 1)


def test_deleting_a_topic_takes_it_out_of_the_assignment() -> None:
    broker = MemoryBroker()
    admin = broker.admin()
    admin.create_topic("a")
    admin.create_topic("b")
    consumer = broker.consumer("g")
    consumer.subscribe(["a", "b"])
    consumer.consume(1, 0)
    assert consumer.assignment() == tps("a", 0) + tps("b", 0)
    admin.delete_topic("b")
    consumer.consume(1, 0)
    assert consumer.assignment() == tps("a", 0)
