"""Polling helpers for the conformance suite.

A real broker needs time for group joins, rebalances and transaction markers, so tests
poll with deadlines instead of trusting one `consume()` call. On the in-memory broker the
same loops finish at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from processor.backends.abstract import Consumer, Message, Producer, TopicPartition

DEFAULT_TIMEOUT = 30.0
POLL = 0.2

# How long a test watches for records that must NOT arrive. Memory delivers at once;
# a real broker gets time to show a wrong record if it were going to.
_QUIET = {"memory": 0.02, "kafka": 3.0}


def quiet_period(backend: str) -> float:
    return _QUIET.get(backend, 3.0)


def consume_until(
    consumer: Consumer, n: int, timeout: float = DEFAULT_TIMEOUT, batch: int = 500
) -> list[Message]:
    """Consume until `n` records arrived or `timeout` passed; never more than `n`."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        got.extend(consumer.consume(min(batch, n - len(got)), min(POLL, remaining)))
    return got


def consume_until_value(
    consumer: Consumer, value: bytes, timeout: float = DEFAULT_TIMEOUT
) -> list[Message]:
    """Consume until a record with `value` arrived (included) or `timeout` passed."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in consumer.consume(100, POLL):
            got.append(message)
            if message.value() == value:
                return got
    raise AssertionError(f"{value!r} did not arrive within {timeout}s; got {values(got)}")


def consume_for(consumer: Consumer, seconds: float) -> list[Message]:
    """Everything that arrives within `seconds` (at least one poll)."""
    got: list[Message] = []
    deadline = time.monotonic() + seconds
    while True:
        remaining = deadline - time.monotonic()
        got.extend(consumer.consume(500, max(0.0, min(POLL, remaining))))
        if remaining <= 0:
            return got


def poll_all(consumers: Sequence[Consumer], sink: dict[int, list[Message]] | None = None) -> None:
    """One short poll of every consumer (group members must all poll to rebalance)."""
    for index, consumer in enumerate(consumers):
        got = consumer.consume(500, 0.01)
        if sink is not None:
            sink.setdefault(index, []).extend(got)


def wait_for(
    condition: Callable[[], bool],
    consumers: Sequence[Consumer] = (),
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "condition",
    sink: dict[int, list[Message]] | None = None,
) -> None:
    """Poll `consumers` (possibly none) until `condition()` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        if consumers:
            poll_all(consumers, sink)
        else:
            time.sleep(0.05)


def wait_assigned(consumer: Consumer, timeout: float = DEFAULT_TIMEOUT) -> list[TopicPartition]:
    """Poll until the consumer has partitions with known positions (nothing is consumed
    from a topic that is empty); returns the assignment."""

    def ready() -> bool:
        assigned = consumer.assignment()
        return bool(assigned) and all(consumer.position(tp) is not None for tp in assigned)

    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"no assignment within {timeout}s")
        assert consumer.consume(1, 0.02) == [], "wait_assigned() expects no records yet"
    return consumer.assignment()


def produce_values(
    producer: Producer,
    topic: str,
    items: Iterable[bytes],
    key: bytes | None = None,
    partition: int | None = None,
) -> None:
    for value in items:
        producer.produce(topic, value, key=key, partition=partition)
    assert producer.flush(DEFAULT_TIMEOUT) == 0
    assert producer.take_delivery_errors() == []


def values(messages: Iterable[Message]) -> list[bytes | None]:
    return [m.value() for m in messages]


def by_partition(messages: Iterable[Message]) -> dict[int, list[Message]]:
    result: dict[int, list[Message]] = {}
    for m in messages:
        result.setdefault(m.partition(), []).append(m)
    return result


def payloads(messages: Iterable[Message]) -> list[bytes]:
    """The values, which must all be present (no tombstones)."""
    result = []
    for m in messages:
        value = m.value()
        assert value is not None, f"unexpected tombstone at {m.topic()}[{m.partition()}]"
        result.append(value)
    return result


def offsets(messages: Iterable[Message]) -> list[int]:
    return [m.offset() for m in messages]
