"""Time in the in-memory broker: every wait and deadline goes through its clock.

Most tests run on a `ManualClock`, so nothing here sleeps: with `autojump` a wait moves
the clock to its deadline at once; without it, the test wakes a waiting thread by
producing or by advancing the clock, after `wait_for_waits` showed the thread blocked.
One test keeps the system clock, to show that a real wait blocks without spinning.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from processor.backends.memory import SYSTEM_CLOCK, ClockStalled, ManualClock, MemoryBroker
from tests.unit.memory_support import make, member, tps


def test_the_system_clock_is_the_default() -> None:
    assert MemoryBroker().clock is SYSTEM_CLOCK


def test_a_consume_timeout_passes_at_once_on_an_autojump_clock() -> None:
    clock = ManualClock(100.0, autojump=True)
    broker, topic = make(clock=clock)
    consumer = member(broker, topic)
    assert consumer.consume(10, 5.0) == []
    assert clock.monotonic() == 105.0
    assert clock.waits == 1, "one wait to the deadline, not a polling loop"


def test_a_zero_timeout_never_waits() -> None:
    clock = ManualClock()  # without autojump, a wait would stall the test
    broker, topic = make(clock=clock)
    consumer = member(broker, topic)
    assert consumer.consume(10, 0.0) == []
    assert consumer.consume(10, -1.0) == []
    assert (clock.monotonic(), clock.waits) == (0.0, 0)


def test_consume_wakes_when_a_record_arrives() -> None:
    clock = ManualClock()
    broker, topic = make(clock=clock)
    consumer = member(broker, topic)
    consumer.consume(1, 0)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(consumer.consume, 10, 5.0)
        clock.wait_for_waits(1)
        broker.producer().produce(topic, b"wake")
        got = future.result(timeout=10)
    assert [m.value() for m in got] == [b"wake"]
    assert clock.monotonic() == 0.0, "woken by the record, not by its deadline"


def test_advancing_the_clock_ends_a_wait_at_its_deadline_only() -> None:
    clock = ManualClock()
    broker, topic = make(clock=clock)
    consumer = member(broker, topic)
    consumer.consume(1, 0)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(consumer.consume, 10, 5.0)
        clock.wait_for_waits(1)
        clock.advance(3.0)
        clock.wait_for_waits(2)  # woken before its deadline, it waits again
        assert not future.done()
        clock.advance(2.0)
        assert future.result(timeout=10) == []
    assert clock.monotonic() == 5.0


def test_a_rebalance_wakes_a_waiting_member() -> None:
    clock = ManualClock()
    broker, topic = make(partitions=2, clock=clock)
    first = member(broker, topic)
    first.consume(1, 0)
    assert first.assignment() == tps(topic, 0, 1)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(first.consume, 10, 100.0)
        clock.wait_for_waits(1)
        second = member(broker, topic)
        # `first` wakes, revokes, takes its new assignment and waits for records again.
        clock.wait_for_waits(2)
        assert first.assignment() == tps(topic, 0)
        second.consume(1, 0)
        assert second.assignment() == tps(topic, 1)
        broker.producer().produce(topic, b"p0", partition=0)
        assert [m.value() for m in future.result(timeout=10)] == [b"p0"]
    assert clock.monotonic() == 0.0


def test_a_forgotten_advance_fails_instead_of_hanging() -> None:
    clock = ManualClock(real_timeout=0.01)
    broker, topic = make(clock=clock)
    consumer = member(broker, topic)
    with pytest.raises(ClockStalled, match="advance the clock"):
        consumer.consume(10, 5.0)
    # The broker is left usable: the failed wait released its lock.
    broker.producer().produce(topic, b"v")
    assert [m.value() for m in consumer.consume(10, 0)] == [b"v"]


def test_waiting_for_waits_that_never_come_fails() -> None:
    with pytest.raises(ClockStalled, match="1 wait"):
        ManualClock().wait_for_waits(1, timeout=0.01)


def test_the_manual_clock_moves_only_forward() -> None:
    clock = ManualClock(7.0)
    assert clock() == clock.time() == clock.monotonic() == 7.0
    clock.advance(1.5)
    assert clock() == 8.5
    with pytest.raises(ValueError, match="does not go back"):
        clock.advance(-1.0)


def test_a_real_wait_blocks_without_spinning() -> None:
    broker, topic = make()
    consumer = member(broker, topic)
    cpu = time.thread_time()
    started = time.monotonic()
    assert consumer.consume(10, 0.05) == []
    assert time.monotonic() - started >= 0.05
    assert time.thread_time() - cpu < 0.02


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
