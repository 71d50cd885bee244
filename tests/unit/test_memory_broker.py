"""Behaviour specific to the in-memory broker (the shared behaviour is in tests/conformance)."""

from __future__ import annotations

import threading
import time
import zlib

import pytest

from processor.backends.abstract import TopicPartition
from processor.backends.memory import ManualClock, MemoryBroker, MemoryConsumer, murmur2
from processor.core.errors import (
    BackendError,
    ConfigError,
    OffsetOutOfRange,
    RebalanceInProgress,
    TransactionError,
    UnknownTopic,
)


def make(partitions: int = 1, topic: str = "t") -> tuple[MemoryBroker, str]:
    broker = MemoryBroker()
    broker.admin().create_topic(topic, partitions=partitions)
    return broker, topic


def member(broker: MemoryBroker, topic: str, group: str = "g", **kw: object) -> MemoryConsumer:
    consumer = broker.consumer(group, **kw)  # type: ignore[arg-type]
    consumer.subscribe([topic])
    return consumer


def tps(topic: str, *partitions: int) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in partitions]


# --- partitioning --------------------------------------------------------------------------

# Kafka's own murmur2 test vectors (org.apache.kafka.common.utils.UtilsTest), signed 32-bit.
KAFKA_MURMUR2 = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]


@pytest.mark.parametrize(("key", "signed"), KAFKA_MURMUR2)
def test_murmur2_matches_kafka(key: bytes, signed: int) -> None:
    assert murmur2(key) == signed & 0xFFFFFFFF


@pytest.mark.parametrize(("key", "signed"), KAFKA_MURMUR2)
def test_keys_land_where_the_java_client_puts_them(key: bytes, signed: int) -> None:
    broker, topic = make(partitions=7)
    broker.producer().produce(topic, b"v", key=key)
    expected = (signed & 0x7FFFFFFF) % 7
    marks = broker.admin().high_watermarks(topic)
    assert [tp.partition for tp, high in marks.items() if high] == [expected]


def test_consistent_partitioner_uses_crc32() -> None:
    broker, topic = make(partitions=5)
    producer = broker.producer(settings={"partitioner": "consistent_random"})
    keys = [b"alpha", b"beta", b"gamma", b"delta"]
    for key in keys:
        producer.produce(topic, key, key=key)
    consumer = member(broker, topic)
    got = {m.key(): m.partition() for m in consumer.consume(10, 0)}
    assert got == {key: zlib.crc32(key) % 5 for key in keys}


def test_unknown_partitioner_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="partitioner"):
        MemoryBroker().producer(settings={"partitioner": "random"})


def test_keyless_records_go_round_robin() -> None:
    broker, topic = make(partitions=3)
    producer = broker.producer()
    for i in range(7):
        producer.produce(topic, b"%d" % i)
    consumer = member(broker, topic)
    got = sorted((m.partition(), m.value()) for m in consumer.consume(10, 0))
    assert got == [(0, b"0"), (0, b"3"), (0, b"6"), (1, b"1"), (1, b"4"), (2, b"2"), (2, b"5")]


def test_produce_to_a_missing_partition_raises() -> None:
    broker, topic = make(partitions=2)
    with pytest.raises(UnknownTopic, match="partition 2"):
        broker.producer().produce(topic, b"v", partition=2)


# --- records -------------------------------------------------------------------------------


def test_timestamps_come_from_the_injected_clock() -> None:
    broker = MemoryBroker(clock=ManualClock(1234.5678))
    broker.admin().create_topic("t")
    broker.producer().produce("t", b"v")
    (message,) = member(broker, "t").consume(1, 0)
    assert message.timestamp() == (1, 1234567)


def test_headers_returned_are_a_copy() -> None:
    broker, topic = make()
    broker.producer().produce(topic, b"v", headers=[("h", b"1")])
    first = member(broker, topic, group="a").consume(1, 0)[0]
    headers = first.headers()
    assert headers == [("h", b"1")]
    headers.append(("x", b"2"))
    second = member(broker, topic, group="b").consume(1, 0)[0]
    assert second.headers() == [("h", b"1")]
    assert first.headers() == [("h", b"1")]


