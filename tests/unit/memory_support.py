"""Shared set-up of the in-memory broker's unit tests."""

from __future__ import annotations

from processor.backends.abstract import TopicPartition
from processor.backends.memory import SYSTEM_CLOCK, Clock, MemoryBroker, MemoryConsumer


def make(partitions: int = 1, topic: str = "t", clock: Clock = SYSTEM_CLOCK
         ) -> tuple[MemoryBroker, str]:
    """A broker with one topic of `partitions` partitions."""
    broker = MemoryBroker(clock)
    broker.admin().create_topic(topic, partitions=partitions)
    return broker, topic


def member(broker: MemoryBroker, topic: str, group: str = "g", **kw: object) -> MemoryConsumer:
    """A consumer of `group`, subscribed to `topic` (`kw` go to `broker.consumer`)."""
    consumer = broker.consumer(group, **kw)  # type: ignore[arg-type]
    consumer.subscribe([topic])
    return consumer


def tps(topic: str, *partitions: int) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in partitions]
