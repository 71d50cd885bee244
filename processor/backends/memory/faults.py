"""Fault injection for the in-memory broker: produces that fail delivery.

A test that needs a broker to refuse records wraps its `MemoryBroker` in a
`FaultInjector`; the broker itself has no fault-injection method. The injector installs
one hook on the broker's shared state, which the producer consults for every produce;
a broker never wrapped has no hook, and its producers never fail a delivery on their own
(records larger than a topic's `max.message.bytes` aside, as on Kafka).

    faults = FaultInjector(broker)
    faults.fail_deliveries(1, "out", reason="disk full", retriable=False)

A failed record is not written; its producer reports it by `take_delivery_errors()`, as a
Kafka producer reports a failed delivery. Failures scoped to a topic are taken before
failures scoped to any topic.
"""

from __future__ import annotations

from processor.backends.memory.broker import MemoryBroker

__all__ = ["FaultInjector"]

Failure = tuple[str, bool]
"""What a failed produce reports: the reason, and whether the error is retriable."""


class FaultInjector:
    """Injected delivery failures on one `MemoryBroker` (see the module documentation).

    One injector per broker: a second one on the same broker replaces the first's hook.
    """

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self._cluster = broker._cluster
        # Topic (None: any) -> the failures its next produces report, in order.
        self._budget: dict[str | None, list[Failure]] = {}
        with self._cluster.lock:
            self._cluster.delivery_faults = self._take

    def fail_deliveries(
        self,
        count: int,
        topic: str | None = None,
        *,
        reason: str = "injected delivery failure",
        retriable: bool = True,
    ) -> None:
        """Make the next `count` produces (to `topic`, or to any topic) fail delivery."""
        if count < 0:
            raise ValueError(f"count must not be negative, got {count}")
        with self._cluster.lock:
            self._budget.setdefault(topic, []).extend([(reason, retriable)] * count)

    def pending(self, topic: str | None = None) -> int:
        """Failures injected for `topic` (None: for any topic) and not reported yet."""
        with self._cluster.lock:
            return len(self._budget.get(topic, ()))

    def clear(self) -> None:
        """Forget every failure not reported yet."""
        with self._cluster.lock:
            self._budget.clear()

    def _take(self, topic: str) -> Failure | None:
        """The failure the next produce to `topic` reports, if any (the lock is held)."""
        for scope in (topic, None):
            budget = self._budget.get(scope)
            if budget:
                return budget.pop(0)
        return None
