"""What every contender does, and how it reports back: standard library only.

This module is imported by the harness and by every contender, including the Quix Streams
one, which runs in its own virtual environment without the `processor` package. So it
depends on nothing but the standard library.

The transform
-------------
Every contender does the same work on every record: decode the Avro artifact, verify that
its checksum is the SHA-256 of its payload, set the metadata key `HANDLED_KEY` to the
wall-clock time the transform ran (milliseconds since the epoch), set the state to
`TRANSFORMED_STATE`, encode it again and produce it. The stamp is what the harness uses
to measure latency: it reads the output topic back and compares each record's broker
append time (the output topics use LogAppendTime) with the stamp in its artifact.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

HANDLED_KEY = "bench.handled_ms"
"""Metadata key set by the transform: when the contender transformed the record (ms)."""

TRANSFORMED_STATE = "transformed"
"""The state every output artifact has."""

CREATED_STATE = "created"
"""The state of every pre-loaded artifact (and of the outputs of the rows that pass the
input through unchanged)."""

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "artifact.avsc"
"""The wire contract all contenders read and write."""

COMMIT_INTERVAL = 1.0
"""Seconds between commits, for every contender (the project's default)."""

BATCH_SIZE = 2000
"""Records taken from the consumer in one call, for every contender that batches."""

PRODUCER_SETTINGS: Mapping[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 5,
    "batch.size": 1_000_000,
    "compression.type": "none",
    "queue.buffering.max.messages": 100_000,
}
"""librdkafka producer settings given to every contender (the librdkafka defaults, but
with idempotence on, which the transactional contender needs anyway)."""

CONSUMER_SETTINGS: Mapping[str, Any] = {
    "fetch.max.bytes": 52_428_800,
    "max.partition.fetch.bytes": 1_048_576,
    "queued.max.messages.kbytes": 65_536,
    "fetch.queue.backoff.ms": 10,
}
"""librdkafka consumer settings given to every contender (librdkafka's defaults, spelled
out so the printed conditions are complete), but for `fetch.queue.backoff.ms`: the
project's default (`processor.backends.kafka.settings.CONSUMER_DEFAULTS`), given to every
contender alike. librdkafka's default of 1000 ms stalls a consumer whose local queue is
full for up to a second, which capped every row that keeps a backlog (the raw loop
included) at the fetcher's stall pattern rather than at its own work."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def transform_record(record: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The transform on a decoded Avro record (a dict), in place."""
    meta = record["meta"]
    meta[HANDLED_KEY] = time.time_ns() // 1_000_000
    record["state"] = TRANSFORMED_STATE
    return record


def load_schema_json(path: Path = SCHEMA_PATH) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return loaded


def peak_rss_bytes() -> int:
    """This process's peak resident set size: VmHWM of /proc/self/status.

    Not `getrusage().ru_maxrss`: Linux carries that over an exec from the process that
    forked, so a contender started by a big harness would report the harness's size.
    """
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def client_versions() -> dict[str, str]:
    """confluent-kafka's and librdkafka's versions in this process."""
    import confluent_kafka

    version = confluent_kafka.version()
    return {
        "confluent_kafka": version if isinstance(version, str) else str(version[0]),
        "librdkafka": str(confluent_kafka.libversion()[0]),
    }


def write_result(path: str | os.PathLike[str], **fields: Any) -> None:
    """A contender's report, written once at exit (atomically)."""
    data = {"pid": os.getpid(), "peak_rss_bytes": peak_rss_bytes(), **fields}
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
    os.replace(tmp, path)


def log(name: str, text: str) -> None:
    sys.stderr.write(f"[{name} {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()
