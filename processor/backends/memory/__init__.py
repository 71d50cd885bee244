"""An in-memory broker with Kafka's semantics, for unit tests and the demo.

It passes the same conformance suite as the Kafka backend (`tests/conformance`) and
raises the same errors. What it models, module by module:

* `log`: topics of partitions, each an append-only list of records; offsets start at 0,
  and transaction markers take offsets no consumer receives.
* `partitioners`: a key picks the Java client's murmur2 partition (or librdkafka's crc32
  one with `{"partitioner": "consistent_random"}`); keyless records go round-robin.
* `groups`: consumer groups with the eager rebalance protocol, `range` and `roundrobin`
  assignment, and the removal of members silent for `max.poll.interval.ms`.
* `consumer`, `producer`, `admin`: the clients; transactions with fencing, isolation
  levels and offsets committed with a transaction (`producer`).
* `cluster`: the state they share, under one lock; `broker`: `MemoryBroker`, the
  factory of the clients.
* `faults`: `FaultInjector`, a wrapper for tests that makes produces fail delivery
  (`fail_deliveries`); the broker itself injects no faults.
* `clock`: every time-dependent behaviour (timestamps, consume timeouts, poll-interval
  expiry) and every blocking wait goes through the broker's clock; `ManualClock` lets a
  test drive time instead of sleeping (the rule for waits is in that module).

One consumer or producer must not be used from several threads at once (as with
confluent-kafka), but different clients may live in different threads.
"""

from processor.backends.memory.admin import MemoryAdmin
from processor.backends.memory.broker import MemoryBroker
from processor.backends.memory.clock import (
    SYSTEM_CLOCK,
    Clock,
    ClockStalled,
    ManualClock,
    SystemClock,
)
from processor.backends.memory.consumer import (
    AUTO_OFFSET_RESETS,
    DEFAULT_MAX_POLL_INTERVAL_MS,
    MemoryConsumer,
)
from processor.backends.memory.faults import FaultInjector
from processor.backends.memory.groups import MemoryGroupMetadata
from processor.backends.memory.log import CONTROL, TIMESTAMP_CREATE_TIME, MemoryMessage
from processor.backends.memory.partitioners import (
    PARTITIONERS,
    crc32_partition,
    murmur2,
    murmur2_partition,
)
from processor.backends.memory.producer import MemoryProducer

__all__ = [
    "AUTO_OFFSET_RESETS",
    "CONTROL",
    "DEFAULT_MAX_POLL_INTERVAL_MS",
    "PARTITIONERS",
    "SYSTEM_CLOCK",
    "TIMESTAMP_CREATE_TIME",
    "Clock",
    "ClockStalled",
    "FaultInjector",
    "ManualClock",
    "MemoryAdmin",
    "MemoryBroker",
    "MemoryConsumer",
    "MemoryGroupMetadata",
    "MemoryMessage",
    "MemoryProducer",
    "SystemClock",
    "crc32_partition",
    "murmur2",
    "murmur2_partition",
]