def test_injected_delivery_failures_are_reported_not_written() -> None:
    broker, topic = make()
    producer = broker.producer()
    broker.fail_deliveries(1, topic, reason="disk full", retriable=False)
    producer.produce(topic, b"lost", key=b"k")
    producer.produce(topic, b"kept")
    assert producer.flush() == 0
    (error,) = producer.take_delivery_errors()
    assert (error.topic, error.key, error.reason, error.retriable) == (
        topic,
        b"k",
        "disk full",
        False,
    )
    assert producer.take_delivery_errors() == []
    assert [m.value() for m in member(broker, topic).consume(10, 0)] == [b"kept"]


def test_closed_clients_refuse_work() -> None:
    broker, topic = make()
    consumer = member(broker, topic)
    consumer.close()
    consumer.close()  # idempotent
    with pytest.raises(BackendError, match="closed"):
        consumer.consume(1, 0)
    producer = broker.producer()
    producer.close()
    with pytest.raises(BackendError, match="closed"):
        producer.produce(topic, b"v")


def test_invalid_consumer_settings() -> None:
    broker = MemoryBroker()
    with pytest.raises(ConfigError, match="auto_offset_reset"):
        broker.consumer("g", auto_offset_reset="sometimes")
    with pytest.raises(ConfigError, match="strategy"):
        broker.consumer("g", settings={"partition.assignment.strategy": "sticky"})
    with pytest.raises(ConfigError, match=r"max\.poll"):
        broker.consumer("g", settings={"max.poll.interval.ms": "soon"})
    with pytest.raises(TypeError):
        broker.consumer("g").subscribe("t")


def test_invalid_topics() -> None:
    admin = MemoryBroker().admin()
    with pytest.raises(BackendError, match="invalid topic name"):
        admin.create_topic("no spaces")
    with pytest.raises(BackendError, match="partitions"):
        admin.create_topic("t", partitions=0)


# --- offsets -------------------------------------------------------------------------------


def test_auto_offset_reset_error_without_committed_offset() -> None:
    broker, topic = make()
    consumer = member(broker, topic, auto_offset_reset="error")
    with pytest.raises(OffsetOutOfRange):
        consumer.consume(1, 0)


def test_seek_past_the_end_resets_by_policy() -> None:
    broker, topic = make()
    producer = broker.producer()
    producer.produce(topic, b"a")
    consumer = member(broker, topic)
    assert len(consumer.consume(5, 0)) == 1
    consumer.seek(TopicPartition(topic, 0), 10)
    assert [m.value() for m in consumer.consume(5, 0)] == [b"a"]  # earliest
    with pytest.raises(OffsetOutOfRange):
        consumer.seek(TopicPartition(topic, 0), -1)
    with pytest.raises(BackendError, match="not assigned"):
        consumer.seek(TopicPartition(topic, 3), 0)


def test_commit_of_an_unassigned_partition_is_refused() -> None:
    broker, topic = make(partitions=3)
    first = member(broker, topic)
    second = member(broker, topic)
    for c in (first, second, first):
        c.consume(1, 0)
    assert (first.assignment(), second.assignment()) == (tps(topic, 0, 1), tps(topic, 2))
    with pytest.raises(BackendError, match="not assigned"):
        first.commit({TopicPartition(topic, 2): 0})

    third = member(broker, topic)
    third.consume(1, 0)
    first.consume(1, 0)  # revokes; the group still waits for `second`
    assert first.assignment() == []
    with pytest.raises(RebalanceInProgress, match="rebalancing"):
        first.commit({TopicPartition(topic, 0): 0})
    second.commit({TopicPartition(topic, 2): 0})  # not yet revoked: still its partition
    for c in (second, first, third):
        c.consume(1, 0)
    assert [c.assignment() for c in (first, second, third)] == [
        tps(topic, 0),
        tps(topic, 1),
        tps(topic, 2),
    ]
    first.commit({TopicPartition(topic, 0): 0})


