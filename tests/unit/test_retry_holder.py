"""The retry holder: what it holds, when a retry is due, what it gives back."""

from __future__ import annotations

from processor.backends.abstract import TopicPartition
from processor.backends.memory import MemoryMessage
from processor.core.options import RetryPolicy
from processor.runtime.retry import RetryHolder
from tests.unit.stage_support import ManualClock

A, B = TopicPartition("in", 0), TopicPartition("in", 1)
POLICY = RetryPolicy(max_attempts=3, initial_backoff=1.0, multiplier=2.0, jitter=0)


def message(tp: TopicPartition, offset: int) -> MemoryMessage:
    return MemoryMessage(tp.topic, tp.partition, offset, None, b"v", None, (0, 0))


def test_a_retry_is_due_after_its_backoff_and_comes_back_with_what_queued_behind_it() -> None:
    clock = ManualClock()
    holder = RetryHolder(POLICY, clock)
    assert holder.hold(A, message(A, 4), attempt=1) == 1.0
    assert holder.hold(B, message(B, 7), attempt=2) == 2.0
    holder.held[A].records.append(message(A, 5))
    assert len(holder) == 2 and A in holder and bool(holder)
    assert holder.first_offsets() == {A: 4, B: 7}
    assert holder.due() == []
    clock.advance(1.0)
    [(tp, held)] = holder.due()
    assert tp == A and held.attempt == 1
    assert [m.offset() for m in held.records] == [4, 5]
    assert A not in holder and B in holder
    assert not holder.exhausted(2) and holder.exhausted(3)
    holder.forget([B])
    assert not holder
    holder.hold(A, message(A, 4), attempt=1)
    assert holder.clear() == [A] and not holder
