"""A stateful `processor run` on real Kafka: count per key over a few thousand records,
exactly-once, with the process SIGKILLed mid-stream and restarted; the final counts (in
the changelog and on the outputs) equal the reference, and no output is duplicated."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from processor.backends.kafka import KafkaBroker
from processor.runtime.stateful import changelog_topic
from processor.state.values import decode_value, parse_state_key
from tests.procs import Feeder, committed_total, group_caught_up, read_topic, start, stop, wait_for

pytestmark = [pytest.mark.kafka]

COUNT = 4000
KEYS = 40


def read_changelog(broker: KafkaBroker, topic: str) -> dict[bytes, int]:
    """The last committed count per record key in the changelog."""
    consumer = broker.consumer(f"reader-{time.time_ns()}", read_committed=True)
    consumer.subscribe([topic])
    last: dict[bytes, int] = {}
    idle = 0
    deadline = time.monotonic() + 60
    while idle < 10 and time.monotonic() < deadline:
        batch = consumer.consume(5000, 0.2)
        idle = 0 if batch else idle + 1
        for msg in batch:
            parsed = parse_state_key(msg.key() or b"")
            value = msg.value()
            if parsed is not None and parsed[0] is not None and value is not None:
                last[parsed[0]] = int(decode_value(value))
    consumer.close()
    return last


def test_counts_are_exact_after_a_sigkill_under_exactly_once(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    broker = KafkaBroker(kafka_bootstrap)
    admin = broker.admin()
    source, out, dlq = unique_name("st-in"), unique_name("st-out"), unique_name("st-dlq")
    group = unique_name("st-g")
    for topic in (source, out, dlq):
        admin.create_topic(topic, partitions=4)
    args = ["run", "--bootstrap-servers", kafka_bootstrap, "--input-topic", source,
            "--output-topic", out, "--dlq-topic", dlq, "--group", group, "--name", "counter",
            "--handler", "tests.unit.state_support:count", "--guarantee", "exactly-once",
            "--create-topics", "--commit-interval", "0.2", "--batch-size", "200",
            "--state-dir", str(tmp_path / "state"), "--log-level", "INFO",
            "--metrics-port", "off",
            # The killed member leaves the group once its session expires: soon.
            "--set", "session.timeout.ms=6000"]
    log = tmp_path / "stage.log"
    procs: list[subprocess.Popen[bytes]] = []
    t0 = time.monotonic()
    try:
        feeder = Feeder(broker, source, COUNT, keys=KEYS, per_second=1000, chunk=100)
        procs.append(start(args, log))
        feeder.start()
        wait_for(lambda: committed_total(broker, group, source) >= COUNT // 4, 40,
                 "a quarter of the input committed")
        procs[0].send_signal(signal.SIGKILL)  # mid-stream: a transaction may be open
        procs[0].wait(10)
        procs.append(start(args, log))
        sent = feeder.join()
        wait_for(lambda: group_caught_up(broker, group, source), 60, "the group caught up")
        assert procs[1].poll() is None, log.read_text()[-3000:]
    finally:
        codes = [stop(p) for p in procs[1:]]
        for p in procs[:1]:
            stop(p)
    assert codes == [0], log.read_text()[-3000:]
    reference = Counter(a.get("key") for a in sent)
    counts = read_changelog(broker, changelog_topic(group, source))
    assert {k.decode(): v for k, v in counts.items()} == dict(reference)
    outputs = read_topic(broker, out, COUNT, timeout=60)
    assert len(outputs) == COUNT
    assert len({a.id for a in outputs}) == COUNT  # none twice
    last: dict[str, int] = {}
    for artifact in outputs:
        last[str(artifact.get("key"))] = int(str(artifact.get("count")))
    assert last == dict(reference)
    text = log.read_text()
    assert "recovered" in text  # the restarted process caught up from the changelog
    print(f"state on Kafka: {COUNT} records, SIGKILL and restart, "
          f"{time.monotonic() - t0:.1f}s")
