"""Transactions of the in-memory broker: markers, isolation, fencing, offsets."""

from __future__ import annotations

import pytest

from processor.backends.abstract import TopicPartition
from processor.core.errors import TransactionError
from tests.unit.memory_support import make, member

# --- transactions --------------------------------------------------------------------------


def test_transaction_markers_take_offsets() -> None:
    broker, topic = make()
    producer = broker.producer(transactional_id="tx")
    producer.init_transactions()
    producer.begin_transaction()
    producer.produce(topic, b"a")
    producer.produce(topic, b"b")
    producer.commit_transaction()
    broker.producer().produce(topic, b"c")
    assert broker.admin().high_watermarks(topic) == {TopicPartition(topic, 0): 4}
    got = member(broker, topic, read_committed=True).consume(10, 0)
    assert [(m.offset(), m.value()) for m in got] == [(0, b"a"), (1, b"b"), (3, b"c")]


def test_batch_limit_inside_hidden_records() -> None:
    broker, topic = make()
    producer = broker.producer(transactional_id="tx")
    producer.init_transactions()
    for round_ in range(3):
        producer.begin_transaction()
        producer.produce(topic, b"x%d" % round_)
        producer.produce(topic, b"y%d" % round_)
        if round_ == 1:
            producer.abort_transaction()
        else:
            producer.commit_transaction()
    committed = member(broker, topic, group="rc", read_committed=True)
    uncommitted = member(broker, topic, group="ru")
    seen_rc = [m.value() for _ in range(5) for m in committed.consume(1, 0)]
    seen_ru = [m.value() for _ in range(7) for m in uncommitted.consume(1, 0)]
    assert seen_rc == [b"x0", b"y0", b"x2", b"y2"]
    assert seen_ru == [b"x0", b"y0", b"x1", b"y1", b"x2", b"y2"]


def test_fenced_producer_open_transaction_is_aborted() -> None:
    broker, topic = make()
    zombie = broker.producer(transactional_id="tx")
    zombie.init_transactions()
    zombie.begin_transaction()
    zombie.produce(topic, b"zombie")
    reader = member(broker, topic, read_committed=True)
    assert reader.consume(1, 0) == []
    broker.producer(transactional_id="tx").init_transactions()
    broker.producer().produce(topic, b"plain")
    # The zombie's transaction no longer holds the last stable offset back.
    assert [m.value() for m in reader.consume(5, 0)] == [b"plain"]


def test_closing_a_producer_aborts_its_transaction() -> None:
    broker, topic = make()
    producer = broker.producer(transactional_id="tx")
    producer.init_transactions()
    producer.begin_transaction()
    producer.produce(topic, b"dropped")
    producer.close()
    broker.producer().produce(topic, b"plain")
    reader = member(broker, topic, read_committed=True)
    assert [m.value() for m in reader.consume(5, 0)] == [b"plain"]


def test_transactional_calls_need_a_transactional_producer() -> None:
    broker, _ = make()
    with pytest.raises(TransactionError, match="not a transactional producer"):
        broker.producer().init_transactions()
    uninitialised = broker.producer(transactional_id="tx")
    with pytest.raises(TransactionError, match="init_transactions"):
        uninitialised.begin_transaction()
    ready = broker.producer(transactional_id="tx2")
    ready.init_transactions()
    with pytest.raises(TransactionError, match="no open transaction"):
        ready.commit_transaction()


def test_send_offsets_with_a_stale_generation_is_refused() -> None:
    broker, topic = make(partitions=2)
    consumer = member(broker, topic)
    consumer.consume(1, 0)
    stale = consumer.group_metadata()
    other = member(broker, topic)
    for c in (consumer, other, consumer):
        c.consume(1, 0)
    producer = broker.producer(transactional_id="tx")
    producer.init_transactions()
    producer.begin_transaction()
    with pytest.raises(TransactionError, match="generation"):
        producer.send_offsets_to_transaction({TopicPartition(topic, 0): 1}, stale)
    producer.send_offsets_to_transaction({TopicPartition(topic, 0): 1}, consumer.group_metadata())


def test_read_committed_member_waits_for_pending_transactional_offsets() -> None:
    broker, topic = make()
    tp = TopicPartition(topic, 0)
    for i in range(3):
        broker.producer().produce(topic, b"%d" % i)
    first = member(broker, topic, read_committed=True)
    assert len(first.consume(10, 0)) == 3
    producer = broker.producer(transactional_id="tx")
    producer.init_transactions()
    producer.begin_transaction()
    producer.send_offsets_to_transaction({tp: 2}, first.group_metadata())
    first.close()

    second = member(broker, topic, read_committed=True)
    assert second.consume(10, 0) == []
    assert second.position(tp) is None
    producer.commit_transaction()
    assert [m.offset() for m in second.consume(10, 0)] == [2]