def test_on_revoke_may_commit() -> None:
    broker, topic = make(partitions=2)
    for i in range(4):
        broker.producer().produce(topic, b"%d" % i, partition=i % 2)
    first = broker.consumer("g")

    def on_revoke(partitions: list[TopicPartition]) -> None:
        first.commit({tp: pos for tp in partitions if (pos := first.position(tp)) is not None})

    first.subscribe([topic], on_revoke=on_revoke)
    assert len(first.consume(10, 0)) == 4
    second = member(broker, topic)
    second.consume(1, 0)
    first.consume(1, 0)
    assert broker.admin().group_offsets("g") == dict.fromkeys(tps(topic, 0, 1), 2)


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
    broker, topic = make(partitions=2)
    lost: list[list[TopicPartition]] = []
    silent = broker.consumer("g", settings={"max.poll.interval.ms": 30})
    silent.subscribe([topic], on_lost=lost.append)
    silent.consume(1, 0)
    broker.producer().produce(topic, b"v", partition=0)
    active = member(broker, topic)
    started = time.monotonic()
    # Waits for `silent` until its poll interval runs out, then reads the record.
    assert [m.value() for m in active.consume(1, 5.0)] == [b"v"]
    assert time.monotonic() - started < 1.0
    assert active.assignment() == tps(topic, 0, 1)
    with pytest.raises(RebalanceInProgress, match="no longer a member"):
        silent.commit({TopicPartition(topic, 0): 0})

    silent.consume(1, 0)
    assert lost == [tps(topic, 0, 1)]
    active.consume(1, 0)
    silent.consume(1, 0)
    assert sorted(silent.assignment() + active.assignment()) == tps(topic, 0, 1)
    assert silent.assignment() and active.assignment()


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


# --- blocking and threads ------------------------------------------------------------------


def test_consume_wakes_when_a_record_arrives() -> None:
    broker, topic = make()
    consumer = member(broker, topic)
    consumer.consume(1, 0)
    producer = broker.producer()
    timer = threading.Timer(0.05, lambda: producer.produce(topic, b"wake"))
    started = time.monotonic()
    timer.start()
    got = consumer.consume(10, 5.0)
    elapsed = time.monotonic() - started
    timer.join()
    assert [m.value() for m in got] == [b"wake"]
    assert 0.04 <= elapsed < 1.0


def test_waiting_consume_does_not_spin() -> None:
    broker, topic = make()
    consumer = member(broker, topic)
    cpu = time.thread_time()
    started = time.monotonic()
    assert consumer.consume(10, 0.2) == []
    assert time.monotonic() - started >= 0.19
    assert time.thread_time() - cpu < 0.05


def test_producer_and_consumer_threads() -> None:
    broker, topic = make(partitions=4)
    per_thread, threads = 5000, 3
    received: list[tuple[int, int, bytes]] = []
    failures: list[BaseException] = []

    def produce(n: int) -> None:
        producer = broker.producer()
        try:
            for i in range(per_thread):
                producer.produce(topic, b"%d:%06d" % (n, i), key=b"%d" % (i % 10))
        except BaseException as error:  # pragma: no cover - reported below
            failures.append(error)

    def consume() -> None:
        consumer = member(broker, topic)
        deadline = time.monotonic() + 20
        while len(received) < per_thread * threads and time.monotonic() < deadline:
            for m in consumer.consume(1000, 0.5):
                received.append((m.partition(), m.offset(), m.value() or b""))
        consumer.close()

    workers = [threading.Thread(target=produce, args=(n,)) for n in range(threads)]
    reader = threading.Thread(target=consume)
    reader.start()
    for w in workers:
        w.start()
    for w in [*workers, reader]:
        w.join(30)
    assert not failures
    assert len(received) == per_thread * threads
    assert len({v for _, _, v in received}) == per_thread * threads
    for p in range(4):
        offsets = [o for part, o, _ in received if part == p]
        assert offsets == list(range(len(offsets)))
    for n in range(threads):
        mine = [v for _, _, v in received if v.startswith(b"%d:" % n)]
        by_key: dict[bytes, list[bytes]] = {}
        for v in mine:
            by_key.setdefault(b"%d" % (int(v[-6:]) % 10), []).append(v)
        assert all(vs == sorted(vs) for vs in by_key.values()), "per-key order broken"


def test_batches_cost_little_per_record() -> None:
    broker, topic = make()
    producer = broker.producer()
    total = 200_000
    for i in range(total):
        producer.produce(topic, b"x", partition=0, timestamp=i)
    consumer = member(broker, topic)
    consumer.consume(1, 0)
    started = time.perf_counter()
    count = 1
    while count < total:
        count += len(consumer.consume(10_000, 0))
    elapsed = time.perf_counter() - started
    assert count == total
    assert elapsed / total < 1e-6, f"{elapsed / total * 1e9:.0f} ns per record"
