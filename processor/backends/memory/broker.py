"""The in-memory broker's public face: the `Broker` factory of its clients.

`MemoryBroker` makes consumers, producers and admin clients that share one `Cluster`
(`processor.backends.memory.cluster`), and adds what only an in-memory broker can offer:
an injectable clock. Fault injection is a separate wrapper,
`processor.backends.memory.faults.FaultInjector`.
"""

from __future__ import annotations

from collections.abc import Mapping

from processor.backends.abstract import Broker
from processor.backends.memory.admin import MemoryAdmin
from processor.backends.memory.clock import SYSTEM_CLOCK, Clock
from processor.backends.memory.cluster import Cluster
from processor.backends.memory.consumer import MemoryConsumer, consumer_options
from processor.backends.memory.partitioners import partitioner_of
from processor.backends.memory.producer import MemoryProducer


class MemoryBroker(Broker):
    """An in-memory cluster with Kafka's semantics; see `processor.backends.memory`.

    `clock` gives every time the broker uses: record timestamps, consume timeouts and
    the expiry of silent group members. Tests pass a `ManualClock` to drive them.
    """

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._cluster = Cluster(clock)

    @property
    def name(self) -> str:
        return "memory"

    @property
    def clock(self) -> Clock:
        return self._cluster.clock

    def consumer(
        self,
        group: str,
        *,
        read_committed: bool = False,
        auto_offset_reset: str = "earliest",
        client_id: str | None = None,
        settings: Mapping[str, object] | None = None,
    ) -> MemoryConsumer:
        options = consumer_options(group, auto_offset_reset, settings or {})
        return MemoryConsumer(
            self._cluster,
            group,
            read_committed=read_committed,
            client_id=client_id or "consumer",
            options=options,
        )

    def producer(
        self,
        *,
        transactional_id: str | None = None,
        client_id: str | None = None,
        settings: Mapping[str, object] | None = None,
    ) -> MemoryProducer:
        partitioner = partitioner_of(settings or {})
        return MemoryProducer(
            self._cluster, transactional_id, client_id or "producer", partitioner
        )

    def admin(self) -> MemoryAdmin:
        return MemoryAdmin(self._cluster)
