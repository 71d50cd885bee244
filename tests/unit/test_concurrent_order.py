"""The order test: 100,000 records through an async handler whose calls take random times,
on the in-memory broker; every record comes out exactly once, and the outputs of every key
are in input order. Bounded: the stage stops when idle, the test by its timeout."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict

import pytest

from processor.backends.abstract import Broker
from processor.core.artifact import Artifact
from processor.core.handlers import Outcome
from processor.runtime.stage import Stage
from tests.unit.stage_support import CODEC, committed, make_broker, options

RECORDS = 100_000
KEYS = 500
PARTITIONS = 4


def load(broker: Broker) -> None:
    producer = broker.producer()
    for i in range(RECORDS):
        data = CODEC.encode(Artifact.new(b"x", meta={"seq": i}))
        producer.produce("in", data, b"k%d" % (i % KEYS))
    producer.flush()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("order", ["key", "partition"])
def test_100k_records_with_random_delays_keep_per_key_order(order: str) -> None:
    broker = make_broker(partitions=PARTITIONS)
    load(broker)
    rng = random.Random(13)
    delays = [rng.random() * 0.004 for _ in range(RECORDS)]
    calls = 0

    async def jittery(a: Artifact) -> Outcome:
        nonlocal calls
        calls += 1
        await asyncio.sleep(delays[a.get("seq", 0)])
        return a

    stage = Stage(options(order=order, max_concurrency=1000, batch_size=1000,
                          commit_interval=0.5), broker, jittery)
    started = time.monotonic()
    stage.run(idle_timeout=1.0)
    took = time.monotonic() - started

    reader = broker.consumer("order-check")
    reader.subscribe(["out"])
    per_key: dict[bytes | None, list[int]] = defaultdict(list)
    seen = 0
    while seen < RECORDS:
        batch = reader.consume(10_000, 0.05)
        if not batch:
            break
        for m in batch:
            # The meta sits in the Avro record; decode only what the check needs.
            per_key[m.key()].append(CODEC.decode(m.value() or b"").get("seq", -1))
        seen += len(batch)
    reader.close()

    assert calls == RECORDS
    all_seqs = sorted(s for got in per_key.values() for s in got)
    assert all_seqs == list(range(RECORDS)), "lost or duplicated records"
    for key, got in per_key.items():
        assert got == sorted(got), f"key {key!r} out of order"
    assert sum(committed(broker).values()) == RECORDS
    assert stage.stats.passed == RECORDS
    print(f"{RECORDS:,} records, order by {order}: {took:.1f}s ({RECORDS / took:,.0f}/s)")
