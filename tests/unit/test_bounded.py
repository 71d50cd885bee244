"""Bounded librdkafka calls: `call_within` and `flush_within`."""

from __future__ import annotations

import threading
import time

import pytest

from processor.backends.kafka.bounded import FLUSH_SLICE, call_within, flush_within
from processor.core.errors import BrokerUnavailable


def test_call_within_returns_the_result() -> None:
    assert call_within("answer", lambda: 42, 5.0) == 42


def test_call_within_raises_the_calls_exception() -> None:
    def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        call_within("fail", fail, 5.0)


def test_call_within_gives_up_on_a_call_that_does_not_return() -> None:
    release = threading.Event()
    began = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=r"commit: no answer .* within 0\.3s"):
        call_within("commit", release.wait, 0.3)
    assert time.monotonic() - began < 2.0
    release.set()


class _Queue:
    """A producer-like queue that drains one record per flush call."""

    def __init__(self, records: int, blocked: bool = False) -> None:
        self.records = records
        self.blocked = blocked
        self.calls: list[float] = []

    def flush(self, timeout: float) -> int:
        self.calls.append(timeout)
        if self.blocked:
            time.sleep(timeout)
        else:
            self.records = max(0, self.records - 1)
        return self.records


def test_flush_within_flushes_in_slices_until_empty() -> None:
    queue = _Queue(3)
    assert flush_within(queue, 10.0) == 0
    assert len(queue.calls) == 3
    assert all(t <= FLUSH_SLICE for t in queue.calls)


def test_flush_within_stops_at_its_timeout() -> None:
    queue = _Queue(5, blocked=True)
    began = time.monotonic()
    assert flush_within(queue, 0.5) == 5
    assert 0.4 <= time.monotonic() - began < 1.5
    assert all(t <= FLUSH_SLICE for t in queue.calls)
