"""Reading a topic's records as they are (not decoded), for the bad-input and replay tests."""

from __future__ import annotations

import time

from processor.backends.abstract import Broker, Message


def read_raw(broker: Broker, topic: str, expect: int, timeout: float = 60.0,
             read_committed: bool = True, settle: float = 2.0) -> list[Message]:
    """Every record of `topic` from the start: until `expect` records came and nothing more
    for `settle` seconds (more than expected means duplicates), or `timeout`."""
    consumer = broker.consumer(f"raw-reader-{topic}-{time.time_ns()}",
                               read_committed=read_committed)
    consumer.subscribe([topic])
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(5000, 0.3)
            out.extend(batch)
            if batch:
                quiet_since = None
            elif len(out) >= expect:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= settle:
                    break
    finally:
        consumer.close()
    return out
