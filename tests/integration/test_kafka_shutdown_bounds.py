"""Waits a stopping stage must not sit through, on a real Kafka broker.

* A producer whose local queue is full waits for room only until the deadline given to
  `set_deadline`, not for `message.timeout.ms`. The queue is kept full by a long
  `linger.ms`: the queued records stay in the client until a flush.
* A consumer's bounded close that gave up waiting leaves librdkafka's close running on a
  helper thread: it starts no rebalance callback of the user's any more, and
  `wait_callbacks` tells whether one it started is still running.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from processor.backends.abstract import AssignCallback, Producer, TopicPartition
from processor.backends.kafka import KafkaBroker
from processor.backends.kafka.bounded import CallTimedOut
from processor.core.errors import BackendError, BrokerUnavailable, ProducerQueueFull
from tests.conformance.helpers import wait_assigned

Name = Callable[[str], str]

QUEUE = 3
# Long enough that a producer waiting for room (before the fix: for message.timeout.ms)
# would outlast every bound below by far.
HOLD = {"queue.buffering.max.messages": QUEUE, "linger.ms": 20_000,
        "message.timeout.ms": 60_000}


def full_producer(broker: KafkaBroker, topic: str) -> Producer:
    producer = broker.producer(settings=HOLD)
    for i in range(QUEUE):
        producer.produce(topic, b"queued-%d" % i)
    assert producer.outstanding() == QUEUE
    return producer


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_a_full_queue_is_waited_for_until_the_deadline_only(
    kafka_broker: KafkaBroker, unique_name: Name
) -> None:
    topic = unique_name("topic")
    kafka_broker.admin().create_topic(topic, partitions=1)
    producer = full_producer(kafka_broker, topic)

    producer.set_deadline(time.monotonic() + 1.0)
    started = time.monotonic()
    with pytest.raises(ProducerQueueFull, match="local queue was still full"):
        producer.produce(topic, b"late")
    assert 0.9 <= time.monotonic() - started < 3.0

    # Past the deadline a full queue is refused at once (after serving reports once).
    started = time.monotonic()
    with pytest.raises(ProducerQueueFull):
        producer.produce(topic, b"later")
    assert time.monotonic() - started < 0.5

    # Nothing queued was lost, and with room a past deadline changes nothing.
    assert producer.flush(30) == 0
    producer.produce(topic, b"after")
    assert producer.flush(30) == 0
    assert producer.take_delivery_errors() == []
    assert kafka_broker.admin().high_watermarks(topic) == {TopicPartition(topic, 0): QUEUE + 1}
    producer.close(10)


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_a_deadline_set_while_produce_waits_ends_the_wait(
    kafka_broker: KafkaBroker, unique_name: Name
) -> None:
    """A stop signal comes while the stage waits for room: the deadline it sets (from a
    signal handler, or here another thread) is read by the wait already under way."""
    topic = unique_name("topic")
    kafka_broker.admin().create_topic(topic, partitions=1)
    producer = full_producer(kafka_broker, topic)

    timer = threading.Timer(0.5, lambda: producer.set_deadline(time.monotonic() + 0.5))
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(ProducerQueueFull):
            producer.produce(topic, b"late")
    finally:
        timer.cancel()
    assert 0.9 <= time.monotonic() - started < 3.0

    # Without a deadline the wait lasts until there is room: the flush makes some.
    producer.set_deadline(None)
    flusher = threading.Timer(0.5, lambda: producer.flush(30))
    flusher.start()
    try:
        producer.produce(topic, b"waited")
    finally:
        flusher.join()
    assert producer.flush(30) == 0
    assert producer.take_delivery_errors() == []
    assert kafka_broker.admin().high_watermarks(topic) == {TopicPartition(topic, 0): QUEUE + 1}
    producer.close(10)


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_a_timed_out_close_reports_the_callback_still_running(
    kafka_broker: KafkaBroker, unique_name: Name
) -> None:
    topic = unique_name("topic")
    kafka_broker.admin().create_topic(topic, partitions=2)
    consumer = kafka_broker.consumer(unique_name("group"))
    entered, release = threading.Event(), threading.Event()
    revoked: list[list[TopicPartition]] = []

    def on_revoke(partitions: list[TopicPartition]) -> None:
        revoked.append(partitions)
        entered.set()
        release.wait(30)  # a final commit waiting for an absent broker, say

    consumer.subscribe([topic], on_revoke=on_revoke)
    assert len(wait_assigned(consumer)) == 2
    try:
        with pytest.raises(BrokerUnavailable, match="rebalance callback is still running"):
            consumer.close(1.0)
        assert entered.is_set()
        assert not consumer.wait_callbacks(0.3)
        with pytest.raises(BackendError, match="closed"):
            consumer.consume(1, 0)
    finally:
        release.set()
    assert consumer.wait_callbacks(10)
    assert [sorted(p) for p in revoked] == [[TopicPartition(topic, 0), TopicPartition(topic, 1)]]


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_no_callback_starts_after_a_close_gave_up(
    kafka_broker: KafkaBroker, unique_name: Name, monkeypatch: pytest.MonkeyPatch
) -> None:
    """librdkafka's close reaches the revocation only after the bounded close gave up
    (held back here, in the backend's own code before the user's callback, until then):
    on_revoke is not run any more (its caller has moved on, to closing its producer),
    and the partitions are unassigned all the same, so librdkafka's close ends."""
    topic = unique_name("topic")
    kafka_broker.admin().create_topic(topic, partitions=1)
    consumer = kafka_broker.consumer(unique_name("group"))
    revoked: list[list[TopicPartition]] = []
    consumer.subscribe([topic], on_revoke=revoked.append)
    wait_assigned(consumer)

    gave_up, reached = threading.Event(), threading.Event()
    take_away = consumer._take_away

    def late(gone: list[TopicPartition], callback: AssignCallback | None,
             lost: bool) -> None:
        reached.set()
        gave_up.wait(30)
        take_away(gone, callback, lost=lost)

    monkeypatch.setattr(consumer, "_take_away", late)
    with pytest.raises(CallTimedOut) as raised:
        consumer.close(0.5)
    assert reached.is_set()
    assert consumer.wait_callbacks(0)
    gave_up.set()
    assert raised.value.done.wait(30), "librdkafka's close did not end"
    assert consumer.wait_callbacks(0)
    assert revoked == []
