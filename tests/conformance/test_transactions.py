"""Transactions: visibility by isolation level, offsets sent to a transaction, fencing."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from processor.backends.abstract import Broker, Producer, TopicPartition
from processor.core.errors import ProducerFenced, TransactionError
from tests.conformance.helpers import (
    consume_for,
    consume_until,
    consume_until_value,
    payloads,
    produce_values,
    quiet_period,
    values,
    wait_for,
)

NewTopic = Callable[[int], str]
Name = Callable[[str], str]


def transactional(broker: Broker, unique_name: Name, tid: str | None = None) -> Producer:
    producer = broker.producer(transactional_id=tid or unique_name("txn"))
    producer.init_transactions(30)
    return producer


def test_committed_transaction_is_visible_to_both_isolation_levels(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    topic = new_topic(2)
    producer = transactional(broker, unique_name)
    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, b"t%d" % i, partition=0)
    producer.produce(topic, b"other", partition=1)
    producer.commit_transaction(30)

    for read_committed in (True, False):
        consumer = broker.consumer(unique_name("group"), read_committed=read_committed)
        consumer.subscribe([topic])
        got = consume_until(consumer, 4)
        consumer.close()
        assert sorted(payloads(got)) == [b"other", b"t0", b"t1", b"t2"]
        assert values(m for m in got if m.partition() == 0) == [b"t0", b"t1", b"t2"]
    producer.close()


def test_aborted_records_are_seen_only_by_read_uncommitted(
    broker: Broker, new_topic: NewTopic, unique_name: Name, backend_name: str
) -> None:
    topic = new_topic(1)
    producer = transactional(broker, unique_name)
    producer.begin_transaction()
    producer.produce(topic, b"aborted-1")
    producer.produce(topic, b"aborted-2")
    # Written to the log first: Kafka's clients drop records still queued at an abort.
    assert producer.flush(30) == 0
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, b"committed")
    producer.commit_transaction(30)

    committed = broker.consumer(unique_name("group"), read_committed=True)
    committed.subscribe([topic])
    got = consume_until_value(committed, b"committed")
    got += consume_for(committed, quiet_period(backend_name))
    assert values(got) == [b"committed"]
    committed.close()

    uncommitted = broker.consumer(unique_name("group"), read_committed=False)
    uncommitted.subscribe([topic])
    got = consume_until_value(uncommitted, b"committed")
    assert values(got) == [b"aborted-1", b"aborted-2", b"committed"]
    uncommitted.close()
    producer.close()


def test_read_committed_stops_at_an_open_transaction(
    broker: Broker, new_topic: NewTopic, unique_name: Name, backend_name: str
) -> None:
    topic = new_topic(1)
    plain = broker.producer()
    produce_values(plain, topic, [b"before"])
    reader = broker.consumer(unique_name("group"), read_committed=True)
    reader.subscribe([topic])
    assert values(consume_until(reader, 1)) == [b"before"]

    txn = transactional(broker, unique_name)
    txn.begin_transaction()
    txn.produce(topic, b"in-txn")
    assert txn.flush(30) == 0
    # A committed record after the open transaction's first record: Kafka's last stable
    # offset holds it back too, until the transaction ends.
    produce_values(plain, topic, [b"after"])

    peek = broker.consumer(unique_name("group"), read_committed=False)
    peek.subscribe([topic])
    assert values(consume_until_value(peek, b"after")) == [b"before", b"in-txn", b"after"]
    peek.close()
    assert consume_for(reader, quiet_period(backend_name)) == []

    txn.commit_transaction(30)
    assert values(consume_until(reader, 2)) == [b"in-txn", b"after"]
    reader.close()
    txn.close()


def test_offsets_sent_to_a_transaction_commit_with_it(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    source, sink = new_topic(1), new_topic(1)
    tp = TopicPartition(source, 0)
    group = unique_name("group")
    produce_values(broker.producer(), source, [b"a", b"b", b"c"])
    consumer = broker.consumer(group, read_committed=True)
    consumer.subscribe([source])
    assert len(consume_until(consumer, 3)) == 3
    admin = broker.admin()

    producer = transactional(broker, unique_name)
    producer.begin_transaction()
    producer.produce(sink, b"out")
    producer.send_offsets_to_transaction({tp: 3}, consumer.group_metadata(), 30)
    assert admin.group_offsets(group, [source]) == {}, "offsets committed before the commit"
    producer.commit_transaction(30)
    wait_for(
        lambda: admin.group_offsets(group, [source]) == {tp: 3},
        what="offsets committed with the transaction",
    )
    assert consumer.committed([tp]) == {tp: 3}
    consumer.close()
    producer.close()


def test_offsets_sent_to_an_aborted_transaction_are_dropped(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    source, sink = new_topic(1), new_topic(1)
    tp = TopicPartition(source, 0)
    group = unique_name("group")
    produce_values(broker.producer(), source, [b"a", b"b"])
    consumer = broker.consumer(group, read_committed=True)
    consumer.subscribe([source])
    assert len(consume_until(consumer, 2)) == 2
    consumer.commit({tp: 1})

    producer = transactional(broker, unique_name)
    producer.begin_transaction()
    producer.produce(sink, b"out")
    producer.send_offsets_to_transaction({tp: 2}, consumer.group_metadata(), 30)
    producer.abort_transaction(30)
    # Commit a later transaction, so that the aborted one has surely been processed.
    producer.begin_transaction()
    producer.produce(sink, b"marker")
    producer.commit_transaction(30)
    assert consumer.committed([tp]) == {tp: 1}
    assert broker.admin().group_offsets(group, [source]) == {tp: 1}
    consumer.close()
    producer.close()


def test_a_newer_producer_fences_the_zombie(
    broker: Broker, new_topic: NewTopic, unique_name: Name, backend_name: str
) -> None:
    topic = new_topic(1)
    tid = unique_name("txn")
    zombie = transactional(broker, unique_name, tid)
    zombie.begin_transaction()
    zombie.produce(topic, b"zombie-1")
    assert zombie.flush(30) == 0

    successor = transactional(broker, unique_name, tid)
    with pytest.raises(ProducerFenced):
        zombie.produce(topic, b"zombie-2")
        zombie.commit_transaction(30)

    successor.begin_transaction()
    successor.produce(topic, b"successor")
    successor.commit_transaction(30)

    reader = broker.consumer(unique_name("group"), read_committed=True)
    reader.subscribe([topic])
    got = consume_until_value(reader, b"successor")
    got += consume_for(reader, quiet_period(backend_name))
    assert values(got) == [b"successor"]
    reader.close()
    successor.close()


def test_produce_outside_a_transaction_is_refused(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    topic = new_topic(1)
    producer = transactional(broker, unique_name)
    with pytest.raises(TransactionError):
        producer.produce(topic, b"no transaction")
        producer.flush(30)
    producer.close()


def test_begin_twice_is_refused(broker: Broker, unique_name: Name) -> None:
    producer = transactional(broker, unique_name)
    producer.begin_transaction()
    with pytest.raises(TransactionError):
        producer.begin_transaction()
    producer.abort_transaction(30)
    producer.close()


def test_closing_a_producer_aborts_its_open_transaction(
    broker: Broker, new_topic: NewTopic, unique_name: Name
) -> None:
    topic = new_topic(1)
    producer = transactional(broker, unique_name)
    producer.begin_transaction()
    producer.produce(topic, b"dropped")
    assert producer.flush(30) == 0
    producer.close()
    produce_values(broker.producer(), topic, [b"plain"])
    # Without the abort, the open transaction would hold the reader back (last stable
    # offset) until the broker's transaction timeout.
    reader = broker.consumer(unique_name("group"), read_committed=True)
    reader.subscribe([topic])
    assert values(consume_until_value(reader, b"plain")) == [b"plain"]
    reader.close()
