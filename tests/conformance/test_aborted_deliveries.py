"""An aborted transaction takes its failed deliveries with it.

Kafka's `abort_transaction()` purges the transaction's records still queued in the client
(their delivery reports fail with `_PURGE_QUEUE` or `_PURGE_INFLIGHT`) and serves the
reports of those in flight. None of these may be reported by `take_delivery_errors()` in
the next transaction: it would be aborted for failures that were not its own, and the one
after it too, for as long as the stage keeps re-reading.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from processor.backends.abstract import Broker, Producer
from tests.conformance.helpers import consume_for, consume_until_value, quiet_period, values

NewTopic = Callable[[int], str]
Name = Callable[[str], str]


def transactional(broker: Broker, unique_name: Name,
                  settings: dict[str, object] | None = None) -> Producer:
    producer = broker.producer(transactional_id=unique_name("txn"), settings=settings)
    producer.init_transactions(30)
    return producer


def committed_values(broker: Broker, topic: str, unique_name: Name,
                     backend_name: str, last: bytes) -> list[bytes | None]:
    reader = broker.consumer(unique_name("group"), read_committed=True)
    reader.subscribe([topic])
    got = consume_until_value(reader, last)
    got += consume_for(reader, quiet_period(backend_name))
    reader.close()
    return values(got)


@pytest.mark.parametrize("linger_ms", [None, 5000], ids=["default-linger", "queued"])
def test_outputs_in_flight_at_an_abort_do_not_fail_the_next_transaction(
    broker: Broker, new_topic: NewTopic, unique_name: Name, backend_name: str,
    linger_ms: int | None,
) -> None:
    """The outputs of a transaction aborted before they were acknowledged (all of them
    still queued with a long linger.ms; some in flight with the default) are gone with
    it: the next transaction sees no failure and commits."""
    topic = new_topic(2)
    settings: dict[str, object] | None = None
    if linger_ms is not None:
        settings = {"linger.ms": linger_ms, "message.timeout.ms": 60_000}
    producer = transactional(broker, unique_name, settings)

    producer.begin_transaction()
    for i in range(2000):
        producer.produce(topic, b"aborted-%d" % i, key=b"k%d" % (i % 7))
    producer.abort_transaction(30)

    producer.begin_transaction()
    producer.produce(topic, b"committed", key=b"k0")
    assert producer.flush(30) == 0
    assert producer.take_delivery_errors() == []
    producer.commit_transaction(30)
    producer.close()

    assert committed_values(broker, topic, unique_name, backend_name,
                            b"committed") == [b"committed"]


def test_a_failed_output_of_an_aborted_transaction_is_not_reported_after_it(
    broker: Broker, new_topic: NewTopic, unique_name: Name, backend_name: str,
) -> None:
    """A delivery failure of the aborted transaction's own (the topic refused a record
    as too large), never taken before the abort, is not reported after it."""
    topic = unique_name("topic")
    broker.admin().create_topic(topic, partitions=1, config={"max.message.bytes": "2000"})
    producer = transactional(broker, unique_name)

    producer.begin_transaction()
    producer.produce(topic, b"small")
    producer.produce(topic, os.urandom(20_000))  # incompressible: refused by the topic
    producer.flush(30)
    producer.abort_transaction(30)
    assert producer.take_delivery_errors() == []

    # On Kafka the transaction right after one with a batch the broker refused can fail
    # on its own: librdkafka 2.16 finds the refused batch's sequence numbers skipped
    # (OUT_OF_ORDER_SEQUENCE_NUMBER) and purges the new transaction's record. That
    # failure is the new transaction's, reported for its own record only; aborted, the
    # one after it commits.
    for attempt in range(2):
        producer.begin_transaction()
        producer.produce(topic, b"committed")
        producer.flush(30)
        errors = producer.take_delivery_errors()
        if not errors:
            producer.commit_transaction(30)
            break
        assert backend_name == "kafka" and attempt == 0, errors
        assert [e.size for e in errors] == [len(b"committed")], errors
        producer.abort_transaction(30)
    producer.close()

    assert committed_values(broker, topic, unique_name, backend_name,
                            b"committed") == [b"committed"]


def test_failures_taken_before_an_abort_are_reported_once(
    broker: Broker, new_topic: NewTopic, unique_name: Name,
) -> None:
    """What the abort forgets is only what was not taken yet: a failure taken before
    the abort was reported, once; at-least-once producers keep theirs across commits."""
    topic = unique_name("topic")
    broker.admin().create_topic(topic, partitions=1, config={"max.message.bytes": "2000"})
    producer = transactional(broker, unique_name)
    producer.begin_transaction()
    producer.produce(topic, os.urandom(20_000))
    producer.flush(30)
    taken = producer.take_delivery_errors()
    assert [e.too_large for e in taken] == [True]
    producer.abort_transaction(30)
    assert producer.take_delivery_errors() == []
    producer.close()

    plain = broker.producer()
    plain.produce(topic, os.urandom(20_000))
    plain.flush(30)
    assert [e.too_large for e in plain.take_delivery_errors()] == [True]
    plain.close()
